"""The moderation pipeline: a chat service that wraps `forward_chat` (docs/architecture.md,
"The request path").

    input check ─┬─ serial (default): check, then call the upstream
                 └─ parallel: call the upstream at the same time; an unsafe verdict cancels it
    upstream call
    output check ─┬─ complete body: prompt + response in one guard call
                  └─ stream: hold-back / buffer / monitor (proxy.streaming)

Every reply, block or error carries the x-guardline-* headers and Server-Timing. A policy
decision is never a 5xx; only a guard failure under `on_guard_error: closed` is (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import orjson

from guard_engine.engine import GuardEngine
from guard_engine.errors import GuardError
from guard_engine.image_fetch import ImageFetcher
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.policy.store import PolicyStore
from guard_engine.types import GuardRequest, Stage, Verdict
from proxy.apis.base import ApiAdapter
from proxy.apis.chat import CHAT
from proxy.background import BackgroundTasks
from proxy.chat_call import ChatCall
from proxy.errors import GatewayError, UpstreamError
from proxy.forward import forward_chat
from proxy.moderation.blocks import input_violation
from proxy.moderation.decide import StageResult, skipped
from proxy.moderation.headers import Decisions
from proxy.moderation.inputs import prepare_input
from proxy.moderation.observer import Check, Finished, ModerationObserver
from proxy.moderation.shadow import ShadowHook, ShadowRunner
from proxy.moderation.stream_decision import stream_result, unchecked_verdict
from proxy.streaming.holdback import moderate_stream
from proxy.streaming.outcome import StreamOutcome
from proxy.timing import Kind, RequestTiming
from proxy.upstreams.reply import UpstreamReply

if TYPE_CHECKING:
    from proxy.state import ChatService, GatewayState


class ModerationPipeline:
    def __init__(
        self,
        *,
        engine: GuardEngine,
        policies: PolicyStore,
        fetcher: ImageFetcher | None = None,
        observer: ModerationObserver,
        forward: ChatService = forward_chat,
        on_finished: Finished | None = None,
        on_shadow: ShadowHook | None = None,
        background: BackgroundTasks | None = None,
    ) -> None:
        self.engine = engine
        self.policies = policies
        self.fetcher = fetcher
        self._forward = forward
        # Around each guard check and the upstream call: spans, trace context, timing.
        self._observer = observer
        self._on_finished = on_finished
        # Work that outlives its request: shadow checks, monitor-mode settling. The gateway
        # passes its state's registry, which shutdown drains before the engine closes.
        self.background = background if background is not None else BackgroundTasks()
        self.shadows = ShadowRunner(engine, policies, self.background, on_shadow)

    async def __call__(self, state: GatewayState, call: ChatCall) -> UpstreamReply:
        timing = self._observer.timing(call)
        policy = self.policies.get(call.route.policy)
        decisions = Decisions(policy=policy)
        try:
            reply = await self._run(state, call, policy, decisions, timing)
        except GatewayError as exc:
            timing.finish()
            exc.headers.update(decisions.header_dict(timing.server_timing()))
            self._finished(call, decisions, timing, None)
            raise
        return reply

    async def _run(
        self,
        state: GatewayState,
        call: ChatCall,
        policy: CompiledPolicy,
        decisions: Decisions,
        timing: RequestTiming,
    ) -> UpstreamReply:
        api = _api(call)
        rename = api.param_namer(call.body)
        prepared = await prepare_input(call.body.messages, policy, self.fetcher, rename)
        decisions.unchecked = prepared.unchecked
        guard_request = prepared.request
        check_input = policy.input.enabled and not prepared.empty

        upstream_task: asyncio.Task[UpstreamReply] | None = None
        if check_input and policy.input.parallel:
            upstream_task = asyncio.ensure_future(self._call_upstream(state, call, timing))
        try:
            if check_input:
                parallel = upstream_task is not None
                decisions.input = await self._judge(
                    "input", guard_request, policy, timing, upstream_started=parallel
                )
                self.shadows.run(call, policy, guard_request, decisions.input)
            else:
                decisions.input = skipped("input")
            if prepared.unchecked and decisions.input.status == "safe":
                # Forwarded parts the guard never saw: never report the input as plainly safe.
                decisions.input = replace(decisions.input, status="degraded")
            if decisions.input.flagged:
                return await self._block_input(call, policy, decisions, timing, upstream_task)
            if upstream_task is not None:
                reply = await upstream_task
            else:
                reply = await self._call_upstream(state, call, timing)
        except BaseException:
            if upstream_task is not None:
                await _cancel(upstream_task)
            raise
        return await self._moderate_output(call, policy, decisions, timing, guard_request, reply)

    async def _call_upstream(
        self, state: GatewayState, call: ChatCall, timing: RequestTiming
    ) -> UpstreamReply:
        return await self._observer.upstream(self._forward, state, call, timing)

    async def _judge(
        self,
        stage: Stage,
        request: GuardRequest,
        policy: CompiledPolicy,
        timing: RequestTiming,
        *,
        window: bool = False,
        index: int | None = None,
        upstream_started: bool = False,
    ) -> StageResult:
        kind: Kind = "guard-input" if stage == "input" else "guard-output"
        check: Check = "output.window" if window else stage
        return await self._observer.check(
            check,
            self.engine,
            request,
            policy,
            timing,
            kind,
            index=index,
            upstream_started=upstream_started,
        )

    async def _block_input(
        self,
        call: ChatCall,
        policy: CompiledPolicy,
        decisions: Decisions,
        timing: RequestTiming,
        upstream_task: asyncio.Task[UpstreamReply] | None,
    ) -> UpstreamReply:
        if upstream_task is not None:
            await _cancel(upstream_task)
        decisions.output = skipped("output")
        assert decisions.input is not None
        if policy.on_block.input == "error":
            raise input_violation(policy, decisions.input.categories)
        timing.finish()
        headers = decisions.headers(timing.server_timing())
        self._finished(call, decisions, timing, None)
        api, refusal = _api(call), policy.on_block.refusal
        if call.body.stream:
            events = api.refusal_events(call.body, call.request_id, refusal)
            return UpstreamReply(
                status=200,
                headers=[(b"content-type", b"text/event-stream"), *headers],
                stream=_iterate(events),
            )
        body = api.refusal_body(call.body, call.request_id, refusal)
        return UpstreamReply(
            status=200, headers=[(b"content-type", b"application/json"), *headers], body=body
        )

    async def _moderate_output(
        self,
        call: ChatCall,
        policy: CompiledPolicy,
        decisions: Decisions,
        timing: RequestTiming,
        prompt: GuardRequest,
        reply: UpstreamReply,
    ) -> UpstreamReply:
        if reply.status >= 400 or not policy.output.enabled:
            decisions.output = skipped("output")
            if reply.status < 400 and policy.output.reasoning == "strip":
                _strip_unchecked(reply, _api(call))
            return self._done(call, decisions, timing, reply)
        if reply.stream is None:
            return await self._check_body(call, policy, decisions, timing, prompt, reply)
        outcome = StreamOutcome()
        decisions.output_label = policy.output.stream
        reply.headers.extend(decisions.headers(timing.server_timing()))
        upstream_stream = reply.stream
        self._observer.defer_stream_end(upstream_stream)  # ended with the stream's usage
        check = self._stream_check(policy, prompt, timing, decisions)
        moderated = moderate_stream(
            reply.stream,
            mode=policy.output.stream,
            holdback_chars=policy.output.holdback_chars,
            first_window_chars=policy.output.first_window_chars,
            check=check,
            refusal=policy.on_block.refusal,
            outcome=outcome,
            strip_reasoning=policy.output.reasoning == "strip",
            on_uncheckable=policy.input.on_uncheckable,
            new_text=_api(call).new_stream_text,
        )
        reply.stream = self._stream_finished(
            call, decisions, timing, outcome, moderated, upstream_stream
        )
        return reply

    async def _check_body(
        self,
        call: ChatCall,
        policy: CompiledPolicy,
        decisions: Decisions,
        timing: RequestTiming,
        prompt: GuardRequest,
        reply: UpstreamReply,
    ) -> UpstreamReply:
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            await reply.aclose()
            raise UpstreamError("The upstream answered with a body that is not JSON.") from None
        api = _api(call)
        if not isinstance(data, dict):
            data = {}
        elif policy.output.reasoning == "strip" and api.strip_reasoning(data):
            # Removed before the check, so the client receives exactly what the guard judged.
            reply.body = orjson.dumps(data)
        unreadable = api.uncheckable_output(data)
        if unreadable:
            # Output parts nobody can read as text: the policy's refuse/flag rule decides.
            if policy.input.on_uncheckable == "refuse":
                decisions.output = StageResult(
                    stage="output", status="degraded", degraded_reason="uncheckable_refused"
                )
                reply.body = api.redact(data, policy.on_block.refusal)
                return self._done(call, decisions, timing, reply)
            decisions.unchecked = (*decisions.unchecked, *unreadable)  # x-guardline-unchecked
        text = api.output_text(data)
        if not text:
            decisions.output = skipped("output")
            return self._done(call, decisions, timing, reply)
        request = replace(prompt, response=text)
        decisions.output = await self._judge("output", request, policy, timing)
        self.shadows.run(call, policy, request, decisions.output)
        if decisions.output.flagged:
            reply.body = api.redact(data, policy.on_block.refusal)
        elif unreadable and decisions.output.status == "safe":
            decisions.output = replace(
                decisions.output, status="degraded", degraded_reason="uncheckable_flagged"
            )
        return self._done(call, decisions, timing, reply)

    def _done(
        self, call: ChatCall, decisions: Decisions, timing: RequestTiming, reply: UpstreamReply
    ) -> UpstreamReply:
        timing.finish()
        reply.headers.extend(decisions.headers(timing.server_timing()))
        self._finished(call, decisions, timing, None)
        return reply

    def _stream_check(
        self,
        policy: CompiledPolicy,
        prompt: GuardRequest,
        timing: RequestTiming,
        decisions: Decisions,
    ) -> Callable[[str], Awaitable[Verdict]]:
        windows = itertools.count()

        async def check(text: str) -> Verdict:
            request = replace(prompt, response=text)
            decisions.stream_asked = request
            result = await self._judge(
                "output", request, policy, timing, window=True, index=next(windows)
            )
            verdict = result.verdict
            if verdict is None:  # on_guard_error: open
                verdict = unchecked_verdict(policy, result)
                result = replace(result, verdict=verdict)
            decisions.stream_checks.append(result)
            return verdict

        return check

    async def _stream_finished(
        self,
        call: ChatCall,
        decisions: Decisions,
        timing: RequestTiming,
        outcome: StreamOutcome,
        stream: AsyncIterator[bytes],
        upstream: AsyncIterator[bytes] | None = None,
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
            self._observer.stream_done(upstream, outcome)
            timing.finish()
            if outcome.background is None:
                self._stream_done(call, decisions, timing, outcome)
            else:
                # Monitor mode: the client's body ends now; the record waits for the checks.
                self.background.track(outcome.background)
                self.background.spawn(
                    self._settle(call, decisions, timing, outcome),
                    name=f"guardline-monitor-settle-{call.request_id}",
                )

    async def _settle(
        self, call: ChatCall, decisions: Decisions, timing: RequestTiming, outcome: StreamOutcome
    ) -> None:
        worker = outcome.background
        try:
            await outcome.settled()
        except asyncio.CancelledError:
            # Shutdown cut the checks short: the record says so rather than going unwritten.
            if worker is not None:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
            outcome.error = CancelledAtShutdown("the gateway shut down before the check ended")
            self._stream_done(call, decisions, timing, outcome)
            raise
        if worker is not None and worker.cancelled():  # the worker alone was cancelled
            outcome.error = CancelledAtShutdown("the gateway shut down before the check ended")
        self._stream_done(call, decisions, timing, outcome)

    def _stream_done(
        self, call: ChatCall, decisions: Decisions, timing: RequestTiming, outcome: StreamOutcome
    ) -> None:
        decisions.output = stream_result(outcome, decisions.stream_checks)
        asked = decisions.stream_asked
        if isinstance(outcome.error, CancelledAtShutdown) and decisions.output.request is None:
            # No check finished (the last was cut short): record what it was asked to judge.
            decisions.output = replace(decisions.output, request=asked)
        self._finished(call, decisions, timing, outcome)

    def _finished(
        self,
        call: ChatCall,
        decisions: Decisions,
        timing: RequestTiming,
        outcome: StreamOutcome | None,
    ) -> None:
        if self._on_finished is not None:
            self._on_finished(call, decisions, timing, outcome)

    def report(self, call: ChatCall, decisions: Decisions, timing: RequestTiming) -> None:
        """A decision made beside the pipeline (a passthrough endpoint's `check`): reported
        like the pipeline's own (audit record, metrics, the request log's summary)."""
        self._finished(call, decisions, timing, None)


class CancelledAtShutdown(GuardError):
    """A background guard check the gateway cancelled at its shutdown deadline."""

    reason = "cancelled_at_shutdown"


def _api(call: ChatCall) -> ApiAdapter:
    """The call's API adapter (proxy.apis); chat completions unless the handler set one."""
    return call.api if call.api is not None else CHAT


def _strip_unchecked(reply: UpstreamReply, api: ApiAdapter) -> None:
    """Removes reasoning from an answer no output check reads (`output.enabled: false`)."""
    if reply.stream is not None:
        reply.stream = api.strip_stream(reply.stream)
        return
    try:
        data = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return  # not an answer of this API: nothing of it is reasoning we could find
    if isinstance(data, dict) and api.strip_reasoning(data):
        reply.body = orjson.dumps(data)


async def _iterate(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def _cancel(task: asyncio.Task[UpstreamReply]) -> None:
    """Cancel an upstream call; if it already answered, close that answer's connection."""
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, GatewayError, GuardError, Exception):
        reply = await task
        await reply.aclose()
