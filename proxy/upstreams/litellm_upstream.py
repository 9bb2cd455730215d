"""`type: litellm` upstreams: non-OpenAI providers (Anthropic, Gemini, Bedrock, ...) via litellm.

litellm translates an OpenAI chat request to the provider's API and the answer back to
OpenAI `chat.completion` / `chat.completion.chunk` objects, which this module returns as
plain dicts. litellm takes seconds to import, so it is imported on first use, in a worker
thread so the event loop keeps serving. Its exceptions are translated to the gateway's
error hierarchy in one function, `translate_error`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import sys
from collections.abc import AsyncGenerator
from typing import Any

import openai

from proxy.config_schema import LiteLLMUpstreamConfig
from proxy.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

# Body fields that would steer litellm itself (where to send, which key, callbacks, mocks)
# rather than the model. A client must not choose them; they are dropped, not forwarded.
# litellm's own parameter list (`all_litellm_params`, e.g. mock_response, metadata,
# fallbacks) is added to these at first use.
_CONTROL_FIELDS = frozenset(
    {
        "model",
        "stream",
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "organization",
        "deployment_id",
        "default_headers",
        "extra_headers",
        "headers",
        "timeout",
        "request_timeout",
        "max_retries",
        "num_retries",
        "model_list",
        "shared_session",
        "client",
    }
)
# Keys litellm adds to OpenAI objects; removed when they carry nothing.
_LITELLM_ONLY = ("provider_specific_fields", "citations", "moderation")
_PREFIX = re.compile(r"^(?:litellm\.\w+:\s*)?(?:\w+(?:Error|Exception)\s*(?:-|:)\s*)*")


class PermissionDenied(GatewayError):
    """The provider refused the configured credentials for this request (HTTP 403)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


def load_litellm() -> Any:
    """Import and configure litellm (seconds). Safe to call repeatedly: imports are cached."""
    # Without this litellm fetches its model cost map from GitHub at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm: Any = importlib.import_module("litellm")
    litellm.suppress_debug_info = True  # no "Give Feedback" banners on every exception
    litellm.telemetry = False
    return litellm


def _message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return _PREFIX.sub("", text) or type(exc).__name__


def translate_error(upstream: str, exc: BaseException) -> GatewayError:
    """The one place litellm's (and the OpenAI SDK's, which they subclass) errors are mapped."""
    if isinstance(exc, GatewayError):
        return exc
    detail = f"upstream '{upstream}': {_message(exc)}"
    # litellm's classes subclass openai's, so these checks cover both; order matters:
    # APITimeoutError is an APIConnectionError, ContextWindow/ContentPolicy are BadRequests.
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"upstream '{upstream}' timed out")
    if isinstance(exc, openai.AuthenticationError):
        return Unauthorized(detail)
    if isinstance(exc, openai.PermissionDeniedError):
        return PermissionDenied(detail)
    if isinstance(exc, openai.NotFoundError):
        return ModelNotFound(detail)
    if isinstance(exc, openai.RateLimitError) or getattr(exc, "status_code", None) == 429:
        # BudgetExceededError is not an openai class but carries status 429.
        return RateLimited(detail)
    if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
        code = "context_length_exceeded" if "ContextWindow" in type(exc).__name__ else None
        if "ContentPolicy" in type(exc).__name__:
            code = "content_policy_violation"
        return InvalidRequest(detail, code=code)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError(detail)
    if isinstance(exc, openai.APIError):
        # 5xx, gateways, overloaded providers, responses litellm could not parse.
        return UpstreamError(detail)
    log.warning("unexpected litellm error from upstream %s", upstream, exc_info=exc)
    return UpstreamError(f"upstream '{upstream}' failed ({type(exc).__name__})")


def _empty(value: Any) -> bool:
    if isinstance(value, dict):
        return all(v is None for v in value.values())
    return value is None or value == []


