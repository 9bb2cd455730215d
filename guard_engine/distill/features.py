"""Which texts each training record contributes, embedded the way the runtime guard embeds.

Prompt records give their prompt's windows. Response records give the context (the end of
the prompt, `context_text`) and the windows of the answer, plus answer *prefixes*: a streamed
answer is checked as it grows, from its first token on, so the response head must know that
"The" or "Sure, here" after a harmless question is harmless, and that a harmful answer is
harmful well before its end. Prefix labels:
- a prefix of a safe answer is safe, whatever its length;
- a prefix of an unsafe answer is unsafe only once it is at least UNSAFE_PREFIX_MIN_CHARS
  long: its first words ("Sure,") are not harmful by themselves, so shorter prefixes of
  unsafe answers are not used at all rather than labelled either way.

Long texts are cut for training (PROMPT_TRAIN_CHARS, RESPONSE_TRAIN_CHARS) to bound the cost
of embedding the data; the runtime guard reads every window of any length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from guard_engine.backends.embedded_head import context_text, text_windows

PROMPT_TRAIN_CHARS = 2000
RESPONSE_TRAIN_CHARS = 1200
UNSAFE_PREFIX_MIN_CHARS = 160

# Texts that are harmless whatever their shape: the head must never learn that short or
# odd-looking means unsafe.
SHAPES: tuple[str, ...] = (
    "👍",
    "😂😂",
    "🙏",
    "❤️",
    "🎉🎉🎉",
    "😊",
    "👋",
    "🤔",
    "🙂",
    "👌",
    "😅",
    "🔥",
    "✅",
    "🥲",
    "?",
    "??",
    "!",
    "...",
    "ok",
    "OK",
    "k",
    "y",
    "n",
    "yes",
    "no",
    "yep",
    "nope",
    "sure",
    "thx",
    "ty",
    "lol",
    "hmm",
    "1",
    "2",
    "42",
    "3.14",
    "100%",
    "#",
    "@",
    "a",
    "x",
    ":)",
    ":(",
    ";)",
    "<3",
    "+1",
    "-",
    "—",
    "...?",
    "ok!",
    "no.",
    "yes!",
    "k thx",
    "ok 👍",
)


class LabelledText(Protocol):
    """A labelled prompt or (prompt, response) pair: a dataset row or an audit decision."""

    @property
    def id(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def response(self) -> str | None: ...
    @property
    def label(self) -> int: ...  # 1 unsafe


def hash_unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) (sha256, not Python's salted hash)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


@dataclass(frozen=True, slots=True)
class ResponseExample:
    context: str
    windows: list[str]
    label: int


def cut_words(text: str, n_words: int) -> str:
    parts = text.split()
    return " ".join(parts[:n_words])


def cut_chars(text: str, n: int) -> str:
    """The first ~n characters, ending at a word boundary when there is one."""
    if len(text) <= n:
        return text
    cut = text.rfind(" ", n // 2, n)
    return text[: cut if cut > 0 else n]


def prompt_windows(rec: LabelledText, count: Callable[[str], int]) -> list[str]:
    return text_windows(rec.prompt[:PROMPT_TRAIN_CHARS], count)


def response_examples(rec: LabelledText, count: Callable[[str], int]) -> list[ResponseExample]:
    """The whole (cut) answer and its prefixes, each with the record's context."""
    assert rec.response is not None
    ctx = context_text(rec.prompt)
    answer = rec.response[:RESPONSE_TRAIN_CHARS]
    out = [ResponseExample(ctx, text_windows(answer, count), rec.label)]
    n_words = len(answer.split())
    short = 1 + int(hash_unit(rec.id + "/short") * 6)  # 1..6 words
    if rec.label == 0 and n_words > short:
        out.append(ResponseExample(ctx, [cut_words(answer, short)], 0))
    if len(answer) > 200:
        lo = UNSAFE_PREFIX_MIN_CHARS if rec.label else 40
        at = lo + int(hash_unit(rec.id + "/mid") * (min(len(answer), 700) - lo))
        out.append(ResponseExample(ctx, text_windows(cut_chars(answer, at), count), rec.label))
    return out


def benign_as_answer(rec: LabelledText, prev: LabelledText) -> ResponseExample:
    """A benign everyday text as the answer to another benign prompt: teaches the response
    head that short, multilingual, ordinary text is a safe answer (the labelled answers are
    all English and mostly long)."""
    return ResponseExample(context_text(prev.prompt), [rec.prompt[:PROMPT_TRAIN_CHARS]], 0)
