"""`guardline check`: judge one text (optionally an image and a response) under a policy.

Exit status: 0 when allowed, 1 when flagged, 2 when the check could not be made. That makes it
usable in scripts and in a policy-editing loop (`guardline check --policy P "text"`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from guard_engine.backends.base import Backend
from guard_engine.engine import GuardEngine
from guard_engine.errors import GuardEngineError
from guard_engine.images import normalize_image
from guard_engine.policy.compile import load_policy
from guard_engine.policy.compiled import CompiledPolicy
from guard_engine.types import GuardImage, GuardRequest, Verdict


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the user prompt to check")
    parser.add_argument("--policy", default="policies/default.yaml", help="policy file")
    parser.add_argument("--config", help="config.yaml (default: ./config.yaml if present)")
    parser.add_argument("--guard", help="guard name from the config (default: the policy's)")
    parser.add_argument("--mode", choices=["binary", "categories", "think"], help="override mode")
    parser.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    parser.add_argument("--response", help="an assistant response: makes this an output check")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        engine = _engine(args.config)
        policy = load_policy(args.policy, known_guards=list(engine.guards))
        images = tuple(_image(path, i) for i, path in enumerate(args.image))
    except (GuardEngineError, OSError) as exc:
        print(f"guardline check: {exc}", file=sys.stderr)
        return 2
    request = GuardRequest(prompt=args.text, images=images, response=args.response)
    try:
        verdict = asyncio.run(_check(engine, request, policy, args))
    except GuardEngineError as exc:
        print(f"guardline check: guard error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 2
    print(_render_json(verdict) if args.json else _render_text(verdict))
    return 1 if verdict.flagged else 0


async def _check(
    engine: GuardEngine, request: GuardRequest, policy: CompiledPolicy, args: argparse.Namespace
) -> Verdict:
    try:
        return await engine.check(request, policy, mode=args.mode, guard=args.guard)
    finally:
        await engine.aclose()


def _engine(config_path: str | None) -> GuardEngine:
    path = config_path or ("config.yaml" if Path("config.yaml").exists() else None)
    if path is None:
        from guard_engine.backends.embedded import EmbeddedBackend

        backends: dict[str, Backend] = {"local": EmbeddedBackend(name="local")}
        return GuardEngine(backends, default_guard="local")
    from proxy.config import load_config
    from proxy.guards import build_engine

    return build_engine(load_config(path), cached=False)


def _image(path: str, index: int) -> GuardImage:
    return normalize_image(Path(path).read_bytes(), param=f"--image[{index}] {path}")


def _render_json(verdict: Verdict) -> str:
    return orjson.dumps(
        {
            "flagged": verdict.flagged,
            "stage": verdict.stage,
            "prompt": verdict.prompt_label,
            "response": verdict.response_label,
            "categories": list(verdict.categories),
            "score": verdict.score,
            "think": verdict.think,
            "guard": verdict.guard,
            "model": verdict.model,
            "policy": verdict.policy,
            "mode": verdict.mode,
            "latency_ms": round(verdict.latency_ms, 2),
            "raw": verdict.raw,
        },
        option=orjson.OPT_INDENT_2,
    ).decode()


def _render_text(verdict: Verdict) -> str:
    lines = [
        f"verdict   {'FLAGGED' if verdict.flagged else 'allowed'} ({verdict.stage} check)",
        f"prompt    {verdict.prompt_label}",
    ]
    if verdict.response_label is not None:
        lines.append(f"response  {verdict.response_label}")
    if verdict.categories:
        lines.append(f"categories {', '.join(verdict.categories)}")
    if verdict.score is not None:
        lines.append(f"score     {verdict.score:.4f}")
    lines.append(
        f"policy    {verdict.policy}   guard {verdict.guard} ({verdict.model}), mode {verdict.mode}"
    )
    lines.append(f"latency   {verdict.latency_ms:.1f} ms")
    if verdict.think:
        lines.append("think     " + verdict.think.strip().replace("\n", "\n          "))
    return "\n".join(lines)
