"""GatewayMetrics: own registry, every family present, /metrics text parsed back."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from proxy.observability.metrics import GatewayMetrics


def _samples(metrics: GatewayMetrics) -> list[Sample]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    matches = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, (name, labels, [s for s in samples if s.name == name])
    return matches[0]


def test_every_metric_is_exposed_with_its_labels() -> None:
    m = GatewayMetrics()
    m.observe_request("kids", 200, 0.120)
    m.observe_request("kids", 200, 0.080)
    m.observe_request("kids", 400, 0.010)
    m.observe_guard("nemotron", "input", 0.012)
    m.observe_overhead(0.0004)
    m.observe_verdict("kids-education", "input", "unsafe", ["Violence", "Threat"])
    m.observe_verdict("kids-education", "output", "safe")
    m.observe_degraded("kids-education", "input", "timeout")
    m.set_breaker_state("nemotron", "open")
    m.observe_cache("nemotron", hit=True)
    m.observe_cache("nemotron", hit=False)
    m.observe_holdback_checks(3)
    m.audit_records_dropped(2)
    m.audit_records_written(5)
    m.observe_think("kids-education", "disagree")
    m.observe_think("kids-education", "agree")
    m.observe_policy_reload("error")

    s = _samples(m)
    assert _value(s, "guardline_requests_total", route="kids", status="200") == 2
    assert _value(s, "guardline_requests_total", route="kids", status="400") == 1
    assert _value(s, "guardline_request_seconds_count", route="kids") == 3
    assert _value(s, "guardline_request_seconds_sum", route="kids") == pytest.approx(0.21)
    assert _value(s, "guardline_guard_seconds_count", guard="nemotron", stage="input") == 1
    assert _value(s, "guardline_overhead_seconds_bucket", le="0.0005") == 1
    assert _value(s, "guardline_overhead_seconds_bucket", le="0.00025") == 0
    for category in ("Violence", "Threat"):
        assert (
            _value(
                s,
                "guardline_verdicts_total",
                policy="kids-education",
                stage="input",
                verdict="unsafe",
                category=category,
            )
            == 1
        )
    assert (
        _value(
            s,
            "guardline_verdicts_total",
            policy="kids-education",
            stage="output",
            verdict="safe",
            category="none",
        )
        == 1
    )
    assert (
        _value(
            s, "guardline_degraded_total", policy="kids-education", stage="input", reason="timeout"
        )
        == 1
    )
    assert _value(s, "guardline_breaker_state", guard="nemotron") == 2
    assert _value(s, "guardline_cache_hits_total", guard="nemotron") == 1
    assert _value(s, "guardline_cache_misses_total", guard="nemotron") == 1
    assert _value(s, "guardline_holdback_checks_count") == 1
    assert _value(s, "guardline_holdback_checks_bucket", le="4.0") == 1
    assert _value(s, "guardline_audit_dropped_total") == 2
    assert _value(s, "guardline_audit_written_total") == 5
    assert _value(s, "guardline_think_disagreements_total", policy="kids-education") == 1
    assert _value(s, "guardline_think_checks_total", policy="kids-education", result="agree") == 1
    assert _value(s, "guardline_policy_reload_total", result="error") == 1


def test_breaker_state_transitions() -> None:
    m = GatewayMetrics()
    for state, value in (("closed", 0), ("open", 2), ("half-open", 1), ("closed", 0)):
        m.set_breaker_state("g", state)  # type: ignore[arg-type]
        assert _value(_samples(m), "guardline_breaker_state", guard="g") == value


def test_two_instances_do_not_share_state_nor_touch_the_default_registry() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.observe_request("r", 200, 0.1)
    assert _value(_samples(a), "guardline_requests_total", route="r", status="200") == 1
    assert not [x for x in _samples(b) if x.name == "guardline_requests_total"]
    labels = {"route": "r", "status": "200"}
    assert REGISTRY.get_sample_value("guardline_requests_total", labels) is None
