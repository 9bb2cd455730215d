"""The OpenAI-compatible moderations service: `POST /v1/moderations` decided by a policy.

`input` may be a string, a list of strings (one result each), or a list of text and
image_url parts (one result for all of them, as OpenAI's omni-moderation does). Categories
are the policy's guard categories (e.g. Nemotron's names), not OpenAI's fixed set: a client
reads `flagged` and the names it knows.
"""

from __future__ import annotations

import uuid
from typing import Any

from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardRequest
from proxy.errors import InvalidField
from proxy.moderation.decide import StageResult, judge
from proxy.moderation.inputs import load_images
from proxy.moderation.pipeline import ModerationPipeline


def _requests_from_input(value: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """(text, [(image url, param)]) per result to produce."""
    if isinstance(value, str):
        return [(value, [])]
    if not isinstance(value, list) or not value:
        raise InvalidField(
            "Invalid type for 'input': expected a string, an array of strings, or an array "
            "of content parts.",
            param="input",
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
    pipeline: ModerationPipeline, policy: CompiledPolicy, value: Any
) -> tuple[dict[str, Any], list[StageResult]]:
    """The moderation response body and the stage results behind it."""
    results: list[dict[str, Any]] = []
    stages: list[StageResult] = []
    model = pipeline.engine.guard_for(policy).model
    for text, image_refs in _requests_from_input(value):
        images = await load_images(image_refs, policy, pipeline.fetcher)
        stage = await judge(pipeline.engine, GuardRequest(prompt=text, images=images), policy)
        stages.append(stage)
        results.append(_result(stage, policy))
    body = {"id": f"modr-guardline-{uuid.uuid4().hex[:24]}", "model": model, "results": results}
    return body, stages


def _result(stage: StageResult, policy: CompiledPolicy) -> dict[str, Any]:
    verdict = stage.verdict
    flagged_names = set(verdict.categories) if verdict is not None and stage.flagged else set()
    names = list(dict.fromkeys([*policy.categories, *sorted(flagged_names)]))
    score = verdict.score if verdict is not None else None
    categories = {name: name in flagged_names for name in names}
    scores = {
        name: (score if score is not None else 1.0) if name in flagged_names else 0.0
        for name in names
    }
    result: dict[str, Any] = {
        "flagged": stage.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in names},
    }
    result["guardline"] = {"status": stage.status, "policy": policy.ref, "score": score}
    return result
