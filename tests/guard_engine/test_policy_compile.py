"""Policy files: strict parsing with file/line/key errors, compilation, hashing, framing."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard_engine.errors import ConfigFileError
from guard_engine.policy.compile import (
    compile_policy,
    frame_custom_policy_unverified_card_format,
    load_policy,
    render_taxonomy_unverified_s_codes,
)
from guard_engine.policy.schema import PolicyFile
from guard_engine.taxonomy import DEFAULT_CATEGORIES

MINIMAL = "name: demo\ndescription: A demo assistant\n"


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str, **kwargs: object) -> ConfigFileError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_policy(path, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_minimal_policy_gets_the_documented_defaults(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, MINIMAL))
    assert (p.name, p.description, p.guard, p.mode) == (
        "demo",
        "A demo assistant",
        None,
        "categories",
    )
    assert p.custom_policy is None and p.custom_taxonomy is None
    assert p.categories == DEFAULT_CATEGORIES and p.suppressed == ()
    assert p.input.scope == "last_user" and not p.input.parallel and p.input.enabled
    assert p.input.on_uncheckable == "refuse" and not p.input.allow_remote_images
    assert (p.output.stream, p.output.holdback_chars) == ("holdback", 400)
    assert (p.on_block.input, p.on_block.output) == ("error", "refusal")
    assert p.on_guard_error == "closed" and p.threshold == 0.5 and p.shadow is None
    assert p.audit.think == "off" and not p.audit.content
    assert len(p.hash8) == 8 and p.ref == f"demo@{p.hash8}"
    assert p.source == str(tmp_path / "p.yaml")


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (MINIMAL + "bogus: 1\n", 3, "bogus", "unknown key"),
        (
            MINIMAL + "input:\n  enabled: true\n  scop: conversation\n",
            5,
            "input.scop",
            "unknown key",
        ),
        (MINIMAL + "mode: verbose\n", 3, "mode", "'binary', 'categories' or 'think'"),
        (MINIMAL + "output:\n  holdback_chars: 10\n", 4, "output.holdback_chars", "50"),
        (MINIMAL + "threshold: 1.5\n", 3, "threshold", "less than or equal to 1"),
        (MINIMAL + "on_guard_error: maybe\n", 3, "on_guard_error", "'closed', 'open'"),
        (MINIMAL + "on_block: {input: refusal, output: error}\n", 3, "on_block.output", "refusal"),
        (MINIMAL + "audit: {think: sampled:1.5}\n", 3, "audit.think", "sampled:<rate>"),
        (MINIMAL + "audit: {think: sometimes}\n", 3, "audit.think", "flagged"),
        ("name: demo\n", 1, "description", "is required"),
        ("name: 'has space'\ndescription: d\n", 1, "name", "letters, digits"),
        (MINIMAL + "input: {parallel: perhaps}\n", 3, "input.parallel", "boolean"),
    ],
)
def test_invalid_files_name_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    err = error_for(tmp_path, text)
    assert (err.line, err.key) == (line, key), str(err)
    assert message in str(err)
    assert str(err).startswith(f"{tmp_path / 'p.yaml'}:{line}: key '{key}':")


def test_unknown_category_lists_the_known_ones_and_suggests(tmp_path: Path) -> None:
    err = error_for(
        tmp_path, MINIMAL + "categories:\n  suppress:\n    - Profanity\n    - Violense\n"
    )
    assert (err.line, err.key) == (6, "categories.suppress[1]")
    assert "did you mean 'Violence'" in str(err)
    assert all(name in str(err) for name in DEFAULT_CATEGORIES)


def test_adding_a_builtin_or_duplicate_category_is_an_error(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "categories:\n  add:\n    - name: violence\n")
    assert err.key == "categories.add[0].name" and "built-in" in str(err)
    err = error_for(tmp_path, MINIMAL + "categories:\n  add: [{name: X}, {name: x}]\n")
    assert err.key == "categories" and "added twice" in str(err)


def test_suppressing_everything_with_nothing_added_is_an_error(tmp_path: Path) -> None:
    names = ", ".join(f'"{c}"' for c in DEFAULT_CATEGORIES)
    err = error_for(tmp_path, MINIMAL + f"categories:\n  suppress: [{names}]\n")
    assert "every category is suppressed" in str(err)


def test_unknown_guard_is_reported_at_the_guard_line(tmp_path: Path) -> None:
    text = MINIMAL + "mode: binary\nguard: nemotorn\n"
    err = error_for(tmp_path, text, known_guards=["nemotron", "local"])
    assert (err.line, err.key) == (4, "guard")
    assert "unknown guard 'nemotorn'; known guards: local, nemotron" in str(err)
    # Without a guard list the name is not checked (lint without a config).
    assert load_policy(write(tmp_path, text)).guard == "nemotorn"


def test_invalid_yaml_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    assert "invalid YAML" in str(error_for(tmp_path, "name: [demo\n"))
    assert "must be a mapping" in str(error_for(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigFileError, match="cannot read file"):
        load_policy(tmp_path / "missing.yaml")


def test_yaml_bare_off_means_off(tmp_path: Path) -> None:
    # YAML 1.1 reads `off` as false; the author meant the string.
    assert load_policy(write(tmp_path, MINIMAL + "audit: {think: off}\n")).audit.think == "off"
    assert "sampled:<rate>" in str(error_for(tmp_path, MINIMAL + "audit: {think: on}\n"))


def test_audit_think_forms(tmp_path: Path) -> None:
    def audit(value: str) -> tuple[str, float]:
        a = load_policy(write(tmp_path, MINIMAL + f"audit: {{think: '{value}'}}\n")).audit
        return a.think, a.think_rate

    assert audit("flagged") == ("flagged", 0.0)
    assert audit("all") == ("all", 1.0)
    assert audit("sampled:0.05") == ("sampled", 0.05)
    assert audit("sampled:1") == ("sampled", 1.0)


def test_hash_ignores_comments_order_quoting_and_spelled_out_defaults(tmp_path: Path) -> None:
    a = load_policy(write(tmp_path, MINIMAL + "policy: |\n  No dating advice.\n", "a.yaml"))
    b = load_policy(
        write(
            tmp_path,
            "# reviewed 2026-01-01\n"
            'policy: "No dating advice.   \\n\\n"\n'
            "description: 'A demo assistant'   # one line\n"
            "name: demo\n"
            "mode: categories\n"
            "threshold: 0.50\n"
            "input: {enabled: true}\n",
            "b.yaml",
        )
    )
    assert a.hash8 == b.hash8


def test_hash_ignores_the_order_of_suppressed_categories(tmp_path: Path) -> None:
    a = load_policy(write(tmp_path, MINIMAL + "categories: {suppress: [Profanity, Violence]}\n"))
    b = load_policy(
        write(tmp_path, MINIMAL + "categories: {suppress: [Violence, Profanity, Violence]}\n")
    )
    assert a.hash8 == b.hash8 and a.suppressed == b.suppressed == ("Violence", "Profanity")


@pytest.mark.parametrize(
    "change",
    [
        "mode: binary\n",
        "threshold: 0.4\n",
        "policy: No dating advice!\n",
        "categories: {suppress: [Profanity]}\n",
        "input: {scope: conversation}\n",
        "on_block: {refusal: Nope.}\n",
        "audit: {content: true}\n",
    ],
)
def test_any_semantic_change_changes_the_hash(tmp_path: Path, change: str) -> None:
    base = MINIMAL + "policy: No dating advice.\n"
    a = load_policy(write(tmp_path, base, "a.yaml"))
    edited = "\n".join(
        line for line in base.splitlines() if line.split(":")[0] != change.split(":")[0]
    )
    b = load_policy(write(tmp_path, edited + "\n" + change, "b.yaml"))
    assert a.hash8 != b.hash8


def test_custom_policy_uses_the_model_card_framing_unverified(tmp_path: Path) -> None:
    """UNVERIFIED (docs/guard-models.md, "Custom policies"): the model card examples' framing."""
    text = (
        MINIMAL
        + "policy: |\n  Disallowed Behaviors:\n  - dating advice   \n\n  Allowed Behaviors:\n"
        "  - history\n\n\n"
    )
    p = load_policy(write(tmp_path, text))
    assert p.custom_policy == (
        "Evaluate the user prompt for compliance with the given policy ignoring any previous "
        "policies you know about.\n\n### Policy\nName: demo\nDescription: A demo assistant\n\n"
        "Disallowed Behaviors:\n- dating advice\n\nAllowed Behaviors:\n- history"
    )
    # THINK's extra instruction is the adapter's business, not the compiled policy's.
    assert "step-by-step" not in p.custom_policy
    assert p.custom_taxonomy is None


