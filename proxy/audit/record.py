"""One audit record: what was decided about one checked text, by which guard, under which policy.

Records are immutable; the store updates the THINK fields in place later. The checked text is
kept only as a SHA-256 unless the policy asks for the content (`audit.content: true`).
"""

from __future__ import annotations

import hashlib
import os
import time as _time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from guard_engine.types import GuardRequest, Verdict


def new_record_id(now: float | None = None) -> str:
    """20 hex characters: 12 of milliseconds since the epoch (so ids sort by time), 8 random."""
    millis = int((now if now is not None else _time.time()) * 1000)
    return f"{millis:012x}{os.urandom(4).hex()}"


def content_hash(request: GuardRequest) -> str:
    """SHA-256 of what the guard judged: prompt, NUL + response (output stage), NUL + each
    image's own sha256. Equal hashes mean the same content was checked."""
    digest = hashlib.sha256(request.prompt.encode("utf-8", "surrogatepass"))
    if request.response is not None:
        digest.update(b"\x00")
        digest.update(request.response.encode("utf-8", "surrogatepass"))
    for image in request.images:
        digest.update(b"\x00")
        digest.update(image.sha256.encode("ascii"))
    return digest.hexdigest()


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def iso_time(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: float  # seconds since the epoch (UTC)
    request_id: str
    trace_id: str | None
    tenant: str | None
    route: str
    policy: str  # name@hash8
    stage: str  # input | output
    verdict: str  # safe | unsafe | skipped (not checked: guard down under on_guard_error: open)
    categories: tuple[str, ...]
    score: float | None
    guard: str
    guard_latency_ms: float
    degraded: bool
    content_hash: str
    content: str | None = None  # the checked text, only when the policy's audit.content is on
    think: str | None = None  # the THINK re-check's reasoning trace, attached later
    think_verdict: str | None = None  # safe | unsafe
    disagreement: bool = False  # THINK verdict differs from `verdict`
    id: str = field(default_factory=new_record_id)

    @classmethod
    def from_verdict(
        cls,
        verdict: Verdict,
        request: GuardRequest,
        *,
        request_id: str,
        route: str,
        tenant: str | None = None,
        trace_id: str | None = None,
        store_content: bool = False,
        now: float | None = None,
    ) -> AuditRecord:
        """The record of one engine decision. `trace_id` defaults to the current span's.

        With `store_content`, the content is the prompt (input stage) or the response (output).
        """
        when = _time.time() if now is None else now
        content: str | None = None
        if store_content:
            content = request.prompt if request.response is None else request.response
        return cls(
            time=when,
            request_id=request_id,
            trace_id=trace_id if trace_id is not None else current_trace_id(),
            tenant=tenant,
            route=route,
            policy=verdict.policy,
            stage=verdict.stage,
            verdict=verdict.label,
            categories=verdict.categories,
            score=verdict.score,
            guard=verdict.guard,
            guard_latency_ms=verdict.latency_ms,
            degraded=verdict.degraded,
            content_hash=content_hash(request),
            content=content,
            # A decision made in THINK mode already carries its reasoning.
            think=verdict.think,
            think_verdict=verdict.label if verdict.think is not None else None,
            id=new_record_id(when),
        )

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form (export, `show`): `time` as ISO 8601 UTC, categories as a list."""
        data = asdict(self)
        data["time"] = iso_time(self.time)
        data["categories"] = list(self.categories)
        return {"id": data.pop("id"), **data}
