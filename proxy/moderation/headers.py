"""The x-guardline-* response headers: which policy decided what, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest
from proxy.moderation.decide import StageResult
from proxy.upstreams.reply import RawHeaders


@dataclass(slots=True)
class Decisions:
    """What moderation decided for one request, as it goes along."""

    policy: CompiledPolicy
    input: StageResult | None = None
    output: StageResult | None = None
    output_label: str | None = None  # overrides output status in headers (e.g. "holdback")
    unchecked: tuple[str, ...] = ()
    # A stream's window decisions in the order they finished (with what each judged), so that
    # the final output decision can be audited with its content.
    stream_checks: list[StageResult] = field(default_factory=list)
    # The last window sent to the guard: the record's content when no check finished (a
    # monitor-mode check cancelled at shutdown).
    stream_asked: GuardRequest | None = None

    def headers(self, server_timing: str | None = None) -> RawHeaders:
        out: RawHeaders = [(b"x-guardline-policy", self.policy.ref.encode())]
        out.append(
            (b"x-guardline-input", (self.input.status if self.input else "skipped").encode())
        )
        output = self.output_label or (self.output.status if self.output else "skipped")
        out.append((b"x-guardline-output", output.encode()))
        categories = [
            c for stage in (self.input, self.output) if stage is not None for c in stage.categories
        ]
        if categories:
            out.append((b"x-guardline-categories", ", ".join(dict.fromkeys(categories)).encode()))
        reasons = [
            f"{s.stage}:{s.degraded_reason}"
            for s in (self.input, self.output)
            if s is not None and s.degraded_reason
        ]
        if reasons:
            out.append((b"x-guardline-degraded", ", ".join(reasons).encode()))
        # Who answered each stage ("input:cascade/local, output:nemotron"), so a cascade's
        # local share is visible per response.
        guards = [
            f"{s.stage}:{s.verdict.guard}"
            for s in (self.input, self.output)
            if s is not None and s.verdict is not None
        ]
        if guards:
            out.append((b"x-guardline-guard", ", ".join(guards).encode()))
        if self.unchecked:
            out.append((b"x-guardline-unchecked", ", ".join(self.unchecked).encode()))
        if server_timing:
            out.append((b"server-timing", server_timing.encode()))
        return out

    def header_dict(self, server_timing: str | None = None) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.headers(server_timing)}
