"""How many guard calls a request has made: a counter per request in a context variable.

The limits layer sets a fresh `RequestChecks` for each request whose tenant has a guard-check
budget; the counting engine (`proxy.counted_engine`) adds one for every guard call that was
not a verdict-cache hit. Work the request starts (the stream's checks, shadow checks) runs in
a copy of its context and so counts into the same object.
"""

from __future__ import annotations

from contextvars import ContextVar


class RequestChecks:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


current_checks: ContextVar[RequestChecks | None] = ContextVar("guard_checks", default=None)


def count_check() -> None:
    checks = current_checks.get()
    if checks is not None:
        checks.count += 1
