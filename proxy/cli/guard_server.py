"""`guardline guard-server`: print (or with --run, exec) the SGLang command for a configured guard.

SGLang is an optional extra (`pip install 'guardline[sglang]'`) needing a GPU; it is never a
dependency of the gateway. The flags come from docs/guard-models.md, "Serving Nemotron on
SGLang":
`--enable-multimodal` is required or SGLang silently drops images.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from urllib.parse import urlsplit

from guard_engine.errors import ConfigFileError
from proxy.config_schema import SGLangGuardConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--guard", help="guard name (default: the first sglang guard)")
    parser.add_argument("--host", default="127.0.0.1", help="address SGLang binds")
    parser.add_argument(
        "--run", action="store_true", help="exec the command instead of printing it"
    )


def launch_command(guard: SGLangGuardConfig, *, host: str) -> list[str]:
    port = urlsplit(guard.urls[0]).port or 30000
    return [
        sys.executable, "-m", "sglang.launch_server",
        "--model-path", guard.model,
        "--host", host, "--port", str(port),
        "--dtype", "bfloat16", "--context-length", "4096",
        "--trust-remote-code", "--enable-multimodal",
        # lpm favours prefix-cache hits: every check of a policy shares its long prefix.
        "--schedule-policy", "lpm",
    ]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from proxy.config import load_config

    try:
        config = load_config(args.config)
    except ConfigFileError as exc:
        print(f"guardline guard-server: {exc}", file=sys.stderr)
        return 2
    guards = {n: g for n, g in config.guards.items() if isinstance(g, SGLangGuardConfig)}
    name = args.guard or next(iter(guards), None)
    if name is None or name not in guards:
        print(
            f"guardline guard-server: no sglang guard named {name!r} in {args.config}",
            file=sys.stderr,
        )
        return 2
    command = launch_command(guards[name], host=args.host)
    if not args.run:
        print("SGLANG_DISABLE_CUDNN_CHECK=1 " + shlex.join(command))
        return 0
    if shutil.which(command[0]) is None or not _sglang_installed():
        print(
            "guardline guard-server: SGLang is not installed: pip install 'guardline[sglang]' "
            "(needs a GPU)",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("SGLANG_DISABLE_CUDNN_CHECK", "1")
    os.execv(command[0], command)


def _sglang_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang") is not None
