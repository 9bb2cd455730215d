"""Streaming output moderation: the SSE transform between the upstream and the client.

`moderate_stream(...)` returns the bytes to send; `StreamOutcome` reports what happened.
Modes: `holdback` and `buffer` (holdback.py), `monitor` (monitor.py).
"""

from proxy.streaming.holdback import StreamCheck, StreamMode, moderate_stream
from proxy.streaming.outcome import StreamOutcome

__all__ = ["StreamCheck", "StreamMode", "StreamOutcome", "moderate_stream"]
