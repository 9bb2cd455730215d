"""The shared verdict cache's counters (guard_engine.shared_cache) in the app's registry:

`guardline_shared_cache_lookups_total{outcome}`: hit, miss, unavailable (Redis down or slower
than `cache.redis_timeout_ms`: served as a miss); `guardline_shared_cache_writes_total
{outcome}`: stored, failed, dropped. Read at scrape time: nothing on the request path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from guard_engine.shared_cache import RedisVerdictTier

LOOKUPS = ("hit", "miss", "unavailable")
WRITES = ("stored", "failed", "dropped")


class SharedCacheCollector(Collector):
    def __init__(self, tier: RedisVerdictTier) -> None:
        self._tier = tier

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._tier.counts
        lookups = CounterMetricFamily(
            "guardline_shared_cache_lookups",
            "Shared (Redis) verdict cache lookups after an in-process miss, by outcome",
            labels=["outcome"],
        )
        for outcome in LOOKUPS:
            lookups.add_metric([outcome], counts[outcome])
        yield lookups
        writes = CounterMetricFamily(
            "guardline_shared_cache_writes",
            "Verdicts written to the shared (Redis) verdict cache, by outcome",
            labels=["outcome"],
        )
        for outcome in WRITES:
            writes.add_metric([outcome], counts[outcome])
        yield writes

