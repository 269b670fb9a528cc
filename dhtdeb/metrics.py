"""Prometheus exposition of the same counters /status.json shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, object]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        for group, kind in (
            ("bytes", "counter"),
            ("requests", "counter"),
            ("verify_failures", "counter"),
            ("bans", "counter"),
            ("inquiries", "counter"),
            ("dht", "gauge"),
            ("cache", "gauge"),
        ):
            values = status.get(group)
            if not isinstance(values, dict):
                continue
            name = f"dhtdeb_{group}"
            family: CounterMetricFamily | GaugeMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, f"dhtdeb {group} counters", labels=["kind"])
            else:
                family = GaugeMetricFamily(name, f"dhtdeb {group} gauges", labels=["kind"])
            for key, value in values.items():
                family.add_metric([key], float(value))
            yield family


def metrics_renderer(status: Callable[[], dict[str, object]]) -> Callable[[], bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return lambda: generate_latest(registry)
