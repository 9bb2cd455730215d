"""SSE framing: events come out whole, byte-faithful, however the network splits them."""

from __future__ import annotations

import random

import pytest

from proxy.sse import DONE, SSEEvent, SSEParser, encode_data


def feed_all(parser: SSEParser, chunks: list[bytes]) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    return events


def random_split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 12))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


STREAM = (
    b'data: {"a":1}\n\n'
    b": keep-alive\n\n"
    b"event: message\nid: 7\ndata: line one\ndata: line two\n\n"
    b"data:nospace\n\n"
    b"data\n\n"
    b"retry: 100\n\n"
    b"data: [DONE]\n\n"
)


def test_events_and_payloads() -> None:
    events = feed_all(SSEParser(), [STREAM])
    assert [e.data for e in events] == [
        b'{"a":1}',
        None,
        b"line one\nline two",
        b"nospace",
        b"",
        None,
        b"[DONE]",
    ]
    assert b"".join(e.raw for e in events) == STREAM
    assert [e.is_done for e in events] == [False] * 6 + [True]
    assert all(e.complete for e in events)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    stream = STREAM.replace(b"\n", eol)
    for seed in range(40):
        events = feed_all(SSEParser(), random_split(stream, random.Random(seed)))
        assert b"".join(e.raw for e in events) == stream
        assert events[2].data == b"line one\nline two"
        assert events[-1].is_done
        assert len(events) == 7


def test_split_at_every_byte() -> None:
    expected = feed_all(SSEParser(), [STREAM])
    for cut in range(1, len(STREAM)):
        assert feed_all(SSEParser(), [STREAM[:cut], STREAM[cut:]]) == expected
    assert feed_all(SSEParser(), [bytes([b]) for b in STREAM]) == expected


def test_crlf_split_between_cr_and_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n\r") == []  # the CR may be the start of CRLF: wait
    events = parser.feed(b"\ndata: y\r\n\r\n")
    assert [e.raw for e in events] == [b"data: x\r\n\r\n", b"data: y\r\n\r\n"]
    assert [e.data for e in events] == [b"x", b"y"]


def test_trailing_partial_event_at_eof() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a":1}\n\ndata: {"b"') == [
        SSEEvent(b'data: {"a":1}\n\n', b'{"a":1}')
    ]
    assert parser.pending
    [tail] = parser.flush()
    assert tail == SSEEvent(b'data: {"b"', b'{"b"', complete=False)
    assert not parser.pending
    assert parser.flush() == []


def test_trailing_cr_at_eof_ends_the_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: z\r\r") == []
    [event] = parser.flush()
    assert event == SSEEvent(b"data: z\r\r", b"z")


def test_stray_blank_lines_are_forwarded() -> None:
    events = feed_all(SSEParser(), [b"\n\ndata: a\n\n"])
    assert b"".join(e.raw for e in events) == b"\n\ndata: a\n\n"
    assert [e.data for e in events] == [None, None, b"a"]


def test_encode() -> None:
    assert encode_data(b'{"x":1}') == b'data: {"x":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    assert feed_all(SSEParser(), [DONE])[0].is_done


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: x\n\n"],
        [b"data: x\n\ndata: y\n\n"],
        [b"data: x\n\n", b"data: y\n", b"\n"],
        [b"data: \n\n"],
        [b"data: a\r\n\n"],
        [b"data: a", b"\n\n"],
    ],
)
def test_single_event_fast_path_matches_general_path(chunks: list[bytes]) -> None:
    whole = b"".join(chunks)
    by_bytes = feed_all(SSEParser(), [bytes([b]) for b in whole])
    assert feed_all(SSEParser(), chunks) == by_bytes
    assert b"".join(e.raw for e in by_bytes) == whole
