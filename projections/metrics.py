"""Prometheus metrics of the projection worker, the fan-out worker and the query service (docs/METRICS.md).

As in engine/metrics.py: each instance has its own registry, the hot paths
add to plain fields once per batch (or per answer, for queries), and gauges
that mirror a worker's position are read when /metrics is scraped. Lag is
sampled at most every LAG_EVERY_S from JB_EVT's tail (one stream info), and
also taken for free from the `pending` count of each batch read.

Lag in seconds is the age of the last folded event (its JetStream timestamp)
while events are waiting, and 0 when none are: an idle, caught-up projection
has no lag however old the last event is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol.micro import GuardedService, register_status_service
from protocol.subjects import FANOUT_SERVICE, FANOUT_STATUS_SUBJECT, PROJECTION_SERVICE, PROJECTION_STATUS_SUBJECT

log = logging.getLogger("jetbook.metrics")

OTHER: Final = "other"  # a label value outside the known set (engine/metrics.py says why)
LAG_EVERY_S: Final = 1.0

FOLD_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
QUERY_BUCKETS: Final = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class ProjectionMetrics:
    """Events folded, fold batch time, lag; `attach` points the gauges at a running ProjectionRunner."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.folded = 0  # events folded by this worker
        self.batches = 0
        self.last_ts_ns = 0  # JetStream timestamp of the last folded event
        self.tail = -1  # JB_EVT's last sequence, as last read (-1: not yet); with shards, the sum of theirs
        self._tails: dict[str, int] = {}  # each stream's, as the reads saw it
        self.runner: Any = None
        self.fold = Histogram(
            "jetbook_projection_fold_seconds",
            "Folding one batch of events into the read model (decode, plan, one SQLite transaction)",
            buckets=FOLD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_ProjectionCollector(self))

    def attach(self, runner: Any) -> None:
        self.runner = runner

    @property
    def position(self) -> int:
        return int(self.runner.position) if self.runner is not None else 0

    def batch_folded(
        self, n: int, last_seq: int, last_ts_ns: int, pending: int, seconds: float, stream: str = ""
    ) -> None:
        self.folded += n
        self.batches += 1
        self.last_ts_ns = last_ts_ns
        self._tails[stream] = max(self._tails.get(stream, 0), last_seq + pending)
        self.tail = max(self.tail, sum(self._tails.values()))
        self.fold.observe(seconds)

    def lag_events(self) -> int:
        return max(self.tail - self.position, 0) if self.tail >= 0 else 0

    def lag_seconds(self) -> float:
        if not self.lag_events() or not self.last_ts_ns:
            return 0.0
        return max(time.time() - self.last_ts_ns / 1e9, 0.0)

    async def sample_lag(self, read_tails: Callable[[], Awaitable[dict[str, int]]], stop: asyncio.Event) -> None:
        """Every LAG_EVERY_S: each event stream's last sequence (the lag is that minus the position)."""
        while not stop.is_set():
            try:
                tails = await read_tails()
                self._tails = {stream: int(seq) for stream, seq in tails.items()}
                self.tail = sum(self._tails.values())
            except Exception as err:  # JetStream not answering: keep the last figures
                log.debug("event stream tails not read: %s", err)
            try:
                await asyncio.wait_for(stop.wait(), LAG_EVERY_S)
            except TimeoutError:
                pass

    def status(self) -> dict[str, Any]:
        r = self.runner
        return {
            "position": self.position,
            "evt_last_seq": self.tail,
            "lag_events": self.lag_events(),
            "lag_seconds": round(self.lag_seconds(), 3),
            "events_folded": self.folded,
            "read_model": str(r.db_path) if r is not None else None,
            "reopened": r.reopened if r is not None else 0,
            # With shards `position` is the sum over the shard streams: each one's committed position and tail.
            "streams": self.streams(),
        }

    def streams(self) -> dict[str, dict[str, int | None]]:
        """Per event stream read: its committed position and its tail as last read (None: not read yet)."""
        r = self.runner
        positions: dict[str, int] = dict(r.positions) if r is not None else {}
        return {stream: {"position": at, "tail": self._tails.get(stream)} for stream, at in positions.items()}


