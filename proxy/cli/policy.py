"""`guardline policy`: policy tools for the edit-lint-check loop.

guardline policy lint [PATHS...] [--guards a,b] [--config config.yaml]
                                                  validate files (default: policies/*.yaml)
guardline policy show PATH [--config FILE]        print the compiled policy as the guard sees it
                                                  (with --config: the guard it uses, and the
                                                  distilled head when that guard is a cascade)
"""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from guard_engine.backends.cascade import describe_head
from guard_engine.backends.distilled_head import load_distilled
from guard_engine.errors import ConfigFileError
from guard_engine.policy.compile import load_policy
from guard_engine.yaml_model import load_yaml_text
from proxy.config_schema import GatewayConfig


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    lint = sub.add_parser("lint", help="validate policy files; exit 1 if any is invalid")
    lint.add_argument(
        "paths", nargs="*", metavar="PATH", help="policy files (default: policies/*.yaml)"
    )
    lint.add_argument(
        "--guards",
        default=None,
        metavar="A,B",
        help="comma-separated guard names a policy's `guard:` may name (default: not checked)",
    )
    lint.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="take the guard names from this config.yaml's `guards:` (like the gateway does)",
    )
    show = sub.add_parser("show", help="print a compiled policy (hash, custom_policy, taxonomy)")
    show.add_argument("path", metavar="PATH")
    show.add_argument("--json", action="store_true", help="print every compiled field as JSON")
    show.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="resolve the policy's guard in this config.yaml; a cascade guard's head is shown",
    )


def run(args: argparse.Namespace) -> int:
    if args.policy_command == "show":
        return _show(args.path, as_json=args.json, config=args.config)
    guards = None if args.guards is None else [g.strip() for g in args.guards.split(",") if g]
    if args.config is not None:
        try:
            guards = [*(guards or []), *_config_guards(args.config)]
        except ConfigFileError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    return _lint(list(args.paths), guards)


def _config_guards(path: str) -> list[str]:
    """The guard names a config file defines. Read without `${VAR}` interpolation: names are
    keys, never variables, and lint must not need the server's secrets in its environment."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read file: {exc.strerror or exc}") from None
    data, lines = load_yaml_text(text, path=path)
    guards = data.get("guards") if isinstance(data, dict) else None
    if guards is None:
        defaults = GatewayConfig.model_fields["guards"].get_default(call_default_factory=True)
        return [str(name) for name in defaults]
    if not isinstance(guards, dict):
        raise ConfigFileError(path, "must be a mapping", line=lines.get(("guards",)), key="guards")
    return [str(name) for name in guards]


def _lint(paths: list[str], guards: list[str] | None) -> int:
    if not paths:
        paths = sorted(glob.glob("policies/*.yaml"))
        if not paths:
            print("no policy files given and none found in policies/*.yaml", file=sys.stderr)
            return 1
    failed = 0
    for path in paths:
        try:
            policy = load_policy(path, known_guards=guards)
        except ConfigFileError as exc:
            failed += 1
            print(str(exc))
            continue
        print(f"OK  {path}  {policy.ref}")
    return 1 if failed else 0


def _show(path: str, *, as_json: bool, config: str | None = None) -> int:
    try:
        policy = load_policy(path)
        guard = None if config is None else _guard_of(policy.guard, config)
    except ConfigFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if as_json:
        data = asdict(policy)
        if guard is not None:
            data["resolved_guard"] = guard
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{policy.ref}  ({policy.source})")
    print(
        f"guard: {policy.guard or '(default_guard)'}   mode: {policy.mode}   "
        f"threshold: {policy.threshold}   on_guard_error: {policy.on_guard_error}"
    )
    if guard is not None:
        _print_guard(guard)
    print(f"categories ({len(policy.categories)}): {', '.join(policy.categories)}")
    for title, text in (
        ("custom_policy", policy.custom_policy),
        ("custom_taxonomy", policy.custom_taxonomy),
    ):
        print(f"\n--- {title} ---")
        print(text if text is not None else "(none: the guard's built-in one)")
    return 0


def _guard_of(named: str | None, path: str) -> dict[str, Any]:
    """The guard a policy uses under a config (its own, else the config's default_guard):
    name and type, and for a cascade its model guard and head (`describe_head`). Read without
    `${VAR}` interpolation, like lint: show must not need the server's secrets."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read file: {exc.strerror or exc}") from None
    data, lines = load_yaml_text(text, path=path)
    data = data if isinstance(data, dict) else {}
    name = named or str(data.get("default_guard", "local"))
    guards = data.get("guards")
    if guards is None:
        guards = {"local": {"type": "embedded"}}
    entry = guards.get(name) if isinstance(guards, dict) else None
    if not isinstance(entry, dict):
        raise ConfigFileError(path, f"the policy's guard {name!r} is not defined", key="guards")
    out: dict[str, Any] = {"name": name, "type": entry.get("type")}
    if entry.get("type") != "cascade":
        return out
    head = Path(str(entry.get("head", "")))
    if not head.is_absolute():
        head = (Path(path).resolve().parent / head).resolve()
    try:
        distilled = load_distilled(head)
    except Exception as exc:
        raise ConfigFileError(
            path,
            f"head file {head} does not load: {exc}",
            line=lines.get(("guards", name, "head")),
            key=f"guards.{name}.head",
        ) from None
    out["model_guard"] = entry.get("guard")
    out.update(describe_head(head, distilled))
    return out


def _print_guard(guard: dict[str, Any]) -> None:
    if guard["type"] != "cascade":
        print(f"resolved guard: {guard['name']} ({guard['type']})")
        return
    t = guard["thresholds"]
    print(
        f"resolved guard: {guard['name']} (cascade; model guard {guard['model_guard']})\n"
        f"head: {guard['head']}  fingerprint {guard['fingerprint']}\n"
        f"      distilled from {guard['distilled_from']}, created {guard['created']}\n"
        f"      thresholds input low {t['input']['low']:g} high {t['input']['high']:g}, "
        f"output low {t['output']['low']:g} high {t['output']['high']:g}"
    )