def _tidy(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop litellm's additions that carry nothing, so clients see plain OpenAI objects."""
    for key in _LITELLM_ONLY:
        if key in obj and _empty(obj[key]):
            del obj[key]
    for choice in obj.get("choices") or []:
        for key in _LITELLM_ONLY:
            if key in choice and _empty(choice[key]):
                del choice[key]
        for part in ("message", "delta"):
            inner = choice.get(part)
            if isinstance(inner, dict):
                for key in _LITELLM_ONLY:
                    if key in inner and _empty(inner[key]):
                        del inner[key]
    if obj.get("object") == "chat.completion.chunk" and obj.get("usage"):
        # OpenAI's include_usage chunk has `choices: []`; litellm sends one empty choice.
        choices = obj.get("choices") or []
        if all(_empty(c.get("delta")) and c.get("finish_reason") is None for c in choices):
            obj["choices"] = []
    return obj


class LiteLLMUpstream:
    """One configured litellm upstream; the provider model is fixed by config."""

    def __init__(self, name: str, config: LiteLLMUpstreamConfig) -> None:
        self.name = name
        self.config = config
        self._dropped: frozenset[str] = _CONTROL_FIELDS

    async def _litellm(self) -> Any:
        litellm = await asyncio.to_thread(load_litellm)
        if self._dropped is _CONTROL_FIELDS:
            own = importlib.import_module("litellm.types.utils").all_litellm_params
            self._dropped = _CONTROL_FIELDS | frozenset(own)
        return litellm

    def _kwargs(self, body: dict[str, Any], *, stream: bool, api_key: str | None) -> dict[str, Any]:
        kwargs = {
            k: v
            for k, v in body.items()
            if k not in self._dropped and not k.startswith(("_", "litellm"))
        }
        kwargs.update(
            model=self.config.model,
            stream=stream,
            timeout=self.config.timeout_s,
            # The client's SDK retries 429/5xx itself; retrying here too multiplies attempts.
            max_retries=0,
        )
        # Configured key first; else the caller's (bring-your-own-key); else litellm falls
        # back to the provider's usual environment variable (e.g. ANTHROPIC_API_KEY).
        key = self.config.api_key or api_key
        if key:
            kwargs["api_key"] = key
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
        return kwargs

    async def complete(self, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
        """A non-streaming chat completion as an OpenAI `chat.completion` dict."""
        litellm = await self._litellm()
        try:
            response = await litellm.acompletion(
                **self._kwargs(body, stream=False, api_key=api_key)
            )
        except Exception as exc:
            raise translate_error(self.name, exc) from exc
        result: dict[str, Any] = response.model_dump()
        return _tidy(result)

    def stream(
        self, body: dict[str, Any], *, api_key: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """OpenAI `chat.completion.chunk` dicts as the provider produces them.

        Closing the iterator (client gone) closes the provider stream at once.
        """
        return self._stream(body, api_key)

    async def _stream(
        self, body: dict[str, Any], api_key: str | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        litellm = await self._litellm()
        try:
            response = await litellm.acompletion(**self._kwargs(body, stream=True, api_key=api_key))
        except Exception as exc:
            raise translate_error(self.name, exc) from exc
        try:
            iterator = response.__aiter__()
            while True:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise translate_error(self.name, exc) from exc
                yield _tidy(chunk.model_dump())
        finally:
            close = getattr(response, "aclose", None)
            if close is not None:
                await close()

    async def aclose(self) -> None:
        """Close litellm's cached HTTP clients. They are shared by every litellm upstream in
        the process, so call this at shutdown only (the app closes all upstreams together)."""
        if "litellm" not in sys.modules:
            return  # never used: nothing to close, and no reason to pay for the import
        litellm = load_litellm()
        await litellm.close_litellm_async_clients()
        cache = getattr(litellm, "in_memory_llm_clients_cache", None)
        if cache is not None and hasattr(cache, "flush_cache"):
            # Closed clients must not be handed out again if a new loop reuses an old id.
            cache.flush_cache()