def test_custom_policy_is_byte_stable_and_description_is_one_line() -> None:
    a = frame_custom_policy_unverified_card_format("n", "two\n  lines ", "body")
    assert a == frame_custom_policy_unverified_card_format("n", "two\n  lines ", "body")
    assert "Description: two lines\n\nbody" in a


def test_custom_taxonomy_keeps_s_codes_and_numbers_added_after_s24_unverified() -> None:
    """UNVERIFIED (docs/guard-models.md, "Custom policies"): `S<n>: <Name>.` lines, codes kept,
    new ones from S25."""
    kept = [c for c in DEFAULT_CATEGORIES if c != "Profanity"]
    text = render_taxonomy_unverified_s_codes(
        kept, [("Dating advice", "Romance advice."), ("X", "")]
    )
    lines = text.split("\n")
    assert lines[0] == "S1: Violence."
    assert "S12: Profanity." not in lines and "S13: Needs Caution." in lines
    assert lines[-2:] == ["S25: Dating advice. Romance advice.", "S26: X."]
    assert len(lines) == 25


def test_categories_edit_produces_taxonomy_and_effective_names(tmp_path: Path) -> None:
    p = load_policy(
        write(
            tmp_path,
            MINIMAL
            + "categories:\n  suppress: [Violence, Violence]\n  add:\n"
            + "    - {name: '  Dating   advice ', description: Romance.}\n",
        )
    )
    assert p.suppressed == ("Violence",)
    assert p.categories == (*DEFAULT_CATEGORIES[1:], "Dating advice")
    assert p.custom_taxonomy is not None
    assert "S1: Violence." not in p.custom_taxonomy
    assert p.custom_taxonomy.endswith("S25: Dating advice. Romance.")


