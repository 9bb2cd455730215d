"""Error events inside an upstream SSE stream lose the operator's secrets; nothing else changes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.upstream_errors import RedactedErrorEvents, SecretRedactor, sanitize_error_reply
from proxy.upstreams.reply import UpstreamReply

KEY = "sk-operator-Secret/1"
CONTENT = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
ERROR = b'data: {"error":{"message":"bad key Bearer sk-operator-Secret/1"}}\n\n'
REDACTED = b'data: {"error":{"message":"bad key Bearer [redacted]"}}\n\n'


class UpstreamBroke(Exception):
    pass


async def _chunks(*chunks: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail:
        raise UpstreamBroke


async def _read(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


async def test_content_passes_byte_for_byte_and_error_events_are_redacted() -> None:
    stream = RedactedErrorEvents(
        _chunks(CONTENT, ERROR, b"data: [DONE]\n\n"), SecretRedactor([KEY])
    )
    assert await _read(stream) == [CONTENT, REDACTED, b"data: [DONE]\n\n"]


async def test_a_secret_split_across_chunks_is_found() -> None:
    cut = ERROR.index(b"Secret")
    parts = (CONTENT + ERROR[:cut], ERROR[cut:])
    assert b"".join(await _read(RedactedErrorEvents(_chunks(*parts), SecretRedactor([KEY])))) == (
        CONTENT + REDACTED
    )


async def test_named_error_events_and_a_cut_off_tail_are_redacted() -> None:
    named = b'event: error\ndata: {"message": "Bearer ' + KEY.encode() + b'"}\n\n'
    tail = b'data: {"error": "' + KEY.encode() + b'"'  # no blank line: the stream just ended
    out = b"".join(await _read(RedactedErrorEvents(_chunks(named, tail), SecretRedactor([KEY]))))
    assert KEY.encode() not in out
    assert out == named.replace(KEY.encode(), b"[redacted]") + tail.replace(
        KEY.encode(), b"[redacted]"
    )


async def test_a_failing_upstream_releases_what_came_then_raises() -> None:
    stream = RedactedErrorEvents(_chunks(CONTENT, ERROR[:20], fail=True), SecretRedactor([KEY]))
    assert await stream.__anext__() == CONTENT
    assert await stream.__anext__() == ERROR[:20]  # the partial event, as it came
    with pytest.raises(UpstreamBroke):
        await stream.__anext__()


def test_only_event_streams_are_wrapped_and_only_with_secrets() -> None:
    def reply(content_type: bytes) -> UpstreamReply:
        return UpstreamReply(
            status=200, headers=[(b"content-type", content_type)], stream=_chunks(CONTENT)
        )

    sse = sanitize_error_reply(
        reply(b"text/event-stream; charset=utf-8"), SecretRedactor([KEY]), "u"
    )
    assert isinstance(sse.stream, RedactedErrorEvents)
    other = sanitize_error_reply(reply(b"audio/mpeg"), SecretRedactor([KEY]), "u")
    assert not isinstance(other.stream, RedactedErrorEvents)
    no_secrets = sanitize_error_reply(reply(b"text/event-stream"), SecretRedactor([]), "u")
    assert not isinstance(no_secrets.stream, RedactedErrorEvents)