class _ProjectionCollector(Collector):
    def __init__(self, metrics: ProjectionMetrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        m = self.m
        yield _counter("jetbook_projection_events_folded", "Events folded into the read model by this worker", m.folded)
        yield _gauge("jetbook_projection_position", "JB_EVT sequence the read model has committed", m.position)
        yield _gauge("jetbook_projection_lag_events", "JB_EVT events not yet folded", m.lag_events())
        yield _gauge(
            "jetbook_projection_lag_seconds", "Age of the last folded event while events wait; 0 when caught up",
            m.lag_seconds(),
        )  # fmt: skip
        yield _gauge(
            "jetbook_projection_last_event_timestamp_seconds", "JetStream time of the last folded event (Unix s)",
            m.last_ts_ns / 1e9,
        )  # fmt: skip
        # Per event stream (one, or one per shard): which shard's reading is behind, which the sums above hide.
        streams = m.streams()
        position = GaugeMetricFamily(
            "jetbook_projection_stream_position", "Sequence the read model has committed, per event stream",
            labels=["stream"],
        )  # fmt: skip
        lag = GaugeMetricFamily(
            "jetbook_projection_stream_lag_events", "Events of the stream not yet folded (as last read)",
            labels=["stream"],
        )  # fmt: skip
        for stream, at in streams.items():
            done, tail = at["position"] or 0, at["tail"]
            position.add_metric([stream], done)
            lag.add_metric([stream], max(tail - done, 0) if tail is not None else 0)
        yield position
        yield lag


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


class FanOutMetrics:
    """Output messages republished and the position in JB_EVT; `attach` points them at a running FanOut."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.fanout: Any = None
        self.tail = -1
        self.registry.register(_FanOutCollector(self))

    def attach(self, fanout: Any) -> None:
        self.fanout = fanout

    def batch_read(self, last_seq: int, pending: int) -> None:
        self.tail = max(self.tail, last_seq + pending)

    def lag_events(self) -> int:
        """JB_EVT events read but not yet republished, as last read (0 before the first read)."""
        position = int(self.fanout.position) if self.fanout is not None else 0
        return max(self.tail - position, 0) if self.tail >= 0 else 0

    def status(self) -> dict[str, Any]:
        """The micro status endpoint's answer: where the private feeds and the tape are (JB_EVT positions)."""
        f = self.fanout
        if f is None:
            return {"role": "starting"}
        return {
            "position": int(f.position),
            "evt_last_seq": self.tail,
            "lag_events": self.lag_events(),
            "republished": f.published,
            "resyncs": f.resyncs,
            "streams": dict(f.positions),  # per event stream read (one, or one per shard)
        }


class _FanOutCollector(Collector):
    def __init__(self, metrics: FanOutMetrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        f = self.m.fanout
        published, position, resyncs = (f.published, f.position, f.resyncs) if f is not None else (0, 0, 0)
        yield _counter(
            "jetbook_fanout_events_republished", "Messages stored in JB_ACCT and JB_TAPE by this worker", published
        )
        yield _counter("jetbook_fanout_resyncs", "Times the output streams' tails were read again after a failure",
                       resyncs)  # fmt: skip
        yield _gauge("jetbook_fanout_position", "JB_EVT sequence whose outputs are all stored", position)
        lag = self.m.lag_events()
        yield _gauge("jetbook_fanout_lag_events", "JB_EVT events read but not yet republished (as last read)", lag)


class QueryMetrics:
    """Queries answered by name and error, and their latency, for one query service instance."""

    def __init__(self, names: Collection[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.names = frozenset(names)
        self.answers = Counter(
            "jetbook_query_answers",
            "Queries answered, by query name and error code (error=\"none\" for a result)",
            ["query", "error"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "jetbook_query_duration_seconds",
            "A query from its arrival to its answer (waits for strong and min_seq included), by query name",
            ["query"], buckets=QUERY_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def answered(self, name: str, error: str, seconds: float | None) -> None:
        query = name if name in self.names else OTHER
        self.answers.labels(query, error or "none").inc()
        if seconds is not None:
            self.latency.labels(query).observe(seconds)


async def register_fanout(nc: Any, metrics: FanOutMetrics) -> GuardedService:
    return await register_status_service(
        nc, FANOUT_SERVICE, "the jetbook fan-out (JB_EVT into the private feeds JB_ACCT and the tape JB_TAPE)",
        FANOUT_STATUS_SUBJECT, metrics.status,
    )  # fmt: skip


async def register_projection(nc: Any, metrics: ProjectionMetrics) -> GuardedService:
    return await register_status_service(
        nc, PROJECTION_SERVICE, "a jetbook projection worker (JB_EVT into an SQLite read model)",
        PROJECTION_STATUS_SUBJECT, metrics.status,
    )  # fmt: skip
