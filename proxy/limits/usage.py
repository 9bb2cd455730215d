"""Tokens used by one reply, from the upstream's `usage` (a body, or a stream's usage chunk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.sse import SSEParser


def _total(usage: Any) -> int:
    if not isinstance(usage, dict):
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int) and total >= 0:
        return total
    parts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    return sum(p for p in parts if isinstance(p, int) and p > 0)


def body_tokens(body: bytes) -> int:
    """`usage.total_tokens` of a chat completion body; 0 when it has none."""
    if b'"usage"' not in body:
        return 0
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    return _total(data.get("usage")) if isinstance(data, dict) else 0


class StreamUsage:
    """Watches a stream on its way to the client (bytes unchanged) for the usage chunk that
    `stream_options.include_usage` makes the upstream send last."""

    __slots__ = ("_parser", "tokens")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.tokens = 0

    async def watch(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                for event in self._parser.feed(chunk):
                    data = event.data
                    if data and b'"usage"' in data and not event.is_done:
                        self._read(data)
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _read(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict):
            tokens = _total(event.get("usage"))
            if tokens:
                self.tokens = tokens
