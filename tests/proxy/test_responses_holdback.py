"""Hold-back for Responses API streams (`proxy.apis.responses_stream`), driven directly.

THE INVARIANT for the Responses shape: at every byte the client receives, the text it has been
sent (deltas, and any text in done/terminal events) is inside a text the check passed. Plus the
shapes of the ends: a block ends with a refusal message placed after the items the client has,
then `response.incomplete`; text that appears only in final events is checked before release;
reasoning stripped with output indices renumbered; an unparseable event is refused.
"""

from __future__ import annotations

import random
import re
from typing import Any

import orjson

from proxy.apis.responses_stream import ResponsesStreamText
from proxy.sse import SSEParser
from proxy.streaming import StreamOutcome, moderate_stream
from tests.doubles.responses_api import stream_events
from tests.proxy.streaming_helpers import TRIGGER, RecordingCheck, Upstream, split


def _events(words: list[str], **headers: str) -> list[bytes]:
    reply = "%20".join(words)
    return stream_events({"x-double-reply": reply, **headers}, {"model": "up"}, 0, None)


def _parse(raw: bytes) -> list[dict[str, Any]]:
    parser = SSEParser()
    out = [orjson.loads(e.data) for e in parser.feed(raw) if e.data is not None]
    return out + [orjson.loads(e.data) for e in parser.flush() if e.data is not None]


def _sent_text(events: list[dict[str, Any]]) -> str:
    """All text a client could show from these events (deltas and complete values)."""
    texts: list[str] = []
    for e in events:
        for key in ("delta", "text", "arguments"):
            if isinstance(e.get(key), str):
                texts.append(e[key])
        if e["type"] in ("response.completed", "response.incomplete"):
            texts.append(orjson.dumps(e["response"]["output"]).decode())
    return " ".join(texts)


async def _run(
    chunks: list[bytes], check: RecordingCheck, *, mode: str = "holdback", **kwargs: Any
) -> tuple[bytes, StreamOutcome, list[bytes], Upstream]:
    up = Upstream(chunks, rng=kwargs.pop("rng", None), max_yields=kwargs.pop("max_yields", 0))
    outcome = StreamOutcome()
    on_yield = kwargs.pop("on_yield", None)
    stream = moderate_stream(
        up.stream(),
        mode=mode,  # type: ignore[arg-type]
        holdback_chars=kwargs.pop("holdback", 50),
        check=check,
        refusal=kwargs.pop("refusal", "[blocked]"),
        outcome=outcome,
        new_text=ResponsesStreamText,
        **kwargs,
    )
    received: list[bytes] = []
    async for data in stream:
        received.append(data)
        if on_yield is not None:
            on_yield(b"".join(received))
    return b"".join(received), outcome, received, up


async def test_safe_stream_is_forwarded_byte_for_byte() -> None:
    chunks = _events([f"word{i}" for i in range(30)])
    check = RecordingCheck()
    raw, outcome, _, up = await _run(chunks, check)
    assert raw == b"".join(chunks)
    assert check.seen[-1] == " ".join(f"word{i}" for i in range(30))
    assert outcome.completed and not outcome.blocked and up.closed
    assert outcome.usage is not None and outcome.usage["total_tokens"] == 12
    assert outcome.model == "up"


async def test_the_invariant_over_random_streams() -> None:
    rng = random.Random(11)
    for _ in range(60):
        n = rng.randint(1, 40)
        words = [f"w{i}" for i in range(n)]
        if rng.random() < 0.6:
            words[rng.randrange(n)] = TRIGGER
        headers = {}
        if rng.random() < 0.3:
            headers["x-double-reasoning"] = "let me think about it"
        if rng.random() < 0.2:
            headers["x-double-tool-calls"] = "1"
        chunks = split(b"".join(_events(words, **headers)), rng)
        check = RecordingCheck(rng=rng, max_yields=rng.randint(0, 8))
        seen_at_yield: list[tuple[str, list[str]]] = []

        def on_yield(
            sent: bytes,
            check: RecordingCheck = check,
            seen: list[tuple[str, list[str]]] = seen_at_yield,
        ) -> None:
            seen.append((_sent_text(_parse(sent)), list(check.passed)))

        raw, outcome, _, _ = await _run(
            chunks,
            check,
            rng=rng,
            max_yields=rng.randint(0, 4),
            holdback=rng.choice([1, 10, 50]),
            on_yield=on_yield,
        )
        for sent, passed in seen_at_yield:
            text = sent.replace("[blocked]", "")
            for word in set(re.findall(r"\bw\d+\b", text)):
                # every word sent had been inside a passed check
                assert any(re.search(rf"\b{word}\b", p) for p in passed), (word, passed)
            assert TRIGGER not in sent
        events = _parse(raw)
        if outcome.blocked:
            assert events[-1]["type"] == "response.incomplete"
            assert events[-1]["response"]["incomplete_details"] == {"reason": "content_filter"}
        else:
            assert events[-1]["type"] == "response.completed"


async def test_a_block_adds_the_refusal_after_the_items_the_client_has() -> None:
    words = [f"word{i}" for i in range(30)] + [TRIGGER]
    raw, outcome, _, up = await _run(
        _events(words, **{"x-double-reasoning": "hmm ok"}), RecordingCheck()
    )
    events = _parse(raw)
    assert outcome.blocked and up.closed
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert added[-1]["item"]["id"].startswith("msg_guardline_")
    assert added[-1]["output_index"] == len(added) - 1  # after what the client already has
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert deltas[-1]["delta"] == "[blocked]"
    assert deltas[-1]["output_index"] == added[-1]["output_index"]
    end = events[-1]
    assert end["type"] == "response.incomplete"
    assert end["response"]["status"] == "incomplete"
    assert end["response"]["output"][0]["content"][0]["text"] == "[blocked]"
    seqs = [e["sequence_number"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_text_only_in_final_events_is_checked_before_release() -> None:
    words = ["a", "b", TRIGGER]
    check = RecordingCheck()
    raw, outcome, _, _ = await _run(_events(words, **{"x-double-final-only": "1"}), check)
    assert outcome.blocked and TRIGGER not in raw.decode()
    assert any(TRIGGER in seen for seen in check.seen)


async def test_reasoning_is_stripped_and_indices_renumbered() -> None:
    chunks = _events(["hello", "there"], **{"x-double-reasoning": "secret thoughts"})
    check = RecordingCheck()
    raw, _, _, _ = await _run(chunks, check, strip_reasoning=True)
    events = _parse(raw)
    assert "secret" not in raw.decode()
    assert all("reasoning" not in e["type"] for e in events)
    assert {e["output_index"] for e in events if "output_index" in e} == {0}
    assert [i["type"] for i in events[-1]["response"]["output"]] == ["message"]
    assert all("secret" not in seen for seen in check.seen)


async def test_an_unparseable_event_is_refused() -> None:
    chunks = _events(["hello", "there"])
    chunks.insert(4, b"data: {not json\n\n")
    raw, outcome, _, _ = await _run(chunks, RecordingCheck())
    assert outcome.blocked and outcome.refused_uncheckable
    assert _parse(raw.replace(b"data: {not json\n\n", b""))[-1]["type"] == "response.incomplete"


async def test_monitor_mode_releases_everything_and_checks() -> None:
    words = [f"word{i}" for i in range(20)] + [TRIGGER]
    check = RecordingCheck()
    raw, outcome, _, _ = await _run(_events(words), check, mode="monitor")
    assert TRIGGER in raw.decode() and outcome.completed
    assert outcome.background is not None
    await outcome.background
    assert any(v.flagged for v in outcome.verdicts)
