"""The limits layer: a chat service wrapping the one it is given (normally the moderation
pipeline), so a refused request costs no guard check and no upstream call.

Per request: one `acquire` (one Redis round trip when Redis is configured) before anything
else; the `x-ratelimit-*` headers on the answer, success or error; when the response has
been sent, one `release` in the background (tokens from `usage`, end of the in-flight lease).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.chat_call import ChatCall
from proxy.config_schema import GatewayConfig, LimitsConfig
from proxy.errors import GatewayError, RateLimited
from proxy.limits.checks import RequestChecks, current_checks
from proxy.limits.spec import LimitTable, ScopeLimits
from proxy.limits.store import Decision, LimitStore, LocalStore, RedisStore, Scope
from proxy.limits.usage import StreamUsage, body_tokens
from proxy.state import ChatService
from proxy.upstreams.reply import RawHeaders, UpstreamReply

if TYPE_CHECKING:
    from proxy.state import GatewayState

log = logging.getLogger("guardline.limits")

DEGRADED_HEADER = (b"x-guardline-limits", b"degraded")
# After a Redis failure, calls skip Redis this long (no timeout paid per request meanwhile).
DOWN_BACKOFF_S = 0.5


class _MarkedDown(Exception):
    """Redis failed less than DOWN_BACKOFF_S ago: not asked again yet."""


class LimitsUnavailable(GatewayError):
    """Redis is unreachable and `limits.on_redis_error` is `closed`."""

    status = 503
    type = "server_error"
    code = "rate_limits_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "Rate limits cannot be checked right now; please retry.",
            headers={"retry-after": "1"},
        )


def format_reset(ms: int) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: 20ms, 6s, 1.5s, 1m0s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if ms < 60_000:
        seconds = ms / 1000
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    total_s = ms // 1000
    hours, rest = divmod(total_s, 3600)
    minutes, seconds_i = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{seconds_i}s"


def _tightest(
    scopes: Sequence[ScopeLimits], decisions: Sequence[Decision], kind: str
) -> tuple[int, int, int] | None:
    """(limit, remaining, reset ms) of the scope with the least left of `kind`, if any has it."""
    best: tuple[int, int, int] | None = None
    for scope, d in zip(scopes, decisions, strict=True):
        if scope.kind == "guard":
            continue
        if kind == "requests":
            limit, used, reset = scope.limits.requests, d.requests_used, d.requests_reset_ms
        else:
            limit, used, reset = scope.limits.tokens, d.tokens_used, d.tokens_reset_ms
        if not limit:
            continue
        entry = (limit, max(limit - used, 0), reset)
        if best is None or entry[1] < best[1]:
            best = entry
    return best


def ratelimit_headers(scopes: Sequence[ScopeLimits], decisions: Sequence[Decision]) -> RawHeaders:
    """OpenAI's x-ratelimit-* for the requests and tokens limits (the tightest scope's)."""
    out: RawHeaders = []
    for kind in ("requests", "tokens"):
        tight = _tightest(scopes, decisions, kind)
        if tight is not None:
            limit, remaining, reset = tight
            out += [
                (b"x-ratelimit-limit-" + kind.encode(), str(limit).encode()),
                (b"x-ratelimit-remaining-" + kind.encode(), str(remaining).encode()),
                (b"x-ratelimit-reset-" + kind.encode(), format_reset(reset).encode()),
            ]
    return out


def rate_limited(scopes: Sequence[ScopeLimits], decisions: Sequence[Decision]) -> RateLimited:
    scope, d = next((s, d) for s, d in zip(scopes, decisions, strict=True) if d.denied)
    limits, who, wait = scope.limits, scope.label, format_reset(d.wait_ms)
    if scope.kind == "guard":
        message = (
            f"Rate limit reached for {who} on guard checks per min: Limit {limits.tokens}, "
            f"Used {d.tokens_used}. Please try again in {wait}."
        )
    elif d.denied == "requests":
        message = (
            f"Rate limit reached for {who} on requests per min (RPM): Limit "
            f"{limits.requests}, Used {d.requests_used}, Requested 1. "
            f"Please try again in {wait}."
        )
    elif d.denied == "tokens":
        message = (
            f"Rate limit reached for {who} on tokens per min (TPM): Limit "
            f"{limits.tokens}, Used {d.tokens_used}. Please try again in {wait}."
        )
    else:
        message = (
            f"Too many concurrent requests for {who}: Limit {limits.concurrent}, "
            f"In flight {d.in_flight}. Please try again in {wait}."
        )
    headers = {k.decode(): v.decode() for k, v in ratelimit_headers(scopes, decisions)}
    headers["retry-after"] = str(max(1, math.ceil(d.wait_ms / 1000)))
    headers["retry-after-ms"] = str(d.wait_ms)
    exc = RateLimited(message, headers=headers)
    # OpenAI's 429 `type` (`requests` or `tokens`); the guard budget is the gateway's own.
    exc.type = denial(scope, d)
    return exc


def denial(scope: ScopeLimits, d: Decision) -> str:
    if scope.kind == "guard":
        return "guard_checks"
    return "tokens" if d.denied == "tokens" else "requests"


@dataclass(slots=True)
class Grant:
    """An admitted request: the headers to send, and what `release` needs afterwards."""

    scopes: list[Scope]
    guard: list[bool]  # per scope: the guard-check budget (counts checks, not tokens)
    member: str
    headers: RawHeaders
    counted: bool  # False when degraded: nothing to release

    @property
    def releases(self) -> bool:
        return self.counted and any(lim.concurrent or lim.tokens for _, lim in self.scopes)


class Limiter:
    """Limits per tenant (and route) over one store, with the `on_redis_error` policy."""

    def __init__(self, config: LimitsConfig, store: LimitStore, *, shared: bool) -> None:
        self.table = LimitTable(config)
        self.store = store
        self.shared = shared  # Redis: store errors are possible and handled
        self.fail_closed = config.on_redis_error == "closed"
        self.counts: Counter[str] = Counter()  # admitted, rejected_*, degraded, unavailable
        # Told each outcome as it is counted (proxy/limits/metrics.py: a Prometheus counter,
        # which, unlike `counts`, adds up across worker processes).
        self.on_outcome: Callable[[str], None] | None = None
        self._down_until = 0.0
        self.open = 0  # requests admitted by this process and not released yet

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _store_failed(self, exc: BaseException) -> None:
        if self._down_until < time.monotonic():
            log.warning("rate-limit store unreachable: %r", exc)
        self._down_until = time.monotonic() + DOWN_BACKOFF_S

    async def acquire(self, scopes: Sequence[ScopeLimits], member: str) -> Grant:
        pairs: list[Scope] = [(scope.key, scope.limits) for scope in scopes]
        guard = [scope.kind == "guard" for scope in scopes]
        try:
            if self.shared and time.monotonic() < self._down_until:
                raise _MarkedDown
            decisions = await self.store.acquire(pairs, member)
        except Exception as exc:
            if not self.shared:
                raise
            if not isinstance(exc, _MarkedDown):
                self._store_failed(exc)
            if self.fail_closed:
                self._count("unavailable")
                raise LimitsUnavailable() from None
            self._count("degraded")
            return Grant(pairs, guard, member, [DEGRADED_HEADER], counted=False)
        for scope, d in zip(scopes, decisions, strict=True):
            if d.denied:
                self._count(f"rejected_{denial(scope, d)}")
                raise rate_limited(scopes, decisions)
        self._count("admitted")
        self.open += 1
        return Grant(pairs, guard, member, ratelimit_headers(scopes, decisions), counted=True)

    def release(self, grant: Grant, tokens: int, checks: int = 0) -> None:
        if grant.counted:
            self.open -= 1
        if grant.releases:
            amounts = [checks if g else tokens for g in grant.guard]
            self.store.release(grant.scopes, grant.member, amounts)


def _set_headers(headers: RawHeaders, ours: RawHeaders) -> None:
    """Our x-ratelimit-* replace the upstream's of the same name (the tenant sees its own)."""
    names = {name for name, _ in ours}
    headers[:] = [(k, v) for k, v in headers if k not in names]
    headers.extend(ours)


