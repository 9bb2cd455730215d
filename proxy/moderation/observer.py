"""What the moderation pipeline reports while it works, as a small interface it defines itself.

The pipeline does not import the observability package: whoever assembles the gateway
(`proxy.assembly`) gives it a `ModerationObserver`, today
`proxy.observability.moderation_spans.ModerationSpans`, which wraps each guard check and the
upstream call in a span, sends their trace context out and keeps the request's timing ledger
(the Server-Timing header). What a finished request reports (metrics, audit) goes through the
pipeline's `on_finished` hook (`Finished`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Literal, Protocol

from guard_engine.engine import GuardEngine
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest
from proxy.chat_call import ChatCall
from proxy.moderation.decide import StageResult
from proxy.moderation.headers import Decisions
from proxy.streaming.outcome import StreamOutcome
from proxy.timing import Kind, RequestTiming
from proxy.upstreams.reply import UpstreamReply

if TYPE_CHECKING:
    from proxy.state import ChatService, GatewayState

# Which guard check: the input, the output of a complete answer, one hold-back window.
Check = Literal["input", "output", "output.window"]

# Called once per request when its moderation is complete (a stream: when it ended).
Finished = Callable[[ChatCall, Decisions, RequestTiming, StreamOutcome | None], None]


class ModerationObserver(Protocol):
    """Around each guard check and the upstream call of one request."""

    def timing(self, call: ChatCall) -> RequestTiming:
        """The request's timing ledger, started when its first byte arrived."""
        ...

    async def check(
        self,
        check: Check,
        engine: GuardEngine,
        request: GuardRequest,
        policy: CompiledPolicy,
        timing: RequestTiming,
        kind: Kind,
        *,
        index: int | None = None,
        upstream_started: bool = False,
    ) -> StageResult:
        """Decide `request` (proxy.moderation.decide.judge), observed and timed as `kind`;
        `index` numbers hold-back windows."""
        ...

    async def upstream(
        self, forward: ChatService, state: GatewayState, call: ChatCall, timing: RequestTiming
    ) -> UpstreamReply:
        """Call `forward(state, call)`, observed and timed as upstream (a streamed body until
        its end)."""
        ...

    def defer_stream_end(self, stream: AsyncIterator[bytes] | None) -> None:
        """The pipeline moderates this upstream stream: its observation ends at
        `stream_done`, with what the moderation learned."""
        ...

    def stream_done(self, stream: AsyncIterator[bytes] | None, outcome: StreamOutcome) -> None:
        """The moderated stream ended."""
        ...
