"""Property-based conformance: schemathesis generates requests from OpenAI's own OpenAPI spec
(a trimmed, vendored copy: tests/openapi/openai-trimmed.json, MIT, see LICENSE) and sends them
to the real moderated gateway (uvicorn) in front of the OpenAI upstream double and the
Nemotron guard double. No answer may be a 5xx, and every answer must conform to the spec
(status, content type, body schema) or be the gateway's documented error envelope.

Examples per operation are bounded (and derandomized, so a CI failure reproduces) to keep the
run well under a minute on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import openapi
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from proxy.app import create_app
from proxy.config import load_config
from tests.conftest_servers import run_server
from tests.doubles.sglang_server import start_sglang_double
from tests.doubles.upstream import UpstreamDouble

SPEC = Path(__file__).with_name("openai-trimmed.json")
SCHEMA = openapi.from_path(SPEC)
EXAMPLES = 30
# OpenAI's spec documents only the success status of these operations, so a refusal (a 400
# for an image the guard cannot decode, content the policy refuses) is "undocumented" to it:
# the status check is left out, and 4xx answers are checked against the error envelope below.
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
ENVELOPE_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    with ExitStack() as stack:
        upstream = stack.enter_context(run_server(UpstreamDouble()))
        guard_url, _ = stack.enter_context(start_sglang_double(unsafe_words={"bomb": "Violence"}))
        (tmp / "main.yaml").write_text(
            yaml.safe_dump({"name": "main", "description": "schemathesis run"})
        )
        config: dict[str, Any] = {
            "default_guard": "nemotron",
            "guards": {"nemotron": {"type": "sglang", "base_url": guard_url}},
            "upstreams": {"double": {"type": "openai", "base_url": upstream + "/v1"}},
            "routes": [{"name": "main", "upstream": "double", "policy": "main.yaml"}],
            "audit": {"enabled": False},
        }
        (tmp / "config.yaml").write_text(yaml.safe_dump(config))
        app = create_app(load_config(tmp / "config.yaml", env={}), moderation=True)
        yield stack.enter_context(run_server(app)) + "/v1"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", ["/chat/completions", "/moderations"])
def test_gateway_answers_conform_to_openais_spec(
    gateway_url: str, path: str, mode: GenerationMode
) -> None:
    """Valid requests (positive) and requests that break the spec (negative): never a 5xx;
    a 4xx is an OpenAI error envelope; anything else conforms to the response schema."""
    operation = SCHEMA[path]["POST"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=gateway_url, headers={"authorization": "Bearer sk-test"})
        if 400 <= response.status_code < 500:
            error = response.json()["error"]
            assert set(error) == ENVELOPE_KEYS, response.text
            assert isinstance(error["message"], str) and isinstance(error["type"], str)
            return
        case.validate_response(response, checks=CHECKS)

    run()
