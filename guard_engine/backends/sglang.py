"""The `sglang` backend: a guard model behind an OpenAI-compatible chat-completions server.

Transport only; the adapter renders the body and parses the answer. Works unchanged against
SGLang, vLLM and NIM (same `/v1/chat/completions` API).

One call = one deadline (`timeout_ms`) that covers waiting for a concurrency slot, every
attempt, backoff sleeps and reading the answer. Retries happen ONLY for connect errors, 429 and
503, and only when the wait (Retry-After or a small backoff) still fits before the deadline.
Outcomes: deadline -> GuardTimeout; connection failure, 5xx, 429 after retries, open circuit ->
GuardUnavailable; a 200 whose body is not a chat completion or whose content the adapter
cannot read -> GuardUnparseable (with `raw`). httpx exceptions are translated in exactly one
place, `translate_httpx_error`.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import orjson

from guard_engine.adapters.base import Adapter
from guard_engine.backends.base import BackendHealth, BackendResult
from guard_engine.breaker import CircuitBreaker
from guard_engine.errors import GuardError, GuardTimeout, GuardUnavailable, GuardUnparseable
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest, Mode

MAX_ATTEMPTS = 4
BACKOFF_BASE_S = 0.025
BACKOFF_MAX_S = 0.5
HEALTH_TIMEOUT_S = 5.0
RAW_LIMIT = 2000  # characters of an unreadable body kept for audit/debugging

_RETRY_STATUSES = frozenset({429, 503})
_TIMEOUT_PHASES = ("connect", "read", "write", "pool")  # httpx's `timeout` request extension


class _RequestRejected(GuardUnavailable):
    """A 4xx other than 408/429: this request was refused (e.g. longer than the context). The
    guard itself is up, so the circuit breaker does not count it."""


class GuardUnreachable(GuardUnavailable):
    """The request never reached the guard: the connection failed, or the circuit is open."""


def server_failed(exc: GuardError) -> bool:
    """The server could not answer this check (unreachable, circuit open, connection lost,
    5xx, 429) rather than refusing the request itself (another 4xx), answering in a form the
    adapter cannot read, or running out of time. Another replica of the guard may answer it:
    a check has no side effects, so asking twice is harmless."""
    return isinstance(exc, GuardUnavailable) and not isinstance(exc, _RequestRejected)


def normalize_base_url(base_url: str) -> str:
    """The server root: accepts "http://h:30000", "http://h:30000/" and "http://h:30000/v1"."""
    root = base_url.strip().rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


def translate_httpx_error(exc: httpx.HTTPError, *, guard: str) -> tuple[GuardError, bool]:
    """The one boundary where httpx exceptions become guard errors: (error, retryable)."""
    if isinstance(exc, httpx.TimeoutException):
        # httpx's own timeouts are set to the time left before the deadline.
        return GuardTimeout(f"guard call timed out ({type(exc).__name__})", guard=guard), False
    if isinstance(exc, httpx.ConnectError):
        return GuardUnreachable(f"cannot connect to guard: {exc}", guard=guard), True
    return GuardUnavailable(
        f"guard transport error: {type(exc).__name__}: {exc}", guard=guard
    ), False


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP-date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter, so that retries of many callers do not align."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def message_content(body: bytes, *, guard: str) -> str:
    """The assistant text of a chat.completion body, or GuardUnparseable.

    A server started with a reasoning parser returns the THINK trace in `reasoning_content`;
    it is folded back as `<think>...</think>` so the adapter sees the documented form.
    """
    try:
        data = orjson.loads(body)
        message = data["choices"][0]["message"]
        content = message["content"]
        reasoning = message.get("reasoning_content")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raw = body[:RAW_LIMIT].decode("utf-8", "replace")
        raise GuardUnparseable(
            "guard answer is not a chat completion", guard=guard, raw=raw
        ) from None
    if not isinstance(content, str):
        raw = body[:RAW_LIMIT].decode("utf-8", "replace")
        raise GuardUnparseable("guard answer has no text content", guard=guard, raw=raw)
    if isinstance(reasoning, str) and reasoning and "</think>" not in content:
        content = f"<think>{reasoning}</think>{content}"
    return content


class SGLangBackend:
    """A guard served over HTTP by SGLang, vLLM or NIM."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        model: str,
        adapter: Adapter,
        timeout_ms: int,
        max_concurrency: int,
        api_key: str | None = None,
        breaker: CircuitBreaker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_here: bool = True,
    ) -> None:
        """`retry_here=False`: a failed connection, 429 or 503 is raised at once instead of
        retried on this server, for a caller that has other replicas to try."""
        if timeout_ms <= 0 or max_concurrency <= 0:
            raise ValueError("timeout_ms and max_concurrency must be positive")
        self.name = name
        self.model = model
        self.adapter = adapter
        self.breaker = breaker
        self.root_url = normalize_base_url(base_url)
        self.timeout_ms = timeout_ms
        self._timeout_s = timeout_ms / 1000
        self._retry_here = retry_here
        # Parsed once: httpx parses a URL string on every request, which costs more than
        # everything else in building one.
        self._chat_url = httpx.URL(self.root_url + "/v1/chat/completions")
        self._health_url = httpx.URL(self.root_url + "/health")
        self._ready_url = httpx.URL(self.root_url + "/v1/health/ready")
        self._slots = asyncio.Semaphore(max_concurrency)
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        if transport is None:
            # httpx's own client and transport: environment proxies, pooling, TLS.
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self._timeout_s),
                limits=httpx.Limits(
                    # +1: a health probe still gets a connection while every slot is busy.
                    max_connections=max_concurrency + 1,
                    max_keepalive_connections=max_concurrency,
                ),
            )

    async def check(
        self,
        request: GuardRequest,
        policy: CompiledPolicy,
        *,
        mode: Mode,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> BackendResult:
        """`deadline` (event-loop time) ends the call earlier than `timeout_ms` would: a
        caller that retries elsewhere gives each attempt what is left of its own deadline, so
        that a timeout is still this server's timeout (counted by its breaker)."""
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            raise GuardUnreachable(
                f"circuit open for {self.root_url}: {breaker.describe()}", guard=self.name
            )
        try:
            body = self.adapter.build_body(request, policy, model=self.model, mode=mode)
            content = await self._call(orjson.dumps(body), headers, deadline)
        except (_RequestRejected, GuardUnparseable):
            if breaker is not None:
                breaker.record_success()  # the guard answered: it is up
            raise
        except (GuardTimeout, GuardUnavailable):
            if breaker is not None:
                breaker.record_failure()
            raise
        except BaseException:
            if breaker is not None:  # cancelled, or a bug: says nothing about the guard
                breaker.release()
            raise
        if breaker is not None:
            breaker.record_success()
        try:
            verdict = self.adapter.parse(content, has_response=request.response is not None)
        except GuardUnparseable as exc:
            raise GuardUnparseable(str(exc), guard=self.name, raw=content) from exc
        return BackendResult(verdict=verdict, raw=content)

    async def _call(
        self, body: bytes, headers: dict[str, str] | None, deadline: float | None
    ) -> str:
        """POST under the deadline: slot wait + attempts + backoff + reading."""
        loop = asyncio.get_running_loop()
        own = loop.time() + self._timeout_s
        deadline = own if deadline is None else min(deadline, own)
        try:
            async with asyncio.timeout_at(deadline), self._slots:
                return await self._attempts(body, headers, deadline)
        except TimeoutError:
            raise GuardTimeout(
                f"no guard answer within {self.timeout_ms} ms", guard=self.name
            ) from None

    async def _attempts(self, body: bytes, headers: dict[str, str] | None, deadline: float) -> str:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - loop.time(), 0.001)
            delay: float | None
            try:
                response = await self._send("POST", self._chat_url, remaining, body, headers)
            except httpx.HTTPError as exc:
                error, retryable = translate_httpx_error(exc, guard=self.name)
                if not retryable or not self._retry_here:
                    raise error from exc
                delay = backoff_s(attempt)
            else:
                if response.status_code == 200:
                    return message_content(response.content, guard=self.name)
                error = self._status_error(response)
                if response.status_code not in _RETRY_STATUSES or not self._retry_here:
                    raise error
                delay = retry_after_s(response.headers.get("retry-after"))
                if delay is None:
                    delay = backoff_s(attempt)
            if attempt >= MAX_ATTEMPTS or loop.time() + delay >= deadline:
                raise error  # waiting would end past the deadline: fail now, not at it
            await asyncio.sleep(delay)

    def _status_error(self, response: httpx.Response) -> GuardError:
        status = response.status_code
        snippet = response.text[:200].strip()
        message = f"guard answered HTTP {status}" + (f": {snippet}" if snippet else "")
        raw = response.text[:RAW_LIMIT]
        if status >= 500 or status in (408, 429):
            return GuardUnavailable(message, guard=self.name, raw=raw)
        return _RequestRejected(message, guard=self.name, raw=raw)

    async def health(self) -> BackendHealth:
        """GET /health (NIM: /v1/health/ready when /health is 404), plus the breaker state.

        Not ready while the breaker is open: calls would be rejected even if /health is fine.
        """
        breaker = self.breaker.describe() if self.breaker is not None else "none"
        timeout = min(self._timeout_s, HEALTH_TIMEOUT_S)
        try:
            response = await self._send("GET", self._health_url, timeout)
            if response.status_code == 404:
                response = await self._send("GET", self._ready_url, timeout)
        except httpx.HTTPError as exc:
            error, _ = translate_httpx_error(exc, guard=self.name)
            return BackendHealth(ok=False, detail=f"{error}; breaker {breaker}")
        ok = response.status_code == 200
        if self.breaker is not None and self.breaker.state == "open":
            ok = False
        return BackendHealth(ok=ok, detail=f"health HTTP {response.status_code}; breaker {breaker}")

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        timeout_s: float,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request, its answer read whole. A given transport is called directly, as the
        gateway's upstream calls do: httpx.AsyncClient's layer (cookie jar, redirects, auth
        flow, hooks) does nothing a guard call needs and costs about 0.1 ms of CPU per call
        (docs/benchmarks.md, "Where a guard call's time goes")."""
        if self._client is not None:
            return await self._client.request(
                method, url, content=body or None, headers=headers, timeout=timeout_s
            )
        assert self._transport is not None
        raw_headers = self._raw_headers
        if headers:
            raw_headers = raw_headers + [(k.encode(), v.encode()) for k, v in headers.items()]
        request = httpx.Request(
            method,
            url,
            content=body or None,
            headers=raw_headers,  # already bytes: httpx skips normalizing them
            extensions={"timeout": dict.fromkeys(_TIMEOUT_PHASES, timeout_s)},
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        elif self._transport is not None:
            await self._transport.aclose()
