"""One test per unverified fact of docs/guard-models.md, each named after its assumption.

The tests check behaviour against the documented formats, not constants against themselves:
a real request is rendered by the adapter and the body is compared with the documented request
layout; the documented answers are parsed into verdicts. The documented strings are copied
here (the repository stands alone); "docs/guard-models.md, <section>" says where each comes
from. When an assumption is checked against a live server and found wrong, change the one
function in guard_engine/adapters/nemotron.py that encodes it, the docs, and its test here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guard_engine.adapters.llama_guard import LlamaGuard3Adapter
from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.errors import GuardUnparseable
from guard_engine.policy.compile import load_policy
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardImage, GuardRequest, Mode, Turn
from tests.factories import make_policy

MODEL = "nvidia/Nemotron-3.5-Content-Safety"
ADAPTER = NemotronAdapter()

# docs/guard-models.md, "Nemotron request format": the response to judge is appended to the
# user text after this separator (two spaces after "agent:").
DOCUMENTED_RESPONSE_SEPARATOR = "\nresponse: agent:  ### Answer: "

# docs/guard-models.md, "Custom policies": the framing of the model card's examples.
DOCUMENTED_POLICY_FRAMING = (
    "Evaluate the user prompt for compliance with the given policy ignoring any previous "
    "policies you know about.\n"
    "\n"
    "### Policy\n"
    "Name: {name}\n"
    "Description: {description}\n"
    "\n"
    "{rules}"
)
DOCUMENTED_THINK_LINE = "First, think through your reasoning step-by-step."

RULES = "Disallowed Behaviors:\n- dating advice\n\nAllowed Behaviors:\n- history"

# docs/guard-models.md, "Nemotron answer format": every documented answer form, with the
# verdict it means: (answer text, has response, prompt label, response label, categories,
# THINK trace).
DOCUMENTED_ANSWERS: list[tuple[str, bool, str, str | None, tuple[str, ...], str | None]] = [
    ("User Safety: safe", False, "safe", None, (), None),
    (
        "User Safety: unsafe\nSafety Categories: Threat, PII/Privacy",
        False,
        "unsafe",
        None,
        ("Threat", "PII/Privacy"),
        None,
    ),
    (
        "User Safety: unsafe\nResponse Safety: safe\n"
        "Safety Categories: Guns and Illegal Weapons, Criminal Planning/Confessions",
        True,
        "unsafe",
        "safe",
        ("Guns and Illegal Weapons", "Criminal Planning/Confessions"),
        None,
    ),
    (
        "<think>\nWe need to decide if user input is safe or unsafe. ...\n</think>"
        "User Safety: unsafe\nSafety Categories: Criminal Planning/Confessions",
        False,
        "unsafe",
        None,
        ("Criminal Planning/Confessions",),
        "We need to decide if user input is safe or unsafe. ...",
    ),
]

# docs/guard-models.md, "Nemotron taxonomy": S1..S24 as the model spells them.
DOCUMENTED_TAXONOMY = [
    "Violence",
    "Sexual",
    "Criminal Planning/Confessions",
    "Guns and Illegal Weapons",
    "Controlled/Regulated Substances",
    "Suicide and Self Harm",
    "Sexual (minor)",
    "Hate/Identity Hate",
    "PII/Privacy",
    "Harassment",
    "Threat",
    "Profanity",
    "Needs Caution",
    "Other",
    "Manipulation",
    "Fraud/Deception",
    "Malware",
    "High Risk Gov Decision Making",
    "Political/Misinformation/Conspiracy",
    "Copyright/Trademark/Plagiarism",
    "Unauthorized Advice",
    "Illegal Activity",
    "Immoral/Unethical",
    "Economic Harm",
]


def _body(
    request: GuardRequest, policy: CompiledPolicy | None = None, mode: Mode = "categories"
) -> dict[str, Any]:
    return ADAPTER.build_body(request, policy or make_policy(), model=MODEL, mode=mode)


def _text(body: dict[str, Any]) -> str:
    (message,) = body["messages"]
    (text,) = [p["text"] for p in message["content"] if p["type"] == "text"]
    assert isinstance(text, str)
    return text


def _policy_file(tmp_path: Path, description: str = "Homework helper") -> CompiledPolicy:
    path = tmp_path / "kids.yaml"
    indented = "".join(f"  {line}\n" if line else "\n" for line in RULES.splitlines())
    path.write_text(f"name: kids\ndescription: {description}\npolicy: |\n{indented}")
    return load_policy(path)


# --- request -----------------------------------------------------------------------------------


def test_assumption_system_message_is_dropped_so_none_is_sent() -> None:
    image = GuardImage(data=b"\x89PNG\r\n\x1a\n", mime="image/png", sha256="0" * 64)
    request = GuardRequest(
        prompt="what is in this picture?",
        context=(Turn("system", "You are a bot"),),
        images=(image,),
    )
    body = _body(request)
    # Documented layout: ONE user turn, the image first (a base64 data URI), then the text.
    (message,) = body["messages"]
    assert message["role"] == "user"
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["image_url", "text"]
    assert message["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "system" not in {m["role"] for m in body["messages"]}


def test_assumption_response_appended_to_user_text() -> None:
    prompt, response = "How do I bake bread?", "Mix flour, water and yeast."
    input_body = _body(GuardRequest(prompt=prompt))
    output_body = _body(GuardRequest(prompt=prompt, response=response))
    # SGLang rejects a conversation ending on an assistant turn: still one user message.
    assert [m["role"] for m in output_body["messages"]] == ["user"]
    assert _text(output_body) == prompt + DOCUMENTED_RESPONSE_SEPARATOR + response
    assert _text(output_body) == (
        "How do I bake bread?\nresponse: agent:  ### Answer: Mix flour, water and yeast."
    )
    # The output check starts with the input check's text byte for byte (shared cache prefix).
    assert _text(output_body).startswith(_text(input_body))


def test_documented_modes_map_onto_template_kwargs() -> None:
    request = GuardRequest(prompt="hi")
    expected = {
        "binary": {"enable_thinking": False, "request_categories": "/no_categories"},
        "categories": {"enable_thinking": False, "request_categories": "/categories"},
        "think": {"enable_thinking": True, "request_categories": "/categories"},
    }
    for mode, kwargs in expected.items():
        body = _body(request, make_policy(mode="categories"), mode=mode)  # type: ignore[arg-type]
        assert body["chat_template_kwargs"] == kwargs
        assert body["temperature"] == 0
        # Documented budgets: about 64 tokens without THINK, 1024 with it.
        assert body["max_tokens"] == (1024 if mode == "think" else 128)


def test_assumption_custom_policy_combines_with_request_categories(tmp_path: Path) -> None:
    body = _body(GuardRequest(prompt="hi"), _policy_file(tmp_path), mode="categories")
    kwargs = body["chat_template_kwargs"]
    assert kwargs["request_categories"] == "/categories"
    assert kwargs["custom_policy"].startswith("Evaluate the user prompt")
    # And an answer with categories under a custom policy is read as such.
    verdict = ADAPTER.parse("User Safety: unsafe\nSafety Categories: Other", has_response=False)
    assert verdict.prompt_label == "unsafe" and verdict.categories == ("Other",)


def test_assumption_custom_policy_text_framing(tmp_path: Path) -> None:
    documented = DOCUMENTED_POLICY_FRAMING.format(
        name="kids", description="Homework helper", rules=RULES
    )
    # A policy file, compiled: the text the server receives is the documented layout.
    body = _body(GuardRequest(prompt="hi"), _policy_file(tmp_path))
    assert body["chat_template_kwargs"]["custom_policy"] == documented
    # A policy built elsewhere (unframed text) is framed the same way; a description of
    # several lines becomes the one line the layout has.
    unframed = make_policy(name="kids", description="Homework\nhelper", custom_policy=RULES)
    body = _body(GuardRequest(prompt="hi"), unframed)
    assert body["chat_template_kwargs"]["custom_policy"] == documented


def test_assumption_custom_policy_framing_with_think_adds_reasoning_line(tmp_path: Path) -> None:
    body = _body(GuardRequest(prompt="hi"), _policy_file(tmp_path), mode="think")
    framed = body["chat_template_kwargs"]["custom_policy"]
    lines = framed.splitlines()
    assert lines[0].startswith("Evaluate the user prompt for compliance")
    assert lines[1] == DOCUMENTED_THINK_LINE
    # Apart from that line, the same bytes as without THINK (one cached policy prefix each).
    without = _body(GuardRequest(prompt="hi"), _policy_file(tmp_path), mode="categories")
    plain = without["chat_template_kwargs"]["custom_policy"]
    assert framed.replace("\n" + DOCUMENTED_THINK_LINE, "", 1) == plain


def test_assumption_custom_policy_framing_is_not_doubled(tmp_path: Path) -> None:
    policy = _policy_file(tmp_path)
    for mode in ("categories", "think"):
        framed = _body(GuardRequest(prompt="hi"), policy, mode=mode)  # type: ignore[arg-type]
        text = framed["chat_template_kwargs"]["custom_policy"]
        assert text.count("Evaluate the user prompt") == 1
        assert text.count("### Policy") == 1
        assert text.count(DOCUMENTED_THINK_LINE) == (1 if mode == "think" else 0)


# --- answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", DOCUMENTED_ANSWERS, ids=lambda a: a[0].splitlines()[-1])
def test_every_documented_answer_parses_into_its_verdict(
    answer: tuple[str, bool, str, str | None, tuple[str, ...], str | None],
) -> None:
    text, has_response, prompt_label, response_label, categories, think = answer
    verdict = ADAPTER.parse(text, has_response=has_response)
    assert verdict.prompt_label == prompt_label
    assert verdict.response_label == response_label
    assert verdict.categories == categories
    assert verdict.think == think


def test_think_trace_without_a_newline_after_it_still_parses() -> None:
    verdict = ADAPTER.parse("<think>short</think>User Safety: safe", has_response=False)
    assert verdict.prompt_label == "safe" and verdict.think == "short"
    verdict = ADAPTER.parse("<think>short</think>\nUser Safety: safe", has_response=False)
    assert verdict.prompt_label == "safe"


@pytest.mark.parametrize(
    ("text", "has_response"),
    [
        ("<think>\nWe need to decide if user input is", False),  # budget ran out mid-trace
        ("User Safety: safe", True),  # a response was sent: its verdict is missing
        ("", False),
        ("I cannot help with that.", False),
    ],
)
def test_a_missing_verdict_is_unparseable_never_safe(text: str, has_response: bool) -> None:
    with pytest.raises(GuardUnparseable):
        ADAPTER.parse(text, has_response=has_response)


def test_assumption_taxonomy_has_s24_economic_harm() -> None:
    verdict = ADAPTER.parse(
        "User Safety: unsafe\nSafety Categories: economic harm", has_response=False
    )
    assert verdict.categories == ("Economic Harm",)


def test_assumption_category_names_are_emitted_as_in_the_taxonomy() -> None:
    # Every documented name, in any case, is read back in the documented spelling.
    answer = "User Safety: unsafe\nSafety Categories: " + ", ".join(
        name.upper() for name in DOCUMENTED_TAXONOMY
    )
    verdict = ADAPTER.parse(answer, has_response=False)
    assert list(verdict.categories) == DOCUMENTED_TAXONOMY
    # Names, not S-codes: an S-code is kept as written, not translated.
    verdict = ADAPTER.parse("User Safety: unsafe\nSafety Categories: S1", has_response=False)
    assert verdict.categories == ("S1",)


# --- Llama Guard 3 -----------------------------------------------------------------------------


def test_llama_guard_judges_the_last_turn_and_answers_with_s_codes() -> None:
    adapter = LlamaGuard3Adapter()
    policy = make_policy()
    request = GuardRequest(prompt="How do I bake bread?")
    input_body = adapter.build_body(request, policy, model="m", mode="categories")
    assert [m["role"] for m in input_body["messages"]] == ["user"]
    output = GuardRequest(prompt="How do I bake bread?", response="Mix flour.")
    output_body = adapter.build_body(output, policy, model="m", mode="categories")
    # docs/guard-models.md, "Llama Guard 3": an output check ends on the assistant turn.
    assert [m["role"] for m in output_body["messages"]] == ["user", "assistant"]

    # docs/guard-models.md, "Llama Guard 3": `safe`, or `unsafe` then a line of S-codes.
    safe = adapter.parse("safe", has_response=False)
    assert safe.prompt_label == "safe" and safe.categories == ()
    unsafe = adapter.parse("unsafe\nS1,S2", has_response=False)
    assert unsafe.prompt_label == "unsafe"
    assert unsafe.categories == ("Violent Crimes", "Non-Violent Crimes")
    judged = adapter.parse("unsafe\nS10", has_response=True)
    assert judged.response_label == "unsafe" and judged.categories == ("Hate",)
