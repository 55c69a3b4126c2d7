"""The engine's Prometheus metrics and its `nats.micro` registration (docs/METRICS.md).

The hot path pays per *batch*, not per command or event: a batch read from
JB_CMD is decided, then `EngineMetrics.decided` counts its commands by type,
its events by kind and its rejects by reason into plain dicts, and observes
one decide time. The counts become Prometheus counters only when /metrics is
scraped (a custom collector), so a counter's label lookup and lock never run
per command. Gauges that mirror the service's own fields (role, position,
batches in flight) are read at scrape time too. Measured cost: docs/METRICS.md.

Every label set is bounded: a command type that is not one of the
application's (`command_types`), or anything past MAX_LABELS distinct values,
is counted as `other`; an undecodable command as `invalid`. A hostile client
cannot grow a scrape without bound.

Each instance has its own registry, so several engines in one process (tests,
a standby beside the active) never share a series.

The micro service (`jetbook-engine`, status on STATUS_SUBJECT) answers only to
reply subjects that are inboxes other than its own: the engine's user may
publish on jb.wal.>, and a request with a reply subject there would otherwise
make the engine write a ping's answer into the log (`GuardedService`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from operator import attrgetter
from typing import Any, Final

import msgpack
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol.micro import GuardedService, register_status_service
from protocol.subjects import ENGINE_SERVICE, ENGINE_STATUS_SUBJECT

log = logging.getLogger("jetbook.metrics")

SERVICE_NAME: Final = ENGINE_SERVICE
STATUS_SUBJECT: Final = ENGINE_STATUS_SUBJECT

MAX_LABELS: Final = 64  # distinct values of one label before the rest count as `other`
OTHER: Final = "other"
INVALID: Final = "invalid"
BACKLOG_EVERY_S: Final = 1.0  # JB_CMD's tail is read at most this often

# A batch of up to 1000 commands decides in well under a millisecond to tens of milliseconds.
DECIDE_BUCKETS: Final = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# An atomic batch's commit: a round trip to JetStream, longer under R3 or a slow disk.
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# One command's way through the engine, stage by stage (docs/METRICS.md "Latency stages"): tens of microseconds
# idle, up to seconds behind a backlog.
STAGE_BUCKETS: Final = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
# The stages, in order, each on the engine's monotonic clock (a batch of commands is observed once per stage):
STAGES: Final = (
    "wait",  # the batch's oldest command: delivered to the engine's reader -> taken by the engine
    "decide",  # taken -> every command of the batch decided and encoded
    "send",  # decided -> its last atomic batch written to the connection (waits for a free commit slot)
    "commit",  # an atomic batch written -> its PubAck (JetStream stored it)
)

_TYPE_KEY: Final = b"\xa4type"  # msgpack fixstr "type": the first key of a command as jetbook clients pack it
_type_of = attrgetter("type")


def command_type(data: bytes) -> bytes:
    """A command's `type`, as raw bytes, for counting: cheap when `type` is the map's first key, else a decode."""
    if len(data) > 7 and data[1:6] == _TYPE_KEY and 0x80 <= data[0] <= 0x8F and 0xA0 <= data[6] <= 0xBF:
        return data[7 : 7 + data[6] - 0xA0]
    try:
        body = msgpack.unpackb(data, raw=True)
    except Exception:  # any bytes at all may arrive on JB_CMD
        return b""
    value = body.get(b"type") if isinstance(body, dict) else None
    return value if isinstance(value, bytes) else b""


class Labels:
    """A bounded label: known values pass, the rest become `other` once MAX_LABELS are taken (or always, if known)."""

    def __init__(self, known: Collection[str] | None = None) -> None:
        self.known = frozenset(known) if known is not None else None
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if self.known is not None:
            return value if value in self.known else OTHER
        if value in self.seen:
            return value
        if len(self.seen) >= MAX_LABELS or not value.isascii() or not value.replace("_", "").isalnum():
            return OTHER
        self.seen.add(value)
        return value


def add_counts(into: dict[str, int], raw: Iterable[tuple[Any, int]], label: Callable[[Any], str]) -> None:
    for key, n in raw:
        name = label(key)
        into[name] = into.get(name, 0) + n


class EngineMetrics:
    """What the engine counts; `attach` points the scrape-time gauges at a running EngineService."""

    def __init__(self, command_types: Collection[str] | None = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._commands_raw: Counter[bytes] = Counter()  # raw type bytes -> count, bounded by `decided`
        self._events_raw: Counter[str] = Counter()
        self._rejects_raw: Counter[str] = Counter()
        self._command_label = Labels(command_types)
        self._event_label = Labels()
        self._reason_label = Labels()
        self.decide = Histogram(
            "jetbook_engine_decide_seconds",
            "Deciding one batch of commands read from JB_CMD (parse, decide, evolve, encode; no I/O)",
            buckets=DECIDE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.commit = Histogram(
            "jetbook_engine_commit_seconds",
            "One atomic batch of events: sent to JB_EVT until its PubAck arrives",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        stage = Histogram(
            "jetbook_engine_stage_seconds",
            "One batch of commands through the engine, per stage (wait, decide, send, commit; engine monotonic clock)",
            ["stage"], buckets=STAGE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.stage = stage
        self._wait, self._decide, self._send, self._commit = (stage.labels(name) for name in STAGES)
        self.backlog = -1  # JB_CMD messages not yet decided; -1 until first read
        self.backlog_read_at = 0.0  # monotonic time of that read
        self.service: Any = None
        self.registry.register(_EngineCollector(self))

    def attach(self, service: Any) -> None:
        self.service = service

    def decided(self, batch: list[Any], events: list[Any], seconds: float) -> None:
        """One batch of commands and the events it caused: counts and the decide time."""
        raw = self._commands_raw
        if len(raw) < 4 * MAX_LABELS:
            raw.update(command_type(m.data) for m in batch)
        else:  # hostile types: stop growing the raw keys, count the rest as unknown
            for m in batch:
                key = command_type(m.data)
                raw[key if key in raw else b"\x00"] += 1
        counts = self._events_raw
        rejected = counts["rejected"]
        counts.update(map(_type_of, events))
        if counts["rejected"] != rejected:  # a Counter reads 0 for a missing key without adding it
            for e in events:
                if e.type == "rejected":
                    self._rejects_raw[str(getattr(e, "reason", ""))] += 1
        self.decide.observe(seconds)

    def staged(self, wait: float, decide: float, send: float) -> None:
        """One batch's first three stages, in seconds (a negative wait: its commands were not live deliveries)."""
        if wait >= 0.0:
            self._wait.observe(wait)
        self._decide.observe(decide)
        self._send.observe(send)

    def committed(self, seconds: float) -> None:
        self.commit.observe(seconds)
        self._commit.observe(seconds)

    # --- what the collector reads --------------------------------------------------------------------

    def command_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}

        def label(key: bytes) -> str:
            if key == b"":
                return INVALID
            if key == b"\x00":
                return OTHER
            return self._command_label(key.decode("utf-8", "replace"))

        add_counts(out, list(self._commands_raw.items()), label)
        return out

    def event_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        add_counts(out, list(self._events_raw.items()), self._event_label)
        return out

    def reject_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        add_counts(out, list(self._rejects_raw.items()), self._reason_label)
        return out

    async def sample_backlog(self, read_cmd_tail: Callable[[], Any], stop: asyncio.Event) -> None:
        """Every BACKLOG_EVERY_S: JB_CMD's last sequence minus the last command this engine has applied."""
        while not stop.is_set():
            try:
                tail = int(await read_cmd_tail())
                applied = self.service.engine.state.last_cmd_seq if self.service is not None else 0
                self.backlog = max(tail - applied, 0)
                self.backlog_read_at = time.monotonic()
            except Exception as err:  # JetStream not answering: keep the last figure, say when it was read
                log.debug("JB_CMD tail not read: %s", err)
            try:
                await asyncio.wait_for(stop.wait(), BACKLOG_EVERY_S)
            except TimeoutError:
                pass

    def status(self) -> dict[str, Any]:
        """The micro status endpoint's answer (and `nats micro stats` data): where this engine is."""
        s = self.service
        if s is None:
            return {"role": "starting"}
        lease = s.lease
        return {
            # Which log this engine decides: with shards every shard's engines answer on the one status subject.
            "app": s.app.name,
            "cmd_stream": s.streams.cmd,
            "evt_stream": s.streams.evt,
            "role": s.role,
            "lease_held": s.role == "active",
            "me": lease.holder if lease is not None else None,
            "holder": (lease.current_holder or None) if lease is not None else None,
            "last_cmd_seq": s.engine.state.last_cmd_seq,
            "last_evt_seq": s.known_stored,
            "events": s.engine.state.event_count,
            "backlog": self.backlog,
            "batches_in_flight": s.commits.in_flight,
            "commands_applied": s.commands_done,
            "takeovers": s.takeovers,
            "step_downs": s.step_downs,
        }


