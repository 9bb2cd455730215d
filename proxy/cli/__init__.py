"""`guardline` command line: one module per subcommand, each with `register(subparsers)`.

Subcommand modules are imported lazily so that `guardline check` does not pay for the
server's imports and `guardline serve` does not pay for the embedded model's.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("proxy.cli.serve", "run the gateway"),
    "check": ("proxy.cli.check", "check one text (and image/response) against a policy"),
    "policy": ("proxy.cli.policy", "policy tools (lint)"),
    "eval": ("proxy.cli.eval", "measure a guard on labelled JSONL data"),
    "guard-server": ("proxy.cli.guard_server", "print or run the SGLang launch command"),
    "audit": ("proxy.cli.audit", "list, show and export audit records"),
    "distill": ("proxy.cli.distill", "train a policy's own embedded head from its audit trail"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="guardline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not args_list or args_list[0] in ("-h", "--help") or args_list[0] not in COMMANDS:
        parser.parse_args(args_list)  # prints help or the unknown-command error
        parser.print_help()
        return 2
    name = args_list[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(
        prog=f"guardline {name}", description=COMMANDS[name][1]
    )
    module.register(command_parser)
    args = command_parser.parse_args(args_list[1:])
    try:
        result: int = module.run(args)
    except BrokenPipeError:
        # `guardline audit list | head`: the reader left; that is not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


if __name__ == "__main__":
    raise SystemExit(main())
