"""Endpoint rules (proxy.endpoints): the route's patterns first, longest match; safe defaults."""

from __future__ import annotations

from proxy.endpoints import pattern_error, rule_for


def test_defaults_check_what_the_guard_reads_and_deny_the_rest() -> None:
    assert rule_for(None, "/v1/embeddings") == "check"
    assert rule_for(None, "/v1/images/generations") == "check"
    for path in ("/v1/audio/transcriptions", "/v1/files", "/v1/images/edits", "/v1/batches"):
        assert rule_for(None, path) == "deny"
        assert rule_for({}, path) == "deny"


def test_route_patterns_first_longest_match_wins() -> None:
    rules = {"/v1/files*": "pass", "/v1/files/*": "deny", "/v1/audio/*": "pass"}
    assert rule_for(rules, "/v1/files") == "pass"
    assert rule_for(rules, "/v1/files/file-1/content") == "deny"
    assert rule_for(rules, "/v1/audio/speech") == "pass"
    assert rule_for(rules, "/v1/embeddings") == "check"  # not covered: the default
    assert rule_for(rules, "/v1/batches") == "deny"
    everything = {"*": "pass", "/v1/images/*": "deny"}
    assert rule_for(everything, "/v1/embeddings") == "pass"  # the operator's choice
    assert rule_for(everything, "/v1/images/generations") == "deny"


def test_pattern_errors() -> None:
    assert pattern_error("/v1/embeddings", "check") is None
    assert pattern_error("*", "pass") is None
    assert pattern_error("/v1/files*", "deny") is None
    assert "must start with '/v1/'" in (pattern_error("files", "pass") or "")
    assert "only allowed at the end" in (pattern_error("/v1/*/content", "pass") or "")
    assert "'check' needs" in (pattern_error("/v1/audio/*", "check") or "")
    assert "'check' needs" in (pattern_error("*", "check") or "")
