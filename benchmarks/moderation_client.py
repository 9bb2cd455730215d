"""The moderation benchmark's client side: one timed chat request, and percentile helpers.

Requests are sequential on one keep-alive `httpx.Client` per target (direct upstream, gateway),
so a sample is the full client-observed latency of one request with a warm connection.
For streams the client records when the first content token arrived and when the text that
triggers the gateway's first hold-back check had arrived (`holdback_chars` of content, or the
end of the answer), which is the earliest moment a hold-back gateway could release anything.
"""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from time import perf_counter

import httpx
import orjson

MS = 1000.0


@dataclass(frozen=True)
class Sample:
    total_ms: float
    status: int
    headers: dict[str, str]
    first_token_ms: float | None = None  # streams: first non-empty content delta
    window_ms: float | None = None  # streams: when the first hold-back window was complete


def chat(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Sample:
    """POST a non-streaming chat completion; the sample ends when the body is read."""
    start = perf_counter()
    response = client.post(url, content=body, headers=headers)
    response.read()
    total = (perf_counter() - start) * MS
    if response.status_code == 200:
        choices = orjson.loads(response.content)["choices"]
        if not choices[0]["message"].get("content"):
            raise RuntimeError(f"empty answer from {url}")
    return Sample(total, response.status_code, dict(response.headers))


def chat_stream(
    client: httpx.Client, url: str, body: bytes, headers: dict[str, str], window_chars: int
) -> Sample:
    """POST a streaming chat completion and read it to `[DONE]`, timing the first token."""
    start = perf_counter()
    first: float | None = None
    window: float | None = None
    chars = 0
    done = False
    with client.stream("POST", url, content=body, headers=headers) as response:
        status, response_headers = response.status_code, dict(response.headers)
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            now = perf_counter()
            data = line[6:]
            if data == "[DONE]":
                done = True
                window = window or now
                continue
            choices = orjson.loads(data).get("choices") or []
            for choice in choices:
                text = (choice.get("delta") or {}).get("content") or ""
                if text and first is None:
                    first = now
                chars += len(text)
                if window is None and (chars >= window_chars or choice.get("finish_reason")):
                    window = now
    total = (perf_counter() - start) * MS
    if status == 200 and (first is None or not done):
        raise RuntimeError(f"stream from {url} ended without content or [DONE]")
    return Sample(
        total,
        status,
        response_headers,
        first_token_ms=None if first is None else (first - start) * MS,
        window_ms=None if window is None else (window - start) * MS,
    )


def guard_round_trip(url: str, prompt: str, requests: int, warmup: int) -> Series:
    """Bare sequential POSTs of a Nemotron input-check body to the guard: its latency as any
    client sees it (the double's fixed delay plus HTTP and its own handling)."""
    body = orjson.dumps(
        {
            "model": "nvidia/Nemotron-3.5-Content-Safety",
            "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
            "chat_template_kwargs": {"request_categories": "/categories"},
            "max_tokens": 64,
            "temperature": 0.0,
        }
    )
    series = Series()
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=30) as client:
        for i in range(warmup + requests):
            start = perf_counter()
            response = client.post(f"{url}/v1/chat/completions", content=body, headers=headers)
            response.read()
            if response.status_code != 200:
                raise RuntimeError(f"guard double answered {response.status_code}")
            if i >= warmup:
                series.add((perf_counter() - start) * MS)
    return series


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Series:
    """Latency samples of one metric, with p50/p90/p99."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def p50(self) -> float:
        return statistics.median(self.values)

    @property
    def p90(self) -> float:
        return pct(self.values, 0.90)

    @property
    def p99(self) -> float:
        return pct(self.values, 0.99)


def server_timing(header: str | None) -> dict[str, float]:
    """`Server-Timing: guard-input;dur=15.2, upstream;dur=100.4` -> {name: ms}."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
    return out
