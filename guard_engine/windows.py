"""Texts longer than a guard can take: overlapping windows, each judged alone, worst one wins.

A guard model has a fixed context (the shipped SGLang launch uses 4096 tokens, most of them
spent on the policy and taxonomy). A longer request is split so that no single guard call
carries more than `max_chars` characters of conversation text:

- the text being judged (the prompt of an input check, the response of an output check) is cut
  into windows that overlap by a fifth of their size, so a harmful sentence that straddles a
  cut is still seen whole by one window; cuts prefer whitespace near the end of a window;
- what only frames it (context turns, and for an output check the prompt, which the input
  check has judged in full) is shortened to its most recent part, at most a quarter of the
  budget, and sent with every window;
- images go with the first window only: one judgement of each image is enough.

The verdict is the worst window's: the first flagged one, else the last. Never a 503 because a
text is long: that would make SDKs retry the same long text.
"""

from __future__ import annotations

from dataclasses import replace

from guard_engine.types import GuardRequest, ParsedVerdict, Turn

MIN_WINDOW_CHARS = 200  # below this a window says too little for a guard to judge


def request_chars(request: GuardRequest) -> int:
    """The conversation text of one guard call (the policy text around it is fixed)."""
    return (
        sum(len(turn.text) for turn in request.context)
        + len(request.prompt)
        + len(request.response or "")
    )


def split_text(text: str, size: int) -> list[str]:
    """Overlapping windows of at most `size` characters covering `text` (one if it fits)."""
    return [text[start:end] for start, end in window_spans(len(text), size, text)]


def window_spans(length: int, size: int, text: str = "") -> list[tuple[int, int]]:
    """(start, end) of each window: consecutive windows overlap by about `size // 5`
    characters; a cut moves back to whitespace in the window's last tenth when there is some."""
    size = max(size, 1)
    if length <= size:
        return [(0, length)]
    overlap = size // 5
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = start + size
        if end >= length:
            spans.append((start, length))
            return spans
        cut = max(text.rfind(" ", end - size // 10, end), text.rfind("\n", end - size // 10, end))
        if cut <= start + overlap:
            cut = end
        spans.append((start, cut))
        start = max(cut - overlap, start + 1)


def _tail(text: str, budget: int) -> str:
    return text if len(text) <= budget else text[len(text) - budget :]


def _recent_turns(turns: tuple[Turn, ...], budget: int) -> tuple[Turn, ...]:
    """The most recent context turns that fit in `budget` characters (the oldest go first)."""
    kept: list[Turn] = []
    for turn in reversed(turns):
        if budget <= 0:
            break
        text = _tail(turn.text, budget)
        kept.append(replace(turn, text=text))
        budget -= len(text)
    return tuple(reversed(kept))


def split_request(request: GuardRequest, max_chars: int) -> list[GuardRequest]:
    """`request` itself when it fits in `max_chars`, else its windows (see module doc)."""
    if request_chars(request) <= max_chars:
        return [request]
    frame_budget = max_chars // 4
    if request.response is None:
        context = _recent_turns(request.context, frame_budget)
        size = max(max_chars - sum(len(t.text) for t in context), MIN_WINDOW_CHARS)
        texts = split_text(request.prompt, size)
        return [
            replace(request, prompt=text, context=context, images=request.images if i == 0 else ())
            for i, text in enumerate(texts)
        ]
    prompt = _tail(request.prompt, frame_budget)
    context = _recent_turns(request.context, frame_budget - len(prompt))
    framed = len(prompt) + sum(len(t.text) for t in context)
    size = max(max_chars - framed, MIN_WINDOW_CHARS)
    return [
        replace(
            request,
            prompt=prompt,
            context=context,
            response=text,
            images=request.images if i == 0 else (),
        )
        for i, text in enumerate(split_text(request.response, size))
    ]


def flagged(verdict: ParsedVerdict, request: GuardRequest) -> bool:
    """What callers act on (as Verdict.flagged): the response label of an output check."""
    if request.response is None:
        return verdict.prompt_label == "unsafe"
    return verdict.response_label == "unsafe"
