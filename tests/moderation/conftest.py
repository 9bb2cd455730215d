"""End-to-end fixtures: the moderated gateway (real server) between the official openai client,
the OpenAI upstream double and the SGLang/Nemotron guard double, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from proxy.app import create_app
from proxy.config import load_config
from tests.conftest_servers import run_server
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.doubles.upstream import UpstreamDouble

# The guard double flags these words; the upstream double streams "word0 word1 ...", so a
# stream becomes unsafe when it reaches word12.
UNSAFE_WORDS = {"bomb": "Guns and Illegal Weapons", "kill": "Violence", "word12": "Threat"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[UpstreamDouble, str]]:
    double = UpstreamDouble()
    with run_server(double) as url:
        yield double, url + "/v1"


@pytest.fixture(scope="module")
def guard_server() -> Iterator[tuple[str, SGLangDouble]]:
    with start_sglang_double(unsafe_words=UNSAFE_WORDS) as (url, rec):
        yield url, rec


@pytest.fixture
def guard(guard_server: tuple[str, SGLangDouble]) -> SGLangDouble:
    rec = guard_server[1]
    rec.configure(
        unsafe_words=UNSAFE_WORDS,
        status=None,
        delay_ms=0,
        garbage=None,
        fail_first=[],
        context_tokens=None,
    )
    rec.clear()
    return rec


Policy = dict[str, Any]


class Gateway:
    """Writes policies and a config into a folder, starts the real gateway on it."""

    def __init__(self, tmp: Path, stack: ExitStack, upstream_url: str, guard_url: str) -> None:
        self.tmp = tmp
        self.stack = stack
        self.upstream_url = upstream_url
        self.guard_url = guard_url
        self.url = ""

    def policy(self, name: str, **fields: Any) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "description": f"{name} test", **fields}))
        return path

    def start(
        self,
        routes: list[dict[str, Any]] | None = None,
        *,
        tenants: dict[str, Any] | None = None,
        timeout_ms: int = 2000,
        guard_options: dict[str, Any] | None = None,
        **policy_fields: Any,
    ) -> str:
        if routes is None:
            self.policy("main", **policy_fields)
            routes = [{"name": "default", "upstream": "double", "policy": "main.yaml"}]
        config: dict[str, Any] = {
            "default_guard": "nemotron",
            "guards": {
                "nemotron": {
                    "type": "sglang",
                    "base_url": self.guard_url,
                    "timeout_ms": timeout_ms,
                    "breaker": {"failures": 3, "reset_s": 0.5},
                    **(guard_options or {}),
                },
                "local": {"type": "embedded"},
            },
            "upstreams": {"double": {"type": "openai", "base_url": self.upstream_url}},
            "routes": routes,
            "audit": {"enabled": False},
        }
        if tenants:
            config["auth"] = {"tenants": tenants}
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        app = create_app(load_config(path, env={}), moderation=True)
        self.url = self.stack.enter_context(run_server(app))
        return self.url

    def client(self, api_key: str = "sk-test", prefix: str = "") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}{prefix}/v1", api_key=api_key, max_retries=0)

    def async_client(self, api_key: str = "sk-test") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)


@pytest.fixture
def gateway(
    tmp_path: Path,
    upstream: tuple[UpstreamDouble, str],
    guard_server: tuple[str, SGLangDouble],
    guard: SGLangDouble,
) -> Iterator[Gateway]:
    with ExitStack() as stack:
        yield Gateway(tmp_path, stack, upstream[1], guard_server[0])


@pytest.fixture
def double(upstream: tuple[UpstreamDouble, str]) -> UpstreamDouble:
    return upstream[0]


def guard_texts(guard: SGLangDouble) -> list[str]:
    """The user texts the guard double was asked to judge, in order."""
    out = []
    for body in guard.requests:
        parts = body["messages"][-1]["content"]
        out.append("".join(p.get("text", "") for p in parts if p.get("type") == "text"))
    return out


StartGateway = Callable[..., str]
