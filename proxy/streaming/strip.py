"""`output.reasoning: strip` where no output check runs (`output.enabled: false`).

The check modes strip reasoning themselves (holdback.py, monitor.py); this transform does only
that for a stream nobody checks: every event whose deltas carry reasoning is re-encoded without
it, every other byte passes unchanged and at once. The strip option means the client never
receives reasoning, whether or not the answer is checked.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import orjson

from proxy.moderation.message_text import strip_choices
from proxy.sse import SSEParser, encode_data
from proxy.streaming.chunks import parse_chunk


async def strip_reasoning_stream(upstream: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    parser = SSEParser()
    try:
        async for data in upstream:
            out = [_stripped(event.raw, event.data) for event in parser.feed(data)]
            if out:
                yield b"".join(out)
        # A trailing event cut off at EOF is passed as it came: the client discards it anyway
        # unless it is whole, and then it is stripped like the rest.
        tail = b"".join(_stripped(e.raw, e.data if e.complete else None) for e in parser.flush())
        if tail:
            yield tail
    finally:
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            await aclose()


def _stripped(raw: bytes, data: bytes | None) -> bytes:
    chunk = parse_chunk(data) if data is not None else None
    if chunk is not None and strip_choices(chunk, "delta"):
        return encode_data(orjson.dumps(chunk))
    return raw
