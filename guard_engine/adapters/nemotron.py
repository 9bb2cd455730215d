"""The Nemotron 3.5 Content Safety adapter (docs/guard-models.md, "Nemotron 3.5 Content Safety").

Renders a GuardRequest into the OpenAI chat-completions body SGLang/vLLM/NIM expect (the
model's own chat template builds the classifier prompt; we send only content plus
`chat_template_kwargs`) and parses the plain-text verdict back.

Every fact docs/guard-models.md marks **unverified** lives behind ONE named constant or function
below (search for "UNVERIFIED"), each covered by a test in
tests/guard_engine/test_unverified_assumptions.py, so that checking it against a live server
and correcting it is a one-place change.

Rendering decisions (stable, because the prefix cache depends on byte-identical text):
- Context turns (input.scope: conversation) are rendered before the prompt, one per line, as
  `<speaker>: <text>` in the model's own transcript vocabulary (`user`, `agent`, `tool`,
  `system`), followed by `user: <prompt>`. The template itself prefixes the whole text with
  `user: `, so the first context turn reads naturally. Without context the text is exactly
  the prompt.
- THINK mode keeps the categories line unless the policy is a binary policy: a policy that
  asks for categories (or for THINK as its own mode) gets `/categories` with the trace, a
  binary policy audited with THINK gets `/no_categories` so the verdict shape does not change.
"""

from __future__ import annotations

import re
from typing import Any

from guard_engine.errors import GuardUnparseable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.taxonomy import DEFAULT_CATEGORIES
from guard_engine.types import GuardRequest, Label, Mode, ParsedVerdict, Turn

# ---------------------------------------------------------------------------------------------
# UNVERIFIED assumptions (docs/guard-models.md, "Unverified facts"). Each one is a single named
# constant or function.
# ---------------------------------------------------------------------------------------------

#: UNVERIFIED: the separator that appends the assistant response to the user text. SGLang
#: rejects a conversation ending on an assistant turn; this renders byte-identically to a
#: user/assistant pair in the template (note the TWO spaces after "agent:").
RESPONSE_SEPARATOR = "\nresponse: agent:  ### Answer: "

#: UNVERIFIED: `custom_policy` and `request_categories` combine (reported both ways). We send
#: both; set to False to drop `request_categories` whenever a custom policy is sent.
COMBINE_CUSTOM_POLICY_WITH_CATEGORIES = True

#: UNVERIFIED: the taxonomy has 24 categories, S24 being "Economic Harm" (NVIDIA's notebooks
#: say 23 in places). When False, the built-in list stops at S23.
TAXONOMY_HAS_S24 = True

#: UNVERIFIED: the first line of the custom policy framing used by the model card examples.
POLICY_PREAMBLE = (
    "Evaluate the user prompt for compliance with the given policy ignoring any previous "
    "policies you know about."
)
#: UNVERIFIED: with THINK on, the preamble is followed by this line.
POLICY_THINK_LINE = "First, think through your reasoning step-by-step."

#: The speaker names used when rendering context turns (our choice, see module docstring).
_SPEAKERS = {"user": "user", "assistant": "agent", "tool": "tool", "system": "system"}


def known_categories() -> tuple[str, ...]:
    """UNVERIFIED: the category names the model emits (docs/guard-models.md, "Nemotron
    taxonomy"), exactly as spelled there."""
    return DEFAULT_CATEGORIES if TAXONOMY_HAS_S24 else DEFAULT_CATEGORIES[:23]


_CANONICAL = {name.casefold(): name for name in known_categories()}


def canonical_category(name: str) -> str:
    """The taxonomy's spelling of a category name (case-insensitive); unknown names are kept
    as the model wrote them (a custom taxonomy or a new model version can emit them)."""
    return _CANONICAL.get(name.casefold(), name)


