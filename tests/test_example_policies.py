"""The example policies in policies/: each loads, lints, and means what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from guard_engine.policy.compile import load_policy
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.taxonomy import DEFAULT_CATEGORIES
from proxy.cli import main as guardline

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
EXAMPLES = ("default", "kids-education", "finance", "healthcare", "devtools")


def config_guards() -> list[str]:
    return list(yaml.safe_load((ROOT / "config.yaml").read_text())["guards"])


def load(name: str) -> CompiledPolicy:
    return load_policy(POLICIES / f"{name}.yaml", known_guards=config_guards())


def test_every_example_exists_and_nothing_else_is_untested() -> None:
    assert sorted(p.stem for p in POLICIES.glob("*.yaml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loads_with_the_configs_guards(name: str) -> None:
    policy = load(name)
    assert policy.name == name
    assert policy.description
    # Examples follow the config's default_guard so that they run anywhere (embedded guard).
    assert policy.guard is None
    assert policy.on_block.refusal


def test_policies_named_by_config_yaml_exist() -> None:
    routes = yaml.safe_load((ROOT / "config.yaml").read_text())["routes"]
    for route in routes:
        assert load_policy(ROOT / route["policy"]).source == str(ROOT / route["policy"])


def test_default_uses_the_builtin_taxonomy() -> None:
    p = load("default")
    assert p.custom_policy is None and p.custom_taxonomy is None
    assert p.categories == DEFAULT_CATEGORIES
    assert p.on_guard_error == "closed" and p.on_block.input == "error"


def test_kids_education_is_strict() -> None:
    p = load("kids-education")
    assert p.custom_policy is not None and "dating" in p.custom_policy
    assert "Allowed Behaviors:" in p.custom_policy and "history" in p.custom_policy
    assert "Profanity" in p.suppressed and "Dating advice" in p.categories
    assert p.custom_taxonomy is not None and "S25: Dating advice." in p.custom_taxonomy
    assert not p.input.parallel and not p.input.allow_remote_images
    assert p.on_block.input == "refusal" and p.on_guard_error == "closed"
    assert p.threshold < load("default").threshold
    assert p.output.holdback_chars < load("default").output.holdback_chars


def test_finance_adds_fraud_and_investment_advice_rules() -> None:
    p = load("finance")
    assert {"Investment advice", "Account takeover", "Fraud/Deception"} <= set(p.categories)
    assert p.custom_policy is not None
    assert "guaranteed" in p.custom_policy and "take over" in p.custom_policy
    assert p.custom_taxonomy is not None and "Investment advice." in p.custom_taxonomy
    assert p.on_guard_error == "closed"


def test_healthcare_is_strict_on_prescriptions_permissive_on_symptoms() -> None:
    p = load("healthcare")
    assert p.custom_policy is not None
    disallowed, allowed = p.custom_policy.split("Allowed Behaviors:")
    assert "prescribing medication" in disallowed and "dose" in disallowed
    assert "symptoms" in allowed and "general health information" in allowed
    assert "Personal medical prescription" in p.categories
    assert not p.audit.content  # health data stays out of audit records


def test_devtools_suppresses_violence_so_process_vocabulary_passes() -> None:
    p = load("devtools")
    assert "Violence" in p.suppressed and "Violence" not in p.categories
    assert p.custom_taxonomy is not None and "Violence" not in p.custom_taxonomy
    assert "Malware" in p.categories
    assert p.custom_policy is not None and "kill" in p.custom_policy
    assert p.mode == "binary" and p.audit.think == "sampled" and p.audit.think_rate == 0.05


def test_guardline_policy_lint_passes_on_the_examples(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert guardline(["policy", "lint", "--guards", ",".join(config_guards())]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(EXAMPLES)
    for name, line in zip(sorted(EXAMPLES), out, strict=True):
        assert line == f"OK  policies/{name}.yaml  {load(name).ref}"
