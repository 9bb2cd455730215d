"""What a moderated stream did, filled in while it runs and read by the pipeline afterwards."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from guard_engine.errors import GuardError
from guard_engine.types import Verdict


@dataclass
class StreamOutcome:
    """Read it after the stream ends; in monitor mode `await settled()` first (audit is complete
    only when the background checks have finished)."""

    blocked: bool = False
    verdicts: list[Verdict] = field(default_factory=list)  # in the order the checks ran
    checks: int = 0
    guard_ms: float = 0.0  # summed wall time of the checks
    error: GuardError | None = None
    released_chars: int = 0  # text characters sent to the client
    usage: dict[str, Any] | None = None
    model: str | None = None
    completed: bool = False  # the upstream sent [DONE]
    upstream_error: str | None = None  # why the upstream stream ended without [DONE]
    # Events the gateway could not parse (data that is not a JSON object): nobody checked them.
    uncheckable: int = 0
    # ...and the stream was ended because of one (on_uncheckable: refuse), not released.
    refused_uncheckable: bool = False
    background: asyncio.Task[None] | None = None  # monitor mode: checks still running

    @property
    def flagged(self) -> bool:
        """Any check flagged the response (in monitor mode: what would have been blocked)."""
        return any(v.flagged for v in self.verdicts)

    async def settled(self) -> None:
        """Waits for monitor-mode background checks; returns at once in the other modes."""
        if self.background is not None:
            await asyncio.gather(self.background, return_exceptions=True)
