"""The agent's counters and its Prometheus registry (one per agent, never the global one)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
    """Named integer counters, decision latencies, and a private Prometheus registry."""

    def __init__(self, gauges: Callable[[], dict[str, float]] | None = None) -> None:
        # A Counter: a name not counted yet reads 0 (counters appear as they are first used).
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.decision_ms: deque[float] = deque(maxlen=10_000)
        self.registry = CollectorRegistry(auto_describe=False)
        self._gauges: list[Callable[[], dict[str, float]]] = [gauges] if gauges else []
        self.decision_seconds = Histogram(
            "edgemart_agent_decision_seconds",
            "Latency of one local ranking decision",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.registry.register(_CounterCollector(self))

    def count_loop_restart(self, loop: str) -> None:
        """A supervised loop was restarted (`daemonkit.supervisor`): in total and by name."""
        self.inc("loop_restarts")
        self.inc(f"loop_restarts_{loop}")

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def observe_decision(self, ms: float) -> None:
        self.decision_ms.append(ms)
        self.decision_seconds.observe(ms / 1000.0)

    def render(self) -> bytes:
        """The Prometheus text exposition of this agent's metrics."""
        return generate_latest(self.registry)

    def add_gauges(self, source: Callable[[], dict[str, float]]) -> None:
        """Register a source of gauges (sampled at each scrape)."""
        self._gauges.append(source)

    def gauges(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for source in self._gauges:
            out.update(source())
        return out


class _CounterCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for name, value in sorted(self._metrics.counters.items()):
            family = CounterMetricFamily(f"edgemart_agent_{name}", f"Agent counter {name}")
            family.add_metric([], value)
            yield family
        for name, gauge_value in sorted(self._metrics.gauges().items()):
            gauge = GaugeMetricFamily(f"edgemart_agent_{name}", f"Agent gauge {name}")
            gauge.add_metric([], gauge_value)
            yield gauge
