"""Shadow policies: judge the same content under a candidate policy, in monitor mode.

`shadow: other.yaml` in a policy makes every enforced decision also be taken, in the
background, under the other policy; where the two disagree it is counted (readiness detail,
metrics via the hook) so a policy change can be tried on real traffic before it enforces.
A shadow never blocks, never delays the request, and its guard failures are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from guard_engine.engine import GuardEngine
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.policy.store import PolicyStore
from guard_engine.types import GuardRequest
from proxy.background import BackgroundTasks
from proxy.chat_call import ChatCall
from proxy.errors import GatewayError
from proxy.moderation.decide import StageResult, judge

# Called for every shadow decision: (call, enforced policy, shadow policy, enforced, shadow).
ShadowHook = Callable[[ChatCall, CompiledPolicy, CompiledPolicy, StageResult, StageResult], None]


class ShadowRunner:
    def __init__(
        self,
        engine: GuardEngine,
        policies: PolicyStore,
        background: BackgroundTasks,
        on_shadow: ShadowHook | None = None,
    ) -> None:
        self._engine = engine
        self._policies = policies
        self._background = background
        self._on_shadow = on_shadow
        # (policy ref, shadow ref, stage) -> [decisions compared, disagreements]
        self.counts: dict[tuple[str, str, str], list[int]] = {}

    def run(
        self, call: ChatCall, policy: CompiledPolicy, request: GuardRequest, enforced: StageResult
    ) -> None:
        """Start the shadow decision for `enforced`, if the policy has a shadow."""
        if policy.shadow is None:
            return
        try:
            shadow = self._policies.get(policy.shadow)
        except KeyError:
            return
        self._background.spawn(
            self._compare(call, policy, shadow, request, enforced),
            name=f"guardline-shadow-{call.request_id}-{enforced.stage}",
        )

    async def _compare(
        self,
        call: ChatCall,
        policy: CompiledPolicy,
        shadow: CompiledPolicy,
        request: GuardRequest,
        enforced: StageResult,
    ) -> None:
        try:
            result = await judge(self._engine, request, replace(shadow, on_guard_error="open"))
        except GatewayError:
            return
        counts = self.counts.setdefault((policy.ref, shadow.ref, enforced.stage), [0, 0])
        counts[0] += 1
        if result.verdict is not None and result.flagged != enforced.flagged:
            counts[1] += 1
        if self._on_shadow is not None:
            self._on_shadow(call, policy, shadow, enforced, result)
