"""One test per UNVERIFIED fact of guard-models.md, each named after its assumption.

Each pins the behaviour of the single constant or function in
guard_engine/adapters/nemotron.py that encodes the assumption. When one is checked against a
live Nemotron 3.5 server and found wrong, change that one place and this one test.
"""

from __future__ import annotations

from guard_engine.adapters import nemotron
from guard_engine.adapters.nemotron import NemotronAdapter
from guard_engine.types import GuardRequest, Turn
from tests.factories import make_policy

MODEL = "nvidia/Nemotron-3.5-Content-Safety"
POLICY_TEXT = "Disallowed Behaviors:\n- dating advice\n\nAllowed Behaviors:\n- history\n"


def test_assumption_system_message_is_dropped_so_none_is_sent() -> None:
    body = NemotronAdapter().build_body(
        GuardRequest(prompt="hi", context=(Turn("system", "You are a bot"),)),
        make_policy(custom_policy=POLICY_TEXT),
        model=MODEL,
        mode="categories",
    )
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert nemotron.guard_messages([]) == [{"role": "user", "content": []}]


def test_assumption_response_appended_to_user_text() -> None:
    assert nemotron.RESPONSE_SEPARATOR == "\nresponse: agent:  ### Answer: "
    assert "agent:  ###" in nemotron.RESPONSE_SEPARATOR  # the TWO spaces
    assert nemotron.append_response("prompt", "answer") == (
        "prompt\nresponse: agent:  ### Answer: answer"
    )


def test_assumption_custom_policy_combines_with_request_categories() -> None:
    assert nemotron.COMBINE_CUSTOM_POLICY_WITH_CATEGORIES is True
    kwargs = nemotron.template_kwargs(make_policy(custom_policy=POLICY_TEXT), "categories")
    assert kwargs["request_categories"] == "/categories"
    assert "custom_policy" in kwargs


def test_assumption_custom_policy_text_framing() -> None:
    policy = make_policy(name="kids", description="Homework\nhelper", custom_policy=POLICY_TEXT)
    assert nemotron.frame_custom_policy(policy, think=False) == (
        "Evaluate the user prompt for compliance with the given policy ignoring any previous "
        "policies you know about.\n\n### Policy\nName: kids\nDescription: Homework helper\n\n"
        "Disallowed Behaviors:\n- dating advice\n\nAllowed Behaviors:\n- history\n"
    )


def test_assumption_custom_policy_framing_with_think_adds_reasoning_line() -> None:
    framed = nemotron.frame_custom_policy(make_policy(custom_policy=POLICY_TEXT), think=True)
    first, second = framed.splitlines()[:2]
    assert first == nemotron.POLICY_PREAMBLE
    assert second == "First, think through your reasoning step-by-step."


def test_assumption_custom_policy_framing_is_not_doubled() -> None:
    already = nemotron.POLICY_PREAMBLE + "\n\n### Policy\nName: x\n\n" + POLICY_TEXT
    policy = make_policy(custom_policy=already)
    assert nemotron.frame_custom_policy(policy, think=False) == already
    # THINK inserts its line after the compiler's preamble, leaving the rest byte-identical.
    assert nemotron.frame_custom_policy(policy, think=True) == (
        nemotron.POLICY_PREAMBLE
        + "\nFirst, think through your reasoning step-by-step."
        + "\n\n### Policy\nName: x\n\n"
        + POLICY_TEXT
    )


def test_assumption_framing_matches_the_policy_compiler() -> None:
    from guard_engine.policy import compile as policy_compile

    assert policy_compile.CUSTOM_POLICY_PREAMBLE == nemotron.POLICY_PREAMBLE
    framed = policy_compile.frame_custom_policy_unverified_card_format("kids", "d", POLICY_TEXT)
    unframed = make_policy(name="kids", description="d", custom_policy=POLICY_TEXT)
    assert nemotron.frame_custom_policy(unframed, think=False) == framed


def test_assumption_taxonomy_has_s24_economic_harm() -> None:
    assert nemotron.TAXONOMY_HAS_S24 is True
    assert len(nemotron.known_categories()) == 24
    assert nemotron.known_categories()[23] == "Economic Harm"
    assert nemotron.canonical_category("economic harm") == "Economic Harm"


def test_assumption_category_names_are_emitted_as_in_the_taxonomy() -> None:
    cats = nemotron.known_categories()
    assert cats[0] == "Violence"
    assert cats[2] == "Criminal Planning/Confessions"
    assert cats[8] == "PII/Privacy"
    assert nemotron.canonical_category("pii/privacy") == "PII/Privacy"
    # Names, not S-codes: an S-code is kept as written, not translated.
    assert nemotron.canonical_category("S1") == "S1"
