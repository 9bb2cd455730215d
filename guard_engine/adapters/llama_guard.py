"""The Llama Guard 3 adapter (docs/guard-models.md, "Llama Guard 3"): proof that the Adapter
carries a second guard model with a different request shape and output format.

Llama Guard judges the LAST turn of the conversation it is given: an input check sends the
conversation ending on the user message, an output check the conversation ending on the
assistant's response. Its answer is `safe`, or `unsafe` and a line of S-codes (`S1,S2`),
which are mapped to the category names listed there.

Serving: vLLM accepts a conversation ending on an assistant turn; SGLang rejects one (see
docs/guard-models.md, "Nemotron request format"), so output checks with this adapter need
vLLM (or NIM) until SGLang changes. Input checks work on both.

Llama Guard has no modes: it always names categories and has no THINK trace, so `mode` is
accepted for the interface and otherwise ignored. On an output check it does not re-judge
the prompt (the input check did), so `prompt_label` is reported as "safe" there and only
`response_label` carries the verdict (which is what `Verdict.flagged` reads for outputs).
"""

from __future__ import annotations

from typing import Any

from guard_engine.errors import GuardUnparseable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Label, Mode, ParsedVerdict

CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex Crimes",
    "S4": "Child Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

# Policies are written against Nemotron's taxonomy (the default guard). A suppressed Nemotron
# category excludes the Llama Guard category that covers the same ground; only unambiguous
# pairs are listed (a partial overlap would silently widen the suppression).
_FROM_NEMOTRON: dict[str, str] = {
    "violence": "S1",
    "sexual (minor)": "S4",
    "unauthorized advice": "S6",
    "pii/privacy": "S7",
    "copyright/trademark/plagiarism": "S8",
    "hate/identity hate": "S10",
    "suicide and self harm": "S11",
    "sexual": "S12",
}
_BY_NAME = {name.casefold(): code for code, name in CATEGORIES.items()}

MAX_TOKENS = 32  # "unsafe\nS1,S2,..." is a handful of tokens


def excluded_category_keys(policy: CompiledPolicy) -> list[str]:
    """S-codes to exclude for the policy's suppressed categories (S-code, Llama Guard name or
    Nemotron name, case-insensitive), in code order without duplicates."""
    codes: set[str] = set()
    for name in policy.suppressed:
        key = name.strip()
        if key.upper() in CATEGORIES:
            codes.add(key.upper())
        elif key.casefold() in _BY_NAME:
            codes.add(_BY_NAME[key.casefold()])
        elif key.casefold() in _FROM_NEMOTRON:
            codes.add(_FROM_NEMOTRON[key.casefold()])
    return sorted(codes, key=lambda c: int(c[1:]))


def build_messages(request: GuardRequest) -> list[dict[str, Any]]:
    """The conversation, ending on the turn to judge. Roles must alternate user/assistant, so
    consecutive context turns of the same side are merged (tool/system text counts as user)."""
    turns: list[tuple[str, str]] = [
        ("assistant" if t.role == "assistant" else "user", t.text) for t in request.context
    ]
    turns.append(("user", request.prompt))
    merged: list[tuple[str, str]] = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n\n" + text)
        else:
            merged.append((role, text))
    messages: list[dict[str, Any]] = []
    for i, (role, text) in enumerate(merged):
        parts: list[dict[str, Any]] = []
        if i == len(merged) - 1:  # images belong to the judged user message (11B-Vision)
            parts = [
                {"type": "image_url", "image_url": {"url": image.data_url()}}
                for image in request.images
            ]
        parts.append({"type": "text", "text": text})
        messages.append({"role": role, "content": parts})
    if request.response is not None:
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": request.response}]}
        )
    return messages


def parse_verdict(text: str, *, has_response: bool) -> ParsedVerdict:
    """`safe` | `unsafe\\nS1,S2`; unknown codes are kept as written, anything else raises."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines or lines[0].lower() not in ("safe", "unsafe"):
        raise GuardUnparseable("expected 'safe' or 'unsafe' as the first line", raw=text)
    label: Label = "unsafe" if lines[0].lower() == "unsafe" else "safe"
    if len(lines) > 2 or (label == "safe" and len(lines) > 1):
        raise GuardUnparseable("unexpected extra lines in guard answer", raw=text)
    categories: list[str] = []
    if len(lines) == 2:
        for part in lines[1].split(","):
            code = part.strip().upper()
            if not code:
                continue
            name = CATEGORIES.get(code, part.strip())
            if name not in categories:
                categories.append(name)
    if has_response:
        return ParsedVerdict(
            prompt_label="safe", response_label=label, categories=tuple(categories)
        )
    return ParsedVerdict(prompt_label=label, categories=tuple(categories))


class LlamaGuard3Adapter:
    """`llama-guard-3`: Meta Llama Guard 3 (1B, 8B, 11B-Vision) on an OpenAI-compatible server."""

    name = "llama-guard-3"

    def build_body(
        self, request: GuardRequest, policy: CompiledPolicy, *, model: str, mode: Mode
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": build_messages(request),
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
            "stream": False,
        }
        excluded = excluded_category_keys(policy)
        if excluded:
            body["chat_template_kwargs"] = {"excluded_category_keys": excluded}
        return body

    def parse(self, text: str, *, has_response: bool) -> ParsedVerdict:
        return parse_verdict(text, has_response=has_response)
