"""Build the input GuardRequest for one chat call: text, context turns and normalized images.

Images are decoded and normalized here (off the event loop, in guard_engine.images); an image
that cannot be decoded is the client's error (400 with `param` naming the part), never a
silently dropped image. Content the guard cannot see is refused or flagged per policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from guard_engine.errors import ImageError
from guard_engine.image_fetch import ImageFetcher
from guard_engine.images import load_image
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardImage, GuardRequest
from proxy.errors import InvalidField
from proxy.moderation.extract import ImageRef, extract_input


@dataclass(frozen=True, slots=True)
class PreparedInput:
    request: GuardRequest
    empty: bool  # nothing to check (no user message, or an empty one without images)
    unchecked: tuple[str, ...]  # params of parts forwarded unchecked (on_uncheckable: flag)


async def load_images(
    refs: Sequence[tuple[str, str]], policy: CompiledPolicy, fetcher: ImageFetcher | None
) -> tuple[GuardImage, ...]:
    """Decode and normalize (url, param) images; remote URLs only where the policy allows.

    An image that cannot be used is the client's error: 400 `invalid_image` naming the part.
    """
    allowed = fetcher if policy.input.allow_remote_images else None
    try:
        return tuple(
            await asyncio.gather(
                *(load_image(url, param=param, fetcher=allowed) for url, param in refs)
            )
        )
    except ImageError as exc:
        raise InvalidField(str(exc), param=exc.param, code="invalid_image") from None


async def prepare_input(
    messages: list[dict[str, Any]],
    policy: CompiledPolicy,
    fetcher: ImageFetcher | None,
    rename: Callable[[str], str] | None = None,
) -> PreparedInput:
    """`rename` turns `messages[i]...` params into the API's own names (proxy.apis)."""
    content = extract_input(messages, policy.input)
    if rename is not None:
        content.uncheckable = [rename(p) for p in content.uncheckable]
        content.images = [ImageRef(url=r.url, param=rename(r.param)) for r in content.images]
    if content.uncheckable and policy.input.on_uncheckable == "refuse":
        param = content.uncheckable[0]
        raise InvalidField(
            f"{param}: this content type cannot be checked by the content guard, and the "
            f"policy {policy.ref} refuses what it cannot check.",
            param=param,
            code="unsupported_content",
        )
    refs = [(ref.url, ref.param) for ref in content.images]
    images = await load_images(refs, policy, fetcher)
    request = GuardRequest(prompt=content.prompt, images=images, context=tuple(content.context))
    return PreparedInput(request=request, empty=content.empty, unchecked=tuple(content.uncheckable))