class _EngineCollector(Collector):
    def __init__(self, metrics: EngineMetrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable[Any]:
        return []  # nothing is fixed ahead: the registry then calls collect() only at scrape time

    def collect(self) -> Iterator[Any]:
        m = self.m
        for name, doc, label, counts in (
            ("jetbook_engine_commands", "Commands decided, by command type", "type", m.command_counts()),
            ("jetbook_engine_events", "Events produced (committed or in flight), by kind", "kind", m.event_counts()),
            ("jetbook_engine_rejects", "Commands rejected, by reason", "reason", m.reject_counts()),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for label_value, n in sorted(counts.items()):
                family.add_metric([label_value], n)
            yield family
        s = m.service
        backlog = GaugeMetricFamily("jetbook_engine_cmd_backlog", "JB_CMD messages not yet decided (read every 1 s)")
        backlog.add_metric([], m.backlog)
        yield backlog
        if s is None:
            return
        gauges: tuple[tuple[str, str, int], ...] = (
            ("jetbook_engine_lease_holder", "1 while this engine holds the writer lease and decides, else 0",
             1 if s.role == "active" else 0),
            ("jetbook_engine_batches_in_flight", "Atomic batches sent to JB_EVT whose commit is not settled",
             s.commits.in_flight),
            ("jetbook_engine_last_cmd_seq", "JB_CMD sequence of the last command applied to the state",
             s.engine.state.last_cmd_seq),
            ("jetbook_engine_last_evt_seq", "JB_EVT sequence up to which the log is known to hold our events",
             s.known_stored),
        )  # fmt: skip
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        for name, doc, value in (
            ("jetbook_engine_takeovers", "Times this engine became the active one", s.takeovers),
            ("jetbook_engine_step_downs", "Times this engine lost the lease and stepped down", s.step_downs),
            ("jetbook_engine_commit_retries", "Back-offs: ambiguous commits and unanswered reads", s.commit_retries),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c


def serve_metrics(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> Any:
    """/metrics on host:port (a thread of prometheus_client); returns its server, whose shutdown() stops it.

    The process's own CPU, memory and file descriptors (process_*) are added to the registry served."""
    with contextlib.suppress(ValueError):  # already there: served before
        ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


# --- nats.micro -----------------------------------------------------------------------------------------


async def register_engine(nc: Any, metrics: EngineMetrics) -> GuardedService:
    return await register_status_service(
        nc, SERVICE_NAME, "the jetbook matching engine (active or hot standby)", STATUS_SUBJECT, metrics.status
    )
