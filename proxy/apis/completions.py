"""The legacy completions adapter (`POST {prefix}/v1/completions`), moderated like chat.

Input: `prompt` (a string, or an array of strings) and `suffix` are the user's text, one user
message each, so every one of them is judged (there is no assistant turn in a completion
request). A prompt given as token ids (an array of integers, or of arrays of integers) is
content the guard cannot read: the policy's `on_uncheckable` rule refuses (400 naming
`prompt`) or forwards it flagged. Output: every choice's `text`, in bodies and in
`text_completion` stream chunks (held back like chat). Blocks: input blocked is a 400
`content_policy_violation` or a completion whose text is the refusal (`finish_reason:
"content_filter"`); output blocked replaces every choice's text with the refusal, in a stream
as one final `content_filter` chunk and `[DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from proxy.apis.base import send_to
from proxy.apis.body import ApiBody, param_namer
from proxy.errors import InvalidField
from proxy.request_body import ChatBody, decode_with_model, stream_flag, type_error
from proxy.sse import DONE, encode_data
from proxy.streaming.chunks import ResponseText
from proxy.streaming.holdback import StreamText
from proxy.upstreams.reply import ChatUpstream, RawHeaders, UpstreamReply


def _prompt_messages(prompt: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The prompt as user messages and the param of each (`prompt`, `prompt[1]`)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], ["prompt"]
    if not isinstance(prompt, list):
        raise type_error("prompt", "a string or an array")
    if all(isinstance(p, str) for p in prompt):
        return [{"role": "user", "content": p} for p in prompt], [
            f"prompt[{i}]" for i in range(len(prompt))
        ]
    tokens = all(isinstance(p, int) and not isinstance(p, bool) for p in prompt) or all(
        isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
        for p in prompt
    )
    if not tokens:
        raise type_error("prompt", "a string, an array of strings or an array of token ids")
    # Token ids: the guard cannot read them. An unknown part makes them uncheckable.
    return [{"role": "user", "content": {"token_ids": len(prompt)}}], ["prompt"]


def parse_completions_body(raw: bytes) -> ApiBody:
    """Decode and check a legacy completion request; raises InvalidJSON or InvalidField."""
    data, model = decode_with_model(raw)
    prompt = data.get("prompt")
    if prompt is None:
        raise InvalidField(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    messages, params = _prompt_messages(prompt)
    suffix = data.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise type_error("suffix", "a string")
        messages.append({"role": "user", "content": suffix})
        params.append("suffix")
    stream = stream_flag(data)
    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise type_error("stream_options", "an object")
        include_usage = options.get("include_usage") is True
    return ApiBody(
        raw,
        data,
        model,
        messages,
        stream,
        include_usage,
        params=tuple(params),
        content_params=tuple(params),
    )


def _texts(data: dict[str, Any]) -> list[str]:
    choices = data.get("choices")
    if not isinstance(choices, list):
        return []
    return [c["text"] for c in choices if isinstance(c, dict) and isinstance(c.get("text"), str)]


class CompletionText(ResponseText):
    """`text_completion` stream chunks: each choice's `text` is its content."""

    __slots__ = ()

    def _add_choice(self, item: dict[str, Any]) -> int:
        choice = self._choice(item)
        text = item.get("text")
        if isinstance(text, str) and text:
            choice.content.append(text)
            return len(text)
        return 0

    def refusal(self, refusal: str, *, after_text: bool, dropped: list[bytes]) -> bytes:
        text = ("\n\n" + refusal if after_text else refusal) if refusal else ""
        chunk = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": i, "text": text, "logprobs": None, "finish_reason": "content_filter"}
                for i in self.indices
            ],
        }
        return encode_data(orjson.dumps(chunk)) + DONE


def _completion(request_id: str, model: str, refusal: str) -> dict[str, Any]:
    return {
        "id": f"cmpl-guardline-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "text": refusal, "logprobs": None, "finish_reason": "content_filter"}
        ],
    }


class CompletionsApi:
    name = "completions"

    def param_namer(self, body: ChatBody) -> Callable[[str], str] | None:
        return param_namer(body)

    def output_text(self, data: dict[str, Any]) -> str:
        return "\n\n".join(t for t in _texts(data) if t)

    def uncheckable_output(self, data: dict[str, Any]) -> list[str]:
        return []

    def strip_reasoning(self, data: dict[str, Any]) -> bool:
        return False  # a legacy completion has no reasoning field

    def redact(self, data: dict[str, Any], refusal: str) -> bytes:
        for choice in data.get("choices") or []:
            if isinstance(choice, dict):
                choice["text"] = refusal
                choice["finish_reason"] = "content_filter"
                if "logprobs" in choice:
                    choice["logprobs"] = None
        return orjson.dumps(data)

    def refusal_body(self, body: ChatBody, request_id: str, refusal: str) -> bytes:
        out = _completion(request_id, body.model, refusal)
        out["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return orjson.dumps(out)

    def refusal_events(self, body: ChatBody, request_id: str, refusal: str) -> list[bytes]:
        events = [encode_data(orjson.dumps(_completion(request_id, body.model, refusal)))]
        if body.include_usage:
            usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            last = {**_completion(request_id, body.model, ""), "choices": [], "usage": usage}
            events.append(encode_data(orjson.dumps(last)))
        events.append(DONE)
        return events

    def new_stream_text(self) -> StreamText:
        return CompletionText()

    def strip_stream(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return stream

    async def send(
        self, upstream: ChatUpstream, body: ChatBody, headers: RawHeaders
    ) -> UpstreamReply:
        return await send_to(upstream, "completions", "Legacy completions are", body, headers)


COMPLETIONS = CompletionsApi()