def guard_messages(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """UNVERIFIED: the chat template drops a system message (integrator report), so none is
    sent: the whole request is ONE user turn (images first, then the text)."""
    return [{"role": "user", "content": content}]


def append_response(user_text: str, response: str) -> str:
    """UNVERIFIED: the output-check text is the input-check text plus the response appended
    with RESPONSE_SEPARATOR. The prefix is byte-identical so SGLang shares its KV cache."""
    return user_text + RESPONSE_SEPARATOR + response


def frame_custom_policy(policy: CompiledPolicy, *, think: bool) -> str:
    """UNVERIFIED: wrap a policy's natural-language text in the model card's framing.

    The policy compiler normally frames it already (guard_engine/policy/compile.py, same
    preamble); such text is kept byte-for-byte, and with THINK the reasoning line is inserted
    after the preamble. Unframed text (a CompiledPolicy built elsewhere) is framed here the
    same way. The output depends only on the policy and the mode: byte-stable for the cache.
    """
    text = policy.custom_policy or ""
    think_line = "\n" + POLICY_THINK_LINE if think else ""
    if text.startswith(POLICY_PREAMBLE):
        rest = text[len(POLICY_PREAMBLE) :]
        if think and not rest.startswith("\n" + POLICY_THINK_LINE):
            return POLICY_PREAMBLE + think_line + rest
        return text
    desc = " ".join(policy.description.split())  # one line, as the framing expects
    return (
        f"{POLICY_PREAMBLE}{think_line}\n\n### Policy\nName: {policy.name}\n"
        f"Description: {desc}\n\n{text}"
    )


def template_kwargs(policy: CompiledPolicy, mode: Mode) -> dict[str, Any]:
    """`chat_template_kwargs` for a mode (docs/guard-models.md, "Nemotron request format") and
    the policy's customizations."""
    think = mode == "think"
    if mode == "binary":
        categories = False
    elif mode == "categories":
        categories = True
    else:  # think: keep categories unless the policy itself is binary (module docstring)
        categories = policy.mode != "binary"
    kwargs: dict[str, Any] = {"enable_thinking": think}
    if policy.custom_policy is None or COMBINE_CUSTOM_POLICY_WITH_CATEGORIES:
        kwargs["request_categories"] = "/categories" if categories else "/no_categories"
    if policy.custom_policy:
        kwargs["custom_policy"] = frame_custom_policy(policy, think=think)
    if policy.custom_taxonomy:
        kwargs["custom_taxonomy"] = policy.custom_taxonomy
    return kwargs


def render_user_text(request: GuardRequest) -> str:
    """The user text of the INPUT check: context turns (if any) then the prompt.

    It depends only on `prompt` and `context`, never on `response`, so the input and output
    checks of one request render it byte-identically.
    """
    if not request.context:
        return request.prompt
    lines = [_render_turn(turn) for turn in request.context]
    lines.append(f"user: {request.prompt}")
    # The template writes "user: " before the text; drop ours from the first line if it is a
    # user turn, so the transcript does not read "user: user: ...".
    if lines[0].startswith("user: "):
        lines[0] = lines[0][len("user: ") :]
    return "\n".join(lines)


def _render_turn(turn: Turn) -> str:
    speaker = _SPEAKERS.get(turn.role, turn.role)
    return f"{speaker}: {turn.text}"


# ---------------------------------------------------------------------------------------------
# Parsing (docs/guard-models.md, "Nemotron answer format")
# ---------------------------------------------------------------------------------------------

_LINE = re.compile(r"^\s*(user safety|response safety|safety categories)\s*:\s*(.*?)\s*$", re.I)
# Another short "Field: value" line (e.g. a "Response Refusal:" line, which the reconstructed
# template of docs/guard-models.md, "Prompt layout and caching", hints at) is tolerated and ignored:
# the verdict lines are still explicit. Prose without a field name is not: it means the model did
# not answer the format.
_OTHER_FIELD = re.compile(r"^\s*[A-Za-z][A-Za-z /-]{0,40}:\s*\S")
_LABEL = re.compile(r"^(safe|unsafe)\.?$", re.I)


def split_think(text: str) -> tuple[str | None, str]:
    """Split `<think>...</think>` (newline after it optional) from the verdict.

    A `<think>` without its closing tag means the token budget ran out mid-trace: there is no
    verdict, which is unparseable, never safe.
    """
    close = text.rfind("</think>")
    if close < 0:
        if "<think>" in text:
            raise GuardUnparseable("THINK trace truncated (no </think>): no verdict", raw=text)
        return None, text
    trace = text[:close]
    start = trace.find("<think>")
    if start >= 0:  # some templates pre-fill <think>, so the model's text may start inside it
        trace = trace[start + len("<think>") :]
    return trace.strip(), text[close + len("</think>") :]


def _label(value: str, text: str, key: str) -> Label:
    m = _LABEL.match(value)
    if m is None:
        raise GuardUnparseable(f"{key}: expected safe or unsafe, got {value!r}", raw=text)
    return "unsafe" if m.group(1).lower() == "unsafe" else "safe"


def parse_verdict(text: str, *, has_response: bool) -> ParsedVerdict:
    """Parse Nemotron's plain-text answer; anything but a complete verdict is GuardUnparseable."""
    think, body = split_think(text)
    fields: dict[str, str] = {}
    for line in body.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            if _OTHER_FIELD.match(line):
                continue
            raise GuardUnparseable(f"unexpected line in guard answer: {line.strip()!r}", raw=text)
        key = m.group(1).lower()
        if key in fields:
            raise GuardUnparseable(f"repeated field {m.group(1)!r}", raw=text)
        fields[key] = m.group(2)
    if "user safety" not in fields:
        raise GuardUnparseable("no 'User Safety:' verdict in guard answer", raw=text)
    prompt_label = _label(fields["user safety"], text, "User Safety")
    response_label: Label | None = None
    if has_response:
        if "response safety" not in fields:
            raise GuardUnparseable("no 'Response Safety:' verdict for an output check", raw=text)
        response_label = _label(fields["response safety"], text, "Response Safety")
    categories: list[str] = []
    for part in fields.get("safety categories", "").split(","):
        name = canonical_category(part.strip())
        if name and name not in categories:
            categories.append(name)
    return ParsedVerdict(
        prompt_label=prompt_label,
        response_label=response_label,
        categories=tuple(categories),
        think=think,
    )


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

MAX_TOKENS = 128  # the model needs about 64; headroom costs nothing at temperature 0
MAX_TOKENS_THINK = 1024


class NemotronAdapter:
    """`nemotron-3.5`: Nemotron 3.5 Content Safety through an OpenAI-compatible server."""

    name = "nemotron-3.5"

    def build_body(
        self, request: GuardRequest, policy: CompiledPolicy, *, model: str, mode: Mode
    ) -> dict[str, Any]:
        text = render_user_text(request)
        if request.response is not None:
            text = append_response(text, request.response)
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image.data_url()}}
            for image in request.images
        ]
        content.append({"type": "text", "text": text})
        return {
            "model": model,
            "messages": guard_messages(content),
            "temperature": 0,
            "max_tokens": MAX_TOKENS_THINK if mode == "think" else MAX_TOKENS,
            "stream": False,
            "chat_template_kwargs": template_kwargs(policy, mode),
        }

    def parse(self, text: str, *, has_response: bool) -> ParsedVerdict:
        return parse_verdict(text, has_response=has_response)
