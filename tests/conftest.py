"""Shared test set-up. litellm must never reach the network at import."""

import os
from collections.abc import Callable, Mapping

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def _no_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenTelemetry SDK reads OTEL_* from the process environment: tests start without
    any (a test that needs one sets it with monkeypatch), whatever the shell exported."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, str]], None]:
    """Sets OTEL_* variables for one test (the SDK and its exporters read os.environ)."""

    def set_variables(variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_variables
