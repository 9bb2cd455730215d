"""`guardline policy`: policy tools for the edit-lint-check loop.

guardline policy lint [PATHS...] [--guards a,b] [--config config.yaml]
                                                  validate files (default: policies/*.yaml)
guardline policy show PATH                        print the compiled policy as the guard sees it
"""

from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import asdict
from pathlib import Path

import orjson

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


def run(args: argparse.Namespace) -> int:
    if args.policy_command == "show":
        return _show(args.path, as_json=args.json)
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


def _show(path: str, *, as_json: bool) -> int:
    try:
        policy = load_policy(path)
    except ConfigFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(orjson.dumps(asdict(policy), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{policy.ref}  ({policy.source})")
    print(
        f"guard: {policy.guard or '(default_guard)'}   mode: {policy.mode}   "
        f"threshold: {policy.threshold}   on_guard_error: {policy.on_guard_error}"
    )
    print(f"categories ({len(policy.categories)}): {', '.join(policy.categories)}")
    for title, text in (
        ("custom_policy", policy.custom_policy),
        ("custom_taxonomy", policy.custom_taxonomy),
    ):
        print(f"\n--- {title} ---")
        print(text if text is not None else "(none: the guard's built-in one)")
    return 0