class LimitedChatService:
    def __init__(self, inner: ChatService, limiter: Limiter) -> None:
        self.inner = inner
        self.limiter = limiter

    async def __call__(self, state: GatewayState, call: ChatCall) -> UpstreamReply:
        scopes = self.limiter.table.get(call.tenant, call.route.name)
        if not scopes:
            return await self.inner(state, call)
        grant = await self.limiter.acquire(scopes, call.request_id)
        checks: RequestChecks | None = None
        if any(grant.guard):
            # Not reset afterwards: the stream's checks run later in this same task.
            checks = RequestChecks()
            current_checks.set(checks)
        try:
            reply = await self.inner(state, call)
        except GatewayError as exc:
            exc.headers.update({k.decode(): v.decode() for k, v in grant.headers})
            self.limiter.release(grant, 0, checks.count if checks else 0)
            raise
        except BaseException:
            self.limiter.release(grant, 0, checks.count if checks else 0)
            raise
        _set_headers(reply.headers, grant.headers)
        usage: StreamUsage | None = None
        tokens = 0
        if any(s.limits.tokens and s.kind != "guard" for s in scopes) and reply.status < 400:
            if reply.stream is not None:
                usage = StreamUsage()
                reply.stream = usage.watch(reply.stream)
            else:
                tokens = body_tokens(reply.body)
        inner_closer = reply.closer

        async def closer() -> None:
            try:
                if inner_closer is not None:
                    await inner_closer()
            finally:
                self.limiter.release(
                    grant,
                    usage.tokens if usage is not None else tokens,
                    checks.count if checks is not None else 0,
                )

        reply.closer = closer
        return reply


def build_limiter(config: LimitsConfig) -> Limiter | None:
    """None when no tenant has any limit."""
    table = LimitTable(config)
    if table.empty:
        return None
    lease_ms = config.concurrency_lease_s * 1000
    if config.redis_url:
        store: LimitStore = RedisStore(
            config.redis_url,
            prefix=config.key_prefix,
            timeout_s=config.redis_timeout_ms / 1000,
            lease_ms=lease_ms,
        )
        return Limiter(config, store, shared=True)
    return Limiter(config, LocalStore(lease_ms), shared=False)


def install_limits(state: GatewayState, config: GatewayConfig) -> Limiter | None:
    """Wrap `state.chat_service` (call after moderation is installed) when limits are set."""
    limiter = build_limiter(config.limits)
    if limiter is None:
        return None
    state.chat_service = LimitedChatService(state.chat_service, limiter)
    state.closers.append(limiter.store.aclose)
    return limiter
