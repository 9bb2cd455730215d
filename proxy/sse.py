"""Byte-faithful Server-Sent Events framing for the streaming hot path.

The gateway must forward upstream events unchanged, so the parser keeps the exact bytes of every
event (`raw`, including its terminating blank line) next to the decoded `data:` payload that the
moderation code reads. It accepts every line ending the SSE specification allows (`\\n`, `\\r\\n`,
bare `\\r`) and events split anywhere across network chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

DONE: bytes = b"data: [DONE]\n\n"
_DONE_PAYLOAD = b"[DONE]"
_LF = 0x0A


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event: its exact bytes and its joined `data:` payload (None when it has no data line)."""

    raw: bytes
    data: bytes | None
    complete: bool = True  # False for a trailing event cut off at EOF (no blank line after it)

    @property
    def is_done(self) -> bool:
        return self.data == _DONE_PAYLOAD


def encode_data(payload: bytes) -> bytes:
    """One `data:` event for a single-line payload (JSON from orjson never contains a newline)."""
    return b"data: " + payload + b"\n\n"


class SSEParser:
    """Incremental SSE splitter. Feed network chunks, get complete events in order."""

    __slots__ = ("_buf", "_data", "_pos", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the first line of `_buf` not yet interpreted
        self._scan = 0  # where the search for the next line ending resumes
        self._data: list[bytes] | None = None  # data lines of the event being read

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buf)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if (
            not self._buf
            and chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
        ):
            # Fast path: one single-line `data:` event per chunk, how OpenAI-style servers flush.
            return [SSEEvent(chunk, chunk[6:-2])]
        self._buf += chunk
        return self._drain(at_eof=False)

    def flush(self) -> list[SSEEvent]:
        """At EOF: the trailing event that never got its blank line, if any bytes are left."""
        events = self._drain(at_eof=True)
        if self._buf:
            if self._pos < len(self._buf):  # a last line without any line ending
                self._field(bytes(self._buf[self._pos :]))
            data = None if self._data is None else b"\n".join(self._data)
            events.append(SSEEvent(bytes(self._buf), data, complete=False))
            self._reset(len(self._buf))
        return events

    def _drain(self, *, at_eof: bool) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        buf = self._buf
        pos = self._pos
        # Bytes before `scan` hold no line ending: a long line arriving in many small chunks is
        # searched once, not once per chunk.
        scan = max(pos, self._scan)
        start = 0  # start of the current event in buf
        end = len(buf)
        while pos < end:
            lf = buf.find(b"\n", scan)
            # Only look for CR before the next LF: the common "\n"-only stream costs one scan.
            cr = buf.find(b"\r", scan, end if lf < 0 else lf)
            if cr >= 0:
                eol = cr
                if cr + 1 < end:
                    nxt = cr + 2 if buf[cr + 1] == _LF else cr + 1
                elif at_eof:
                    nxt = cr + 1
                else:
                    scan = cr  # a CR at the end of the chunk may be the first half of CRLF
                    break
            elif lf >= 0:
                eol, nxt = lf, lf + 1
            else:
                scan = end
                break
            if eol == pos:  # blank line: the event ends here
                raw = bytes(buf[start:nxt])
                data = None if self._data is None else b"\n".join(self._data)
                events.append(SSEEvent(raw, data))
                self._data = None
                start = nxt
            else:
                self._field(bytes(buf[pos:eol]))
            pos = scan = nxt
        if start:
            del buf[:start]
            pos -= start
            scan -= start
        self._pos = pos
        self._scan = scan
        return events

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" comment (keep-alive)
            return
        colon = line.find(b":")
        name = line if colon < 0 else line[:colon]
        if name != b"data":
            return  # event:, id:, retry: stay in raw; moderation only reads data
        value = b"" if colon < 0 else line[colon + 1 :]
        if value[:1] == b" ":
            value = value[1:]
        if self._data is None:
            self._data = [value]
        else:
            self._data.append(value)

    def _reset(self, upto: int) -> None:
        del self._buf[:upto]
        self._pos = self._scan = 0
        self._data = None
