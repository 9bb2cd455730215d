"""Work that belongs to a request but need not delay its response: span attributes and ends,
metrics, audit records. It is queued in the request's ASGI scope state and run by the request
log middleware once the response has been sent (before the SERVER span ends), so the client
never waits for it and its order is fixed (no race with the span or the log line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

STATE_AFTER_RESPONSE: Final = "after_response"  # scope["state"] key: the queued work
STATE_RESPONDED: Final = "responded"  # set once that point has passed: later work runs at once

log = logging.getLogger("guardline.observability")


def after_response(state: dict[str, Any] | None, work: Callable[[], None]) -> None:
    """Run `work` once the response has been sent; at once when no middleware will (no state)
    or the response is already out (monitor-mode streams settle after it)."""
    if state is None or state.get(STATE_RESPONDED):
        work()
        return
    state.setdefault(STATE_AFTER_RESPONSE, []).append(work)


def run_after_response(state: dict[str, Any]) -> None:
    """The response is out: run the queued work in order (a failure is logged, never raised)."""
    state[STATE_RESPONDED] = True
    for work in state.pop(STATE_AFTER_RESPONSE, ()):
        try:
            work()
        except Exception:
            log.exception("after-response work failed")
