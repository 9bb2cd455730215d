"""Cost of tenant authentication and route matching on the request path.

    .venv/bin/python benchmarks/bench_auth_routing.py [--n 20000]

Prints p50/p99 in microseconds per call. Each sample times a single call with
perf_counter_ns, so the figures include the timer's own cost (~0.1 us). Authentication
hashes the presented key and looks the digest up in a dict, so its cost does not depend on
the number of keys; the table shows 10 and 10,000 keys, for the last key configured and for
an unknown key (a 401).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable

from proxy.auth import Authenticator
from proxy.config_schema import OpenAIUpstreamConfig, RouteConfig, TenantConfig, UpstreamConfig
from proxy.errors import ModelNotFound, Unauthorized
from proxy.routing import Router


def measure(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    q = statistics.quantiles(samples, n=100)
    return q[49] / 1000, q[98] / 1000


def authenticator(keys: int) -> Authenticator:
    tenants = {f"t{i}": TenantConfig(keys=[f"key-{i}-abcdefghijklmnop"]) for i in range(keys)}
    return Authenticator(tenants)


def router(routes: int) -> Router:
    upstreams: dict[str, UpstreamConfig] = {
        "openai": OpenAIUpstreamConfig(type="openai", models=["gpt-4o", "gpt-4o-mini"])
    }
    table = [
        RouteConfig(
            name=f"r{i}", tenants=[f"t{i}"], models=["gpt-*"], upstream="openai", policy="/p"
        )
        for i in range(routes - 1)
    ]
    table.append(RouteConfig(name="default", upstream="openai", policy="/p"))
    return Router(table, upstreams)


def unauthorized(auth: Authenticator, header: str) -> None:
    with contextlib.suppress(Unauthorized):
        auth.authenticate(header)


def miss(r: Router) -> None:
    with contextlib.suppress(ModelNotFound):
        r.match("", "nobody", "claude")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    rows: list[tuple[str, Callable[[], object]]] = []
    for keys in (10, 10_000):
        auth = authenticator(keys)
        header = f"Bearer key-{keys - 1}-abcdefghijklmnop"
        rows.append((f"authenticate, {keys} keys", functools.partial(auth.authenticate, header)))
        unknown = functools.partial(unauthorized, auth, "Bearer not-a-configured-key-0123456789")
        rows.append((f"authenticate, {keys} keys, unknown key", unknown))
    for routes in (3, 50):
        r = router(routes)
        rows += [
            (f"split_path, {routes} routes", functools.partial(r.split_path, "/v1/models")),
            (f"match, last of {routes} routes", functools.partial(r.match, "", "x", "gpt-4o")),
            (f"match, 404 after {routes} routes", functools.partial(miss, r)),
            (f"models_for, {routes} routes", functools.partial(r.models_for, "", "t0")),
        ]
    print("| operation | p50 µs | p99 µs |\n|---|---:|---:|")
    for name, fn in rows:
        p50, p99 = measure(fn, n)
        print(f"| `{name}` | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
