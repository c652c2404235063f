"""The agent's counters and decision latencies, rendered in the Prometheus text format.

prometheus_client is imported on the first scrape, not at start: a thin device that is never
scraped does not carry it (~5 MB of a process that should stay under 48 MB).
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric

DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
"""Upper bounds (seconds) of the decision latency histogram's buckets (+Inf after them)."""

COUNTERS = (
    "signals_accepted",
    "signals_acked",
    "signals_evicted",
    "signals_expired",
    "signals_refused",
    "batches_sent",
    "batches_acked",
    "batches_resent",
    "acks_unknown",
    "acks_forged",
    "offers_verified",
    "offers_rejected",
    "offers_revoked",
    "bundles_verified",
    "bundles_rejected",
    "bundles_duplicate",
    "catalogs_rolled_back",
    "decisions",
    "outcomes_recorded",
    "outcomes_acked",
    "api_rejected",
    "messages_bad",
    "link_connects",
    "link_failures",
    "memory_over_budget",
    "memory_page_outs",
    "memory_paged_out_bytes",
)


class Metrics:
    """Named integer counters, decision latencies, and their Prometheus exposition (a private
    registry, made on the first `render`)."""

    def __init__(self, gauges: Callable[[], dict[str, float]] | None = None) -> None:
        # A Counter: a name not counted yet reads 0 (counters appear as they are first used).
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.decision_ms: deque[float] = deque(maxlen=10_000)
        self._gauges: list[Callable[[], dict[str, float]]] = [gauges] if gauges else []
        self.decision_buckets = [0] * (len(DECISION_BUCKETS) + 1)
        """Decisions per latency bucket (not cumulative; the last one is +Inf)."""
        self.decision_sum_s = 0.0
        self._registry: Any = None

    def count_loop_restart(self, loop: str) -> None:
        """A supervised loop was restarted (`daemonkit.supervisor`): in total and by name."""
        self.inc("loop_restarts")
        self.inc(f"loop_restarts_{loop}")

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def observe_decision(self, ms: float) -> None:
        self.decision_ms.append(ms)
        seconds = ms / 1000.0
        self.decision_buckets[bisect.bisect_left(DECISION_BUCKETS, seconds)] += 1
        self.decision_sum_s += seconds

    def render(self) -> bytes:
        """The Prometheus text exposition of this agent's metrics."""
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415 - lazy

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_collector(self))
        return bytes(generate_latest(self._registry))

    def add_gauges(self, source: Callable[[], dict[str, float]]) -> None:
        """Register a source of gauges (sampled at each scrape)."""
        self._gauges.append(source)

    def gauges(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for source in self._gauges:
            out.update(source())
        return out


def _collector(metrics: Metrics) -> Any:
    """A Prometheus collector of `metrics` (made on the first scrape, with the import)."""
    from prometheus_client.core import (  # noqa: PLC0415 - lazy, see the module's doc
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector  # noqa: PLC0415

    class _Collector(Collector):
        def collect(self) -> Iterator[Metric]:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(
                (*DECISION_BUCKETS, float("inf")), metrics.decision_buckets, strict=True
            ):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            histogram = HistogramMetricFamily(
                "edgemart_agent_decision_seconds", "Latency of one local ranking decision"
            )
            histogram.add_metric([], buckets, metrics.decision_sum_s)
            yield histogram
            for name, value in sorted(metrics.counters.items()):
                family = CounterMetricFamily(f"edgemart_agent_{name}", f"Agent counter {name}")
                family.add_metric([], value)
                yield family
            for name, gauge_value in sorted(metrics.gauges().items()):
                gauge = GaugeMetricFamily(f"edgemart_agent_{name}", f"Agent gauge {name}")
                gauge.add_metric([], gauge_value)
                yield gauge

    return _Collector()
