"""The OpenAI-compatible moderations service: `POST /v1/moderations` decided by a policy.

`input` may be a string, a list of strings (one result each), or a list of text and
image_url parts (one result for all of them, as OpenAI's omni-moderation does); a list longer
than `moderations.max_inputs` is a 400. The strings of a list are judged concurrently (the
guard's own concurrency bound applies). Results use OpenAI's category keys
(proxy.moderation.openai_categories), all of them present; the guard's own category names,
its score and the policy are in the extra field `guardline`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest
from proxy.errors import InvalidField
from proxy.moderation.decide import StageResult, judge
from proxy.moderation.inputs import load_images
from proxy.moderation.openai_categories import (
    OPENAI_CATEGORIES,
    applied_input_types,
    openai_categories,
)
from proxy.moderation.pipeline import ModerationPipeline


def _requests_from_input(value: Any, max_inputs: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """(text, [(image url, param)]) per result to produce."""
    if isinstance(value, str):
        return [(value, [])]
    if not isinstance(value, list) or not value:
        raise InvalidField(
            "Invalid type for 'input': expected a string, an array of strings, or an array "
            "of content parts.",
            param="input",
        )
    if len(value) > max_inputs:
        raise InvalidField(
            f"Too many inputs: {len(value)} given, at most {max_inputs} per request.",
            param="input",
            code="too_many_inputs",
        )
    if all(isinstance(v, str) for v in value):
        return [(v, []) for v in value]
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    for i, part in enumerate(value):
        param = f"input[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise InvalidField(f"{param}: image_url.url must be a string.", param=param)
            images.append((url, param))
        else:
            raise InvalidField(f"{param}: unsupported content part.", param=param)
    return [("\n".join(texts), images)]


async def moderate(
    pipeline: ModerationPipeline, policy: CompiledPolicy, value: Any, *, max_inputs: int
) -> tuple[dict[str, Any], list[StageResult]]:
    """The moderation response body and the stage results behind it."""
    requests = _requests_from_input(value, max_inputs)
    model = pipeline.engine.guard_for(policy).model

    async def one(text: str, image_refs: list[tuple[str, str]]) -> StageResult:
        images = await load_images(image_refs, policy, pipeline.fetcher)
        return await judge(pipeline.engine, GuardRequest(prompt=text, images=images), policy)

    tasks = [asyncio.ensure_future(one(text, refs)) for text, refs in requests]
    try:
        stages = list(await asyncio.gather(*tasks))
    except BaseException:
        # One failed (closed guard, bad image) or the client left: the others are moot.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    results = [
        _result(stage, policy, text=bool(text), images=bool(refs))
        for stage, (text, refs) in zip(stages, requests, strict=True)
    ]
    body = {"id": f"modr-guardline-{uuid.uuid4().hex[:24]}", "model": model, "results": results}
    return body, stages


def _result(
    stage: StageResult, policy: CompiledPolicy, *, text: bool, images: bool
) -> dict[str, Any]:
    verdict = stage.verdict
    flagged_names = list(stage.categories)
    flagged_openai = openai_categories(flagged_names)
    score = verdict.score if verdict is not None else None
    # A guard that names categories but gives no score: a flagged category scores 1.0.
    flagged_score = score if score is not None else 1.0
    return {
        "flagged": stage.flagged,
        "categories": {c: c in flagged_openai for c in OPENAI_CATEGORIES},
        "category_scores": {
            c: flagged_score if c in flagged_openai else 0.0 for c in OPENAI_CATEGORIES
        },
        "category_applied_input_types": applied_input_types(text=text, images=images),
        "guardline": {
            "status": stage.status,
            "policy": policy.ref,
            "score": score,
            "categories": flagged_names,
        },
    }