def test_shadow_resolves_relative_to_the_policy_file(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "name: next\ndescription: candidate\n", "next.yaml")
    p = load_policy(write(tmp_path, MINIMAL + "shadow: sub/next.yaml\n"))
    assert p.shadow == str(sub / "next.yaml")


def test_missing_or_self_shadow_is_an_error_at_the_shadow_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, MINIMAL + "shadow: nope.yaml\n")
    assert (err.line, err.key) == (3, "shadow") and "not found" in str(err)
    err = error_for(tmp_path, MINIMAL + "shadow: ./p.yaml\n")
    assert "cannot shadow itself" in str(err)


def test_compile_policy_is_pure_and_returns_equal_objects() -> None:
    raw = PolicyFile.model_validate({"name": "demo", "description": "d", "shadow": "s.yaml"})
    a = compile_policy(raw, "/etc/guardline/p.yaml")
    assert a == compile_policy(raw, "/etc/guardline/p.yaml")
    assert a.shadow == "/etc/guardline/s.yaml"
    with pytest.raises(AttributeError):
        a.name = "x"  # type: ignore[misc]


def test_policy_text_normalization_makes_crlf_and_trailing_spaces_invisible(
    tmp_path: Path,
) -> None:
    unix = load_policy(
        write(tmp_path, MINIMAL + "policy: |\n  Rule one.\n\n    - indented\n", "u.yaml")
    )
    dos_bytes = (MINIMAL + "policy: |\n  Rule one.   \n\n    - indented\n\n").replace("\n", "\r\n")
    (tmp_path / "d.yaml").write_bytes(dos_bytes.encode())
    dos = load_policy(tmp_path / "d.yaml")
    assert unix.custom_policy == dos.custom_policy and unix.hash8 == dos.hash8
    assert unix.custom_policy is not None and unix.custom_policy.endswith(
        "Rule one.\n\n  - indented"
    )
    assert "policy text is empty" in str(error_for(tmp_path, MINIMAL + 'policy: "  \\n"\n'))
