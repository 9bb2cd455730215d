"""`guardline serve`: run the gateway under uvicorn (uvloop event loop, httptools parser).

The config is loaded and validated before uvicorn starts, so a bad file is one readable line
(`file:line: key ...`) and exit status 2, never a traceback. SIGTERM is uvicorn's graceful
shutdown: the listener closes, in-flight requests get `server.graceful_shutdown_s` to finish.

`--workers N` (or `server.workers`) runs N uvicorn worker processes on one port; their
Prometheus metrics are shared through a temporary directory made for the run
(`proxy/observability/multiprocess.py`), so `/metrics` is right whichever worker answers.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from guard_engine.errors import ConfigFileError

if TYPE_CHECKING:
    from proxy.config_schema import GatewayConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="config.yaml", help="config file (default: %(default)s)"
    )
    parser.add_argument("--host", default=None, help="bind address (default: server.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: server.port)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: server.workers)"
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="uvicorn log level (default: logging.level)",
    )


def uvicorn_options(
    config: GatewayConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str | None = None,
) -> dict[str, Any]:
    """uvicorn's settings for the gateway (also used by benchmarks/bench_passthrough.py)."""
    return {
        "host": host or config.server.host,
        "port": port if port is not None else config.server.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "log_level": log_level or config.logging.level,
        # Keep the JSON logging (and its secret redaction) that the app configured: uvicorn's
        # default log config would give its loggers handlers of their own again.
        "log_config": None,
        # One line per request is the gateway's own request log, not uvicorn's access log.
        "access_log": False,
        # The upstream's Server and Date headers are relayed; the gateway adds none of its own.
        "server_header": False,
        "date_header": False,
        "timeout_graceful_shutdown": math.ceil(config.server.graceful_shutdown_s),
    }


def run(args: argparse.Namespace) -> int:
    from guard_engine.policy.compile import load_policy
    from proxy.config import load_config

    try:
        config = load_config(args.config)
        # Policies too: a broken policy must stop the start here, as one readable line.
        for route in config.routes:
            load_policy(route.policy, known_guards=list(config.guards))
    except ConfigFileError as exc:
        print(f"guardline: invalid config: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"guardline: cannot read config: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    workers = args.workers if args.workers is not None else config.server.workers
    options = uvicorn_options(
        config,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )
    if workers > 1:
        from proxy.observability.multiprocess import shared_metrics_dir

        # Worker processes import the app themselves: hand them the config path.
        os.environ["GUARDLINE_CONFIG"] = os.path.abspath(args.config)
        # /metrics of any worker reports every worker's counts (one directory per run).
        with shared_metrics_dir():
            uvicorn.run("proxy.app:app_from_env", factory=True, workers=workers, **options)
    else:
        from proxy.app import create_app

        uvicorn.run(create_app(config, moderation=True, freeze_gc=True), **options)
    return 0
