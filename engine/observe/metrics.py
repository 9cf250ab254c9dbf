"""Prometheus /metrics of a watched run, in the text format, by prometheus_client.

Rules:
- One custom Collector reads the run's snapshot at scrape time (`RunCollector`): the
  figures are the run's own counters, so nothing is counted twice and nothing is
  counted per call for the metrics' sake.
- A registry of its own per run (no process or platform collectors, no global state).
- Label values: `status` is the HTTP status ("" when no answer came: timeout, connect,
  invalid, dropped); `error_kind` is the record's kind ("" for an ok call).
- `adbatch_schedule_lag_seconds` exists for load and replay only (a run has no schedule);
  `adbatch_target_rate` has no sample when nothing asked for a rate.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from engine.core.stats import Histogram
from engine.core.tally import cumulative
from engine.runtime.watch import Watch

#: Latency buckets in seconds (a call takes a millisecond on a LAN, seconds at worst).
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, doc, buckets=cumulative(hist, BUCKETS_S), sum_value=hist.total / 1000.0
    )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class RunCollector(Collector):
    """The run's series, from one snapshot per scrape."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def collect(self) -> Iterable[Metric]:
        snap = self.watch.snapshot()
        tally = snap.tally
        calls = CounterMetricFamily(
            "adbatch_calls",
            "Calls finished (one per record), by HTTP status and error kind",
            labels=["status", "error_kind"],
        )
        for (status, kind), n in sorted(tally.calls.items()):
            calls.add_metric([status, kind], n)
        retries = CounterMetricFamily(
            "adbatch_retries", "Retries, by why the attempt before failed", labels=["reason"]
        )
        for reason, n in sorted(tally.retries.items()):
            retries.add_metric([reason], n)
        target = GaugeMetricFamily(
            "adbatch_target_rate", "Calls per second the run or its schedule asks for now"
        )
        if snap.target_rate is not None:
            target.add_metric([], snap.target_rate)
        yield calls
        yield _counter("adbatch_attempts", "Delivery calls sent, retries included", tally.attempts)
        yield _histogram(
            "adbatch_call_duration_seconds", "Latency of calls, from the send", tally.latency
        )
        if snap.mode != "run":
            yield _histogram(
                "adbatch_schedule_lag_seconds",
                "How late calls were sent after their scheduled time",
                tally.lag,
            )
        yield GaugeMetricFamily("adbatch_in_flight", "Calls sent, not answered yet", snap.in_flight)
        yield _counter(
            "adbatch_dropped", "Calls dropped: every --max-in-flight slot busy", tally.dropped
        )
        yield retries
        yield _counter(
            "adbatch_token_renewals", "Bearer tokens obtained after the first", tally.token_renewals
        )
        yield target
        yield _counter("adbatch_events_read", "Input records read", tally.events_read)


def metrics_handler(watch: Watch) -> Handler:
    """The aiohttp handler of GET /metrics for `watch`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(watch))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics
