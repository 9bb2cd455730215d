"""Which rule applies to an endpoint the gateway does not serve itself (`routes[].endpoints`).

Everything under `{prefix}/v1/` that is not chat completions, models or moderations is relayed
to the route's upstream under one of three rules:

    check   the body's text input is judged like a chat prompt first (only where the gateway
            knows the body: CHECKABLE), then the request is relayed
    pass    relayed byte for byte without any check, marked `x-guardline-input: unchecked`
    deny    refused: 403 `endpoint_not_allowed`

A route's `endpoints` mapping is consulted first (the longest matching pattern wins); a path
it does not cover falls back to DEFAULT_RULES: `check` where the gateway can check, `deny`
everywhere else. Patterns are paths below the route's prefix (`/v1/audio/transcriptions`) or
end in `*` to match every path that starts with the text before it (`/v1/files*`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

EndpointRule = Literal["check", "pass", "deny"]

# Endpoints whose JSON body has a text input the guard can judge: path -> the field.
CHECKABLE: Final[Mapping[str, str]] = {
    "/v1/embeddings": "input",
    "/v1/images/generations": "prompt",
}

# What applies when a route's `endpoints` does not cover a path: safe by default.
DEFAULT_RULES: Final[Mapping[str, EndpointRule]] = {
    "/v1/embeddings": "check",
    "/v1/images/generations": "check",
    "*": "deny",
}


def pattern_matches(pattern: str, path: str) -> bool:
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


def _longest_match(rules: Mapping[str, EndpointRule], path: str) -> EndpointRule | None:
    best: str | None = None
    for pattern in rules:
        if pattern_matches(pattern, path) and (best is None or len(pattern) > len(best)):
            best = pattern
    return None if best is None else rules[best]


def rule_for(endpoints: Mapping[str, EndpointRule] | None, path: str) -> EndpointRule:
    """The rule for `path` (below the route's prefix): the route's own, else the default."""
    if endpoints:
        rule = _longest_match(endpoints, path)
        if rule is not None:
            return rule
    rule = _longest_match(DEFAULT_RULES, path)
    assert rule is not None  # "*" matches everything
    return rule


def pattern_error(pattern: str, rule: EndpointRule) -> str | None:
    """Why `pattern: rule` is not a valid `endpoints` entry, or None."""
    if pattern != "*" and not pattern.startswith("/v1/"):
        return f"endpoint pattern '{pattern}' must start with '/v1/' (or be '*')"
    if "*" in pattern[:-1]:
        return f"endpoint pattern '{pattern}': '*' is only allowed at the end"
    if rule == "check" and pattern not in CHECKABLE:
        known = ", ".join(CHECKABLE)
        return f"'check' needs an endpoint whose input the guard reads ({known}), not '{pattern}'"
    return None
