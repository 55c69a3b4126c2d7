"""The whole `jetbook bench` run: six measurements of one seeded flow, a table, and the JSON.

Order of the run, each network phase on fresh streams (JB_EVT denies purge, so
the streams are deleted and created again between phases):

1. transport floor   the null engine and null reader of floor.py as subprocesses;
                     the flow's commands published by the same concurrent clients as in (2)
2. end to end        `jetbook engine` and `jetbook project` as subprocesses; the same
                     commands, the same clients; orders/s until the last event is in JB_EVT
3. latency           on the same running system, open-loop rate-limited publishing at
                     10%, 50% and 90% of (2), each command timed from its intended send
                     time to the first event of it seen on jb.evt.> (HDR histogram)
5. projection        live during (2); then a rebuild from 0 into a new file
4. core              in this process, with every other process stopped
6. memory            a subprocess holding --resting orders

The clock of (1) and (2) runs from the first publish to the sample at which
JB_EVT holds every event the flow must produce (the generator knows the count),
so both figures include the publishing and are directly comparable.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from engine.commit import DEFAULT_INFLIGHT
from jetbook.bench.procs import (
    BenchError,
    Children,
    Probe,
    attach_py_spy,
    cpu_delta,
    cpu_snapshot,
    role_argv,
    tail,
    wait_for,
)
from jetbook.bench.stages import breakdown, delta, first_event_ts, free_port, scrape_stages, stream_ts
from jetbook.bench.workload import Cmd, Flow, avg_size
from protocol.subjects import CMD_STREAM, EVT_STREAM, HDR_MSG_ID

LOADS = (0.1, 0.5, 0.9)
HDR_MAX_US = 120_000_000  # the slowest latency the histogram can hold: 2 minutes


@dataclass
class Options:
    nats_url: str | None = None
    orders: int = 100_000
    markets: int = 4
    seed: int = 1
    accounts: int = 100
    clients: int = 0  # 0: one per market
    window: int = 500  # un-acked publishes per client
    resting: int = 1_000_000
    quick: bool = False
    latency_seconds: float = 5.0
    core_repeat: int = 3
    runs: int = 3  # floor and end-to-end runs, alternated; the best of each is reported
    floor_inflight: int = DEFAULT_INFLIGHT  # as many commits in flight as the engine
    poll: float = 0.02
    stall: float = 60.0
    json_path: Path | None = None
    plot_path: Path | None = None
    py_spy: Path | None = None
    keep: bool = False
    tls: bool = False  # TLS between every client and the bench's own server (a throwaway CA)
    command: list[str] = field(default_factory=list)

    def effective_clients(self) -> int:
        return max(1, min(self.clients or self.markets, self.markets))


# --- publishing -----------------------------------------------------------------------------------


class Clients:
    """Concurrent clients, each its own NATS connection; client i sends the commands of markets i, i+C, ..."""

    def __init__(self, conns: list[Any], window: int) -> None:
        self.conns = conns
        self.js = [nc.jetstream(publish_async_max_pending=window) for nc in conns]

    @classmethod
    async def open(cls, url: str, n: int, window: int) -> Clients:
        from jetbook.wiring import connect

        return cls([await connect(url, f"jetbook-bench-client-{i}", reconnect=False) for i in range(n)], window)

    def of(self, cmd: Cmd) -> Any:
        return self.js[cmd.market % len(self.js)]

    async def close(self) -> None:
        for nc in self.conns:
            await nc.close()


async def publish_in_order(js: Any, cmds: list[Cmd]) -> list[int]:
    """One acked publish after another (the setup): their JB_CMD sequences."""
    return [int((await js.publish(c.subject, c.data, headers={HDR_MSG_ID: c.msg_id})).seq) for c in cmds]


def check_acks(acks: list[Any], want: int) -> list[int]:
    seqs = []
    for ack in acks:
        if ack.stream != CMD_STREAM or ack.duplicate:
            raise BenchError(f"unexpected PubAck {ack}: the flow's commands must each be stored once in JB_CMD")
        seqs.append(int(ack.seq))
    if len(set(seqs)) != want:
        raise BenchError(f"{len(set(seqs))} commands stored, {want} sent")
    return seqs


async def publish_closed_loop(clients: Clients, cmds: list[Cmd]) -> float:
    """Every client sends its markets' commands as fast as its window of un-acked publishes allows; seconds."""
    shares: list[list[Cmd]] = [[] for _ in clients.js]
    for c in cmds:
        shares[c.market % len(shares)].append(c)

    async def one(js: Any, items: list[Cmd]) -> list[Any]:
        futures = [await js.publish_async(c.subject, c.data, headers={HDR_MSG_ID: c.msg_id}) for c in items]
        if futures:
            await js.publish_async_completed()
        return [f.result() for f in futures]

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(js, share) for js, share in zip(clients.js, shares, strict=True)))
    elapsed = time.perf_counter() - t0
    check_acks([a for r in results for a in r], len(cmds))
    return elapsed


# --- sampling -------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the clock started
    cmd_last: int
    evt_last: int
    evt_cmd: int  # cmd_seq of the newest event
    proj: int


class Sampler:
    """Polls the stream heads and the read model every `poll` seconds from `t0` on."""

    def __init__(self, probe: Probe, children: Children, poll: float) -> None:
        self.probe = probe
        self.children = children
        self.poll = poll
        self.t0 = time.perf_counter()
        self.samples: list[Sample] = []

    async def sample(self) -> Sample:
        self.children.check_alive()
        cmd_last = await self.probe.cmd_last()
        evt_last, evt_cmd = await self.probe.evt()
        s = Sample(time.perf_counter() - self.t0, cmd_last, evt_last, evt_cmd, self.probe.projection())
        self.samples.append(s)
        return s

    async def until(self, what: str, done: Any, stall: float) -> Sample:
        """Sample until done(sample); BenchError after `stall` seconds without any progress."""
        last_change, prev = time.perf_counter(), None
        while True:
            s = await self.sample()
            if done(s):
                return s
            state = (s.cmd_last, s.evt_last, s.proj)
            if state != prev:
                prev, last_change = state, time.perf_counter()
            elif time.perf_counter() - last_change > stall:
                raise BenchError(f"no progress for {stall:.0f}s waiting for {what}: {s}")
            await asyncio.sleep(self.poll)

    def timeline(self, points: int = 400) -> list[list[float]]:
        step = max(1, len(self.samples) // points)
        chosen = [*self.samples[::step], self.samples[-1]] if self.samples else []
        return [[round(s.t, 3), s.cmd_last, s.evt_last, s.evt_cmd, s.proj] for s in chosen]


# --- the phases -----------------------------------------------------------------------------------


async def fresh_streams(js: Any) -> None:
    from nats.js.errors import NotFoundError

    from protocol.streams import ensure_streams

    for name in (CMD_STREAM, EVT_STREAM):
        try:
            await js.delete_stream(name)
        except NotFoundError:
            pass
    await ensure_streams(js)


async def refuse_foreign_streams(js: Any) -> None:
    """With --nats-url: the bench deletes JB_CMD and JB_EVT, so it refuses a server whose streams hold anything."""
    from nats.js.errors import NotFoundError

    for name in (CMD_STREAM, EVT_STREAM):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            continue
        if int(info.state.messages or 0) > 0:
            raise BenchError(
                f"{name} on this server holds {info.state.messages} messages; the benchmark deletes and recreates"
                " JB_CMD and JB_EVT, so point it at a scratch server (or run it without --nats-url)"
            )


def per_command_us(cpu_s: float, commands: int) -> float:
    """User + sys CPU of one process over the commands it handled, µs: steadier on a shared machine than a rate."""
    return round(cpu_s * 1e6 / commands, 1) if commands else 0.0


def _rate(n: int, seconds: float) -> int:
    return round(n / seconds) if seconds > 0 else 0


async def phase_floor(
    opts: Options, url: str, js: Any, flow: Flow, setup_events: int, events_total: int, orders: list[Cmd],
    tmp: Path, children: Children, server_pid: int | None,
) -> dict[str, Any]:  # fmt: skip
    from jetbook.bench.floor import write_events_file

    await fresh_streams(js)
    events_file = tmp / "floor-events.msgpack"
    write_events_file(events_file, flow.events_by_msg_id)
    base = [sys.executable, "-m", "jetbook.bench.floor"]
    engine = children.spawn(
        "null-engine", [*base, "engine", "--nats-url", url, "--events", str(events_file),
                        "--inflight", str(opts.floor_inflight)],
    )  # fmt: skip
    reader = children.spawn("null-reader", [*base, "reader", "--nats-url", url])
    probe = Probe(js)
    clients = await Clients.open(url, opts.effective_clients(), opts.window)
    try:
        await publish_in_order(js, flow.setup)

        async def setup_done() -> bool:
            return (await probe.evt())[0] >= setup_events

        await wait_for("the null engine to write the setup events", setup_done, children, 60)
        pids = {"null engine": engine.proc.pid, "null reader": reader.proc.pid}
        sampler, cpu0, done, pub_s = await _publish_until_written(
            opts, probe, children, clients, orders, pids, server_pid, "the floor's events", events_total
        )
        cpu = cpu_delta(cpu0, cpu_snapshot(pids))
    finally:
        await clients.close()
        children.stop(engine)
        children.stop(reader)
    n, events = len(orders), events_total - setup_events
    return {
        "what": "publish -> JB_CMD -> null engine (no matching: pre-encoded events) -> atomic batches -> JB_EVT"
        " -> null reader",
        "inflight_commits": opts.floor_inflight,
        "seconds": round(done.t, 3),
        "orders_per_s": _rate(n, done.t),
        "events_per_s": _rate(events, done.t),
        "publish_seconds": round(pub_s, 3),
        "publish_per_s": _rate(n, pub_s),
        "events": events,
        "cpu_s": cpu,
        "null_engine_cpu_us_per_command": per_command_us(cpu.get("null engine", 0.0), n),
        "timeline": sampler.timeline(),
        "jb_evt_last_seq": done.evt_last,
    }


async def _publish_until_written(
    opts: Options, probe: Probe, children: Children, clients: Clients, orders: list[Cmd], pids: dict[str, int],
    server_pid: int | None, what: str, events_total: int,
) -> tuple[Sampler, dict[str, Any], Any, float]:  # fmt: skip
    """Publish every order from the clients while sampling, until JB_EVT holds `events_total` events.

    Returns the sampler, the CPU counters at the start (`pids` gains nats-server's), the sample at
    which the events were all written, and how long publishing took.
    """
    if server_pid:
        pids["nats-server"] = server_pid
    sampler = Sampler(probe, children, opts.poll)
    cpu0 = cpu_snapshot(pids)
    sampler.t0 = time.perf_counter()
    publish = asyncio.create_task(publish_closed_loop(clients, orders))
    done = await sampler.until(what, lambda s: s.evt_last >= events_total, opts.stall)
    return sampler, cpu0, done, await publish


async def phase_end_to_end(
    opts: Options, url: str, js: Any, flow: Flow, setup_events: int, events_total: int, orders: list[Cmd],
    db: Path, children: Children, server_pid: int | None, *, profile: bool = True,
) -> tuple[dict[str, Any], dict[str, Any], Probe]:  # fmt: skip
    await fresh_streams(js)
    metrics_port = free_port()  # the engine's stage histograms, read by the latency phase
    engine = children.spawn("engine", role_argv("engine", url, metrics_port=metrics_port))
    projection = children.spawn("projection", role_argv("project", url, db))
    probe = Probe(js, db)
    clients = await Clients.open(url, opts.effective_clients(), opts.window)
    try:
        await publish_in_order(js, flow.setup)

        async def setup_done() -> bool:
            return (await probe.evt())[0] >= setup_events and probe.projection() >= setup_events

        await wait_for("the engine and the projection to fold the setup", setup_done, children, 60)
        if opts.py_spy and profile:
            attach_py_spy(children, engine, opts.py_spy)
            attach_py_spy(children, projection, opts.py_spy)
            await asyncio.sleep(1.0)  # py-spy needs a moment to attach; not a wait for an outcome
        pids = {"engine": engine.proc.pid, "projection": projection.proc.pid}
        sampler, cpu0, done, pub_s = await _publish_until_written(
            opts, probe, children, clients, orders, pids, server_pid, "the engine's events", events_total
        )
        cpu_engine_done = cpu_delta(cpu0, cpu_snapshot(pids))
        proj_done = await sampler.until("the projection", lambda s: s.proj >= events_total, opts.stall)
        cpu_proj_done = cpu_delta(cpu0, cpu_snapshot(pids))
    finally:
        await clients.close()
    n, events = len(orders), events_total - setup_events
    e2e = {
        "what": "publish -> JB_CMD -> `jetbook engine` -> JB_EVT, with `jetbook project` running",
        "seconds": round(done.t, 3),
        "orders_per_s": _rate(n, done.t),
        "events_per_s": _rate(events, done.t),
        "publish_seconds": round(pub_s, 3),
        "publish_per_s": _rate(n, pub_s),
        "events": events,
        "last_event_cmd_seq": done.evt_cmd,
        "cpu_s": cpu_engine_done,
        "timeline": sampler.timeline(),
        "engine_cpu_us_per_command": per_command_us(cpu_engine_done.get("engine", 0.0), n),
        "pids": pids,
        "metrics_port": metrics_port,
    }
    projection_live = {
        "seconds": round(proj_done.t, 3),
        "events_per_s": _rate(events, proj_done.t),
        "lag_events_at_end": done.evt_last - done.proj,
        "lag_seconds_at_end": round(proj_done.t - done.t, 3),
        "cpu_s": cpu_proj_done,
    }
    return e2e, projection_live, probe


# The kinds that can be a command's first event for this flow (places and cancels): its order_accepted,
# order_cancelled or rejected, or for a compact batch (v1.3) its orders_accepted or orders_cancelled. Fills
# always follow their order_accepted in the same atomic batch, so not decoding them takes a third of the work
# off the measuring process without changing any figure.
FIRST_EVENT_KINDS = ("order_accepted", "order_cancelled", "rejected", "orders_accepted", "orders_cancelled")


class FirstEvents:
    """The arrival time of the first event of each command seen on jb.evt.> (committed, republished events)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.subs: list[Any] = []

    async def start(self, nc: Any) -> None:
        unpackb, first, clock = msgpack.unpackb, self.first, time.perf_counter

        async def on_event(msg: Any) -> None:
            t = clock()
            seq = unpackb(msg.data, raw=False)["cmd_seq"]
            if seq not in first:
                first[seq] = t

        for kind in FIRST_EVENT_KINDS:
            sub = await nc.subscribe(f"jb.evt.*.{kind}", cb=on_event, pending_msgs_limit=-1, pending_bytes_limit=-1)
            self.subs.append(sub)

    async def stop(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()


async def open_loop(clients: Clients, cmds: list[Cmd], rate: float) -> tuple[list[float], list[float], list[Any]]:
    """Send cmds at `rate` per second on a fixed schedule, whatever the acks do.

    Returns the intended send times, the actual ones and the PubAck futures.
    Latency is counted from the intended time, so a publisher that falls behind
    its schedule shows up in the figures instead of hiding the queue
    (coordinated omission).
    """
    interval = 1.0 / rate
    start = time.perf_counter() + 0.01
    intended = [start + i * interval for i in range(len(cmds))]
    actual: list[float] = []
    futures: list[Any] = []
    i, n = 0, len(cmds)
    clock = time.perf_counter
    while i < n:
        burst = 0
        while i < n and intended[i] <= clock() and burst < 200:
            c = cmds[i]
            actual.append(clock())
            futures.append(await clients.of(c).publish_async(c.subject, c.data, headers={HDR_MSG_ID: c.msg_id}))
            i += 1
            burst += 1
        if i < n:
            # yield even when late, so that the event subscriber's callbacks stamp arrivals as they come
            await asyncio.sleep(max(0.0, intended[i] - clock()))
    for js in clients.js:
        await js.publish_async_completed()
    return intended, actual, futures


def histogram() -> Any:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError as err:
        raise BenchError("the latency histogram needs the bench extra: pip install 'jetbook[bench]'") from err
    return HdrHistogram(1, HDR_MAX_US, 3)


PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99, 100.0)


@dataclass
class Level:
    """One latency run's commands, planned ahead so that the floor can be given the very same ones."""

    load: float
    rate: float
    cmds: list[Cmd]
    evt_first: int  # JB_EVT sequence of their first event
    want_events: int  # JB_EVT holds this many events once they are all decided


def plan_levels(opts: Options, flow: Flow, max_rate: int) -> list[Level]:
    """The commands of every latency run, with their events kept (the floor's null engine writes those)."""
    flow.keep_events = True
    plan = []
    for load in LOADS:
        rate = max(load * max_rate, 1.0)
        evt_first = flow.events + 1
        cmds = flow.take(max(200, int(rate * opts.latency_seconds)))
        plan.append(Level(load, rate, cmds, evt_first, flow.events))
    flow.keep_events = False
    return plan


async def phase_latency(
    opts: Options, url: str, plan: list[Level], max_rate: int, probe: Probe, children: Children,
    pids: dict[str, int], metrics_port: int = 0,
) -> dict[str, Any]:  # fmt: skip
    from jetbook.wiring import connect

    watcher_nc = await connect(url, "jetbook-bench-latency", reconnect=False)
    watcher = FirstEvents()
    await watcher.start(watcher_nc)
    clients = await Clients.open(url, opts.effective_clients(), opts.window)
    levels = []
    try:
        for level in plan:
            load, rate, cmds, evt_first, want_events = (
                level.load, level.rate, level.cmds, level.evt_first, level.want_events
            )  # fmt: skip
            stages0 = await asyncio.to_thread(scrape_stages, metrics_port) if metrics_port else None
            cpu0 = cpu_snapshot(pids)
            wall_offset = time.time() - time.perf_counter()  # the bench's clock to this host's wall clock
            intended, actual, futures = await open_loop(clients, cmds, rate)
            sent_s = actual[-1] - actual[0] if len(actual) > 1 else 0.0
            seqs = check_acks([f.result() for f in futures], len(cmds))

            async def all_seen(seqs: list[int] = seqs, want: int = want_events) -> bool:
                return (await probe.evt())[0] >= want and all(s in watcher.first for s in seqs)

            await wait_for(f"the events of the {load:.0%} load run", all_seen, children, opts.stall)
            cpu = cpu_delta(cpu0, cpu_snapshot(pids))
            engine_stages = (
                delta(await asyncio.to_thread(scrape_stages, metrics_port), stages0) if stages0 is not None else None
            )
            cmd_ts = dict(zip(*(await stream_ts(probe.js, CMD_STREAM, min(seqs), max(seqs)))[:2], strict=True))
            evt_ts = first_event_ts(*await stream_ts(probe.js, EVT_STREAM, evt_first, want_events))
            stages = breakdown(
                cmd_seqs=seqs, intended=intended, actual=actual, seen=[watcher.first[s] for s in seqs],
                wall_offset=wall_offset, cmd_ts=cmd_ts, evt_ts=evt_ts, engine=engine_stages,
            )  # fmt: skip
            hist, lag, from_send = histogram(), histogram(), histogram()
            for seq, t, a in zip(seqs, intended, actual, strict=True):
                seen = watcher.first[seq]
                hist.record_value(max(1, round((seen - t) * 1e6)))
                lag.record_value(max(1, round((a - t) * 1e6)))
                from_send.record_value(max(1, round((seen - a) * 1e6)))
            pct = {p: hist.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
            levels.append({
                "load": load,
                "target_per_s": round(rate),
                "achieved_per_s": _rate(len(cmds) - 1, sent_s),
                "commands": len(cmds),
                "p50_ms": pct[50.0],
                "p90_ms": pct[90.0],
                "p99_ms": pct[99.0],
                "p99_9_ms": pct[99.9],
                "max_ms": hist.get_max_value() / 1000,
                "mean_ms": round(hist.get_mean_value() / 1000, 3),
                # how late the publisher itself sent (actual - intended): part of the latency above
                "send_lag_p99_ms": lag.get_value_at_percentile(99.0) / 1000,
                "send_lag_max_ms": lag.get_max_value() / 1000,
                # the same latency counted from the actual send: what the system took once the command was out
                "from_send_p50_ms": from_send.get_value_at_percentile(50.0) / 1000,
                "from_send_p99_ms": from_send.get_value_at_percentile(99.0) / 1000,
                "from_send_p99_9_ms": from_send.get_value_at_percentile(99.9) / 1000,
                # the measuring client fell further behind its schedule than the system took: the figures above
                # are the client's lag more than the engine's latency, and the report says so
                "sender_lagged": lag.get_value_at_percentile(99.0) > from_send.get_value_at_percentile(99.0),
                "cpu_s": cpu,
                "engine_cpu_us_per_command": per_command_us(cpu.get("engine", 0.0), len(cmds)),
                # where the milliseconds go (jetbook/bench/stages.py says which clock each stage is on)
                "stages": stages,
                # the whole distribution, for the plot: [percentile, ms]
                "distribution": [
                    [round(it.percentile_level_iterated_to, 4), it.value_iterated_to / 1000]
                    for it in hist.get_percentile_iterator(5)
                ],
                "hdr": hist.encode().decode(),  # HdrHistogram's own compressed form, in microseconds
            })  # fmt: skip
    finally:
        await clients.close()
        await watcher.stop()
        await watcher_nc.close()
    return {
        "what": "intended send time (open loop) -> the command's first event (order_accepted, order_cancelled or"
        " rejected) seen by a subscriber on jb.evt.>",
        "unit": "ms",
        "max_rate_from_end_to_end": max_rate,
        "levels": levels,
    }


async def phase_floor_latency(
    opts: Options, url: str, js: Any, flow: Flow, plan: list[Level], orders: list[Cmd], tmp: Path,
    children: Children,
) -> dict[str, Any]:  # fmt: skip
    """The latency runs again with the null engine (floor.py) in the engine's place: same commands, same rates.

    The streams are made again and the setup and the orders replayed first, so that every command lands at the
    JB_CMD sequence it had with the engine and the pre-encoded events (which carry it) match.
    """
    from jetbook.bench.floor import write_events_file

    await fresh_streams(js)
    events_file = tmp / "floor-latency-events.msgpack"
    write_events_file(events_file, flow.events_by_msg_id)
    base = [sys.executable, "-m", "jetbook.bench.floor"]
    engine = children.spawn(
        "null-engine-latency", [*base, "engine", "--nats-url", url, "--events", str(events_file),
                                "--inflight", str(opts.floor_inflight)],
    )  # fmt: skip
    reader = children.spawn("null-reader-latency", [*base, "reader", "--nats-url", url])
    probe = Probe(js)
    try:
        clients = await Clients.open(url, opts.effective_clients(), opts.window)
        try:
            await publish_in_order(js, flow.setup)
            await publish_closed_loop(clients, orders)
        finally:
            await clients.close()
        before = plan[0].evt_first - 1 if plan else 0

        async def orders_done() -> bool:
            return (await probe.evt())[0] >= before

        await wait_for("the null engine to write the orders' events", orders_done, children, opts.stall)
        pids = {"null engine": engine.proc.pid, "null reader": reader.proc.pid}
        return await phase_latency(opts, url, plan, 0, probe, children, pids)
    finally:
        children.stop(engine)
        children.stop(reader)


def compare_to_floor(engine: dict[str, Any], floor: dict[str, Any]) -> None:
    """The floor's levels beside the engine's, and the engine's p50 and p99 as multiples of the floor's."""
    engine["floor_levels"] = floor["levels"]
    for mine, theirs in zip(engine["levels"], floor["levels"], strict=True):
        for key in ("p50_ms", "p99_ms"):
            mine[f"{key[:-3]}_x_floor"] = round(mine[key] / theirs[key], 2) if theirs[key] > 0 else None


def read_model_checks(probe: Probe, flow: Flow) -> dict[str, list[Any]]:
    """The read model against the flow generator's own fold: every command arrived and was applied once."""
    c = flow.counts
    n = probe.counts()
    levels = {
        (lv["market_id"], lv["side"], lv["price"]): (lv["qty"], lv["orders"])
        for lv in probe.book_levels()
        if lv["orders"] > 0
    }
    want = flow.book_levels()
    differing = sum(1 for k in levels.keys() | want.keys() if levels.get(k) != want.get(k))
    return {
        "projection_position": [probe.projection(), flow.events],
        "read_model_orders": [n["orders"], c["accepted"]],
        "read_model_trades": [n["trades"], c["fills"]],
        "read_model_cancelled": [n["cancelled_orders"], c["cancelled"]],
        "read_model_rejections": [n["rejections"], c["rejected"]],
        "read_model_book_levels_differing": [differing, 0],
    }  # fmt: skip


async def phase_rebuild(opts: Options, url: str, js: Any, tmp: Path, children: Children, total: int) -> dict[str, Any]:
    db = tmp / "rebuild.db"
    probe = Probe(js, db)
    t0 = time.perf_counter()
    child = children.spawn("projection-rebuild", role_argv("project", url, db))
    cpu0 = cpu_snapshot({"projection": child.proc.pid})
    first: tuple[float, int] | None = None
    last_change, prev = time.perf_counter(), -1
    try:
        while True:
            children.check_alive()
            pos = probe.projection()
            now = time.perf_counter()
            if first is None and pos > 0:
                first = (now - t0, pos)
            if pos >= total:
                break
            if pos != prev:
                prev, last_change = pos, now
            elif now - last_change > opts.stall:
                raise BenchError(f"projection rebuild stuck at {pos} of {total}")
            await asyncio.sleep(opts.poll)
        cpu = cpu_delta(cpu0, cpu_snapshot({"projection": child.proc.pid}))
    finally:
        probe.close()
        children.stop(child)
    elapsed = now - t0
    assert first is not None
    span = elapsed - first[0]
    return {
        "events": total,
        "seconds_from_spawn": round(elapsed, 3),
        "events_per_s_from_spawn": _rate(total, elapsed),
        "events_per_s": _rate(total - first[1], span),
        "cpu_s": cpu,
    }


async def network_phases(
    opts: Options, url: str, flow: Flow, orders: list[Cmd], tmp: Path, children: Children, server_pid: int | None
) -> dict[str, Any]:
    from jetbook.wiring import connect

    nc = await connect(url, "jetbook-bench", reconnect=False)
    js = nc.jetstream()
    v = nc.connected_server_version
    out: dict[str, Any] = {"nats_server": f"{v.major}.{v.minor}.{v.patch}"}
    setup_events = len(flow.setup)  # one market_created each
    events_total = flow.events
    probe: Probe | None = None
    try:
        if opts.nats_url:
            await refuse_foreign_streams(js)
        floors: list[dict[str, Any]] = []
        e2es: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for k in range(opts.runs):
            last = k == opts.runs - 1
            run_no = f" (run {k + 1} of {opts.runs})" if opts.runs > 1 else ""
            say(f"1/6 transport floor{run_no}: {len(orders):,} commands, {events_total - setup_events:,} events ...")
            floors.append(
                await phase_floor(opts, url, js, flow, setup_events, events_total, orders, tmp, children, server_pid)
            )
            say(f"    {floors[-1]['orders_per_s']:,} orders/s")
            say(f"2/6 end to end{run_no}: engine and projection as subprocesses ...")
            e2e, live, probe = await phase_end_to_end(
                opts, url, js, flow, setup_events, events_total, orders, tmp / f"rm-{k}.db", children, server_pid,
                profile=last,
            )  # fmt: skip
            e2es.append((e2e, live))
            say(f"    {e2e['orders_per_s']:,} orders/s")
            if not last:  # the last run's engine and projection go on into the latency runs
                children.stop_all()
                probe.close()
        # the best run of each: noise (other processes on the machine) only ever slows a run down
        out["floor"] = max(floors, key=lambda r: int(r["orders_per_s"]))
        e2e, live = max(e2es, key=lambda r: int(r[0]["orders_per_s"]))
        e2e["ratio_to_floor"] = round(e2e["orders_per_s"] / out["floor"]["orders_per_s"], 3)
        out["runs"] = [
            {"floor_orders_per_s": f["orders_per_s"], "end_to_end_orders_per_s": e["orders_per_s"],
             "floor_others_cpu_s": f["cpu_s"].get("others"), "end_to_end_others_cpu_s": e["cpu_s"].get("others")}
            for f, (e, _) in zip(floors, e2es, strict=True)
        ]  # fmt: skip
        assert probe is not None  # the last run's, still open
        out["end_to_end"], out["projection"] = e2e, {"live": live}
        say(f"    best of {opts.runs}: floor {out['floor']['orders_per_s']:,}, end to end {e2e['orders_per_s']:,}"
            f" orders/s: {e2e['ratio_to_floor']}x the floor")  # fmt: skip
        say("3/6 latency at 10%, 50%, 90% of that ...")
        for e, _ in e2es:
            pids = e.pop("pids")  # the last run's processes are the ones still running
            metrics_port = e.pop("metrics_port")
        plan = plan_levels(opts, flow, e2e["orders_per_s"])
        out["latency"] = await phase_latency(opts, url, plan, e2e["orders_per_s"], probe, children, pids, metrics_port)

        async def projection_done() -> bool:
            assert probe is not None
            return probe.projection() >= flow.events

        await wait_for("the projection to fold everything", projection_done, children, opts.stall)
        evt_last, evt_cmd = await probe.evt()
        out["checks"] = {
            "jb_cmd_last_seq": [await probe.cmd_last(), flow.last_cmd_seq],
            "jb_evt_last_seq": [evt_last, flow.events],
            "last_event_cmd_seq": [evt_cmd, flow.last_cmd_seq],
            **read_model_checks(probe, flow),
        }
        children.stop_all()  # the engine, the live projection (and py-spy): the rebuild gets the machine
        say("5/6 projection rebuild from 0 into a new file ...")
        out["projection"]["rebuild"] = await phase_rebuild(opts, url, js, tmp, children, flow.events)
        say("3/6 latency of the transport floor: the same commands at the same rates ...")
        floor_latency = await phase_floor_latency(opts, url, js, flow, plan, orders, tmp, children)
        compare_to_floor(out["latency"], floor_latency)
        if opts.nats_url:  # leave a borrowed server without the benchmark's streams
            for name in (CMD_STREAM, EVT_STREAM):
                await js.delete_stream(name)
    finally:
        if probe is not None:
            probe.close()
        await nc.close()
    return out


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_memory(resting: int, markets: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "jetbook.bench.memory", "--resting", str(resting), "--markets", str(markets)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"memory run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def machine(nats_server: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        nats_py = version("nats-py")
    except PackageNotFoundError:
        nats_py = "?"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "nats_server": nats_server,
        "nats_py": nats_py,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def _throwaway_tls(tmp: Path) -> tuple[Path, Path]:
    """A CA made for this run (trustme) and a 127.0.0.1 certificate for the server; clients and children trust the CA.

    Set in this process's environment, where jetbook.wiring.connect reads it and the spawned engine and
    projection inherit it.
    """
    try:
        import trustme
    except ImportError as err:
        raise BenchError("--tls needs the trustme package (pip install trustme)") from err
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    server.cert_chain_pems[0].write_to_path(str(cert_path))
    server.private_key_pem.write_to_path(str(key_path))
    os.environ["JETBOOK_TLS_CA"] = str(ca_path)
    return cert_path, key_path


def run(opts: Options) -> dict[str, Any]:
    """The whole benchmark; the result document (also written to --json)."""
    from jetbook.server import EmbeddedServer

    started = datetime.datetime.now(datetime.UTC)
    mach = machine("?")
    histogram()  # fail now, not after minutes of measuring, when the bench extra is missing
    if opts.plot_path:
        from jetbook.bench.plot import require_matplotlib

        require_matplotlib()
    say(f"generating the flow: {opts.orders:,} commands over {opts.markets} markets, seed {opts.seed} ...")
    flow = Flow(opts.seed, opts.markets, opts.accounts, keep_events=True)
    orders = flow.take(opts.orders)
    flow.keep_events = False
    workload = flow.summary() | {
        "command_bytes_avg": round(avg_size(orders), 1),
        "event_bytes_avg": round(
            sum(len(d) for evs in flow.events_by_msg_id.values() for _, d in evs) / max(flow.events, 1), 1
        ),
        "clients": opts.effective_clients(),
        "window_per_client": opts.window,
        "generated_in_s": round(flow.gen_seconds, 2),
        "tls": opts.tls,
    }
    events_run = flow.events
    tmp = Path(tempfile.mkdtemp(prefix="jetbook-bench-"))
    children = Children(tmp)
    cert = _throwaway_tls(tmp) if opts.tls and not opts.nats_url else None
    server = (
        None
        if opts.nats_url
        else EmbeddedServer(
            tmp / "nats", port=0, host="127.0.0.1", die_with_parent=True,
            tls_cert=cert[0] if cert else None, tls_key=cert[1] if cert else None,
        )
    )  # fmt: skip
    try:
        url = opts.nats_url or server.start()  # type: ignore[union-attr]
        pid = server.proc.pid if server is not None and server.proc is not None else None
        net = asyncio.run(network_phases(opts, url, flow, orders, tmp, children, pid))
    except BenchError:
        for ch in children.items:
            say(f"--- {ch.name} log ---\n{tail(ch.log)}")
        raise
    finally:
        children.stop_all()
        if server is not None:
            server.stop()
        if opts.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    mach["nats_server"] = net.pop("nats_server")

    say("4/6 engine core, no I/O ...")
    core, core_problems = _core(flow, orders, opts.core_repeat, events_run - len(flow.setup))
    say(f"6/6 memory: {opts.resting:,} resting orders in a fresh process ...")
    memory = run_memory(opts.resting, opts.markets)

    checks = net.pop("checks")
    checks["memory_resting_orders"] = [memory["resting_orders"], opts.resting]
    problems = [f"{k}: got {got}, expected {want}" for k, (got, want) in checks.items() if got != want]
    problems += core_problems
    doc: dict[str, Any] = {
        "bench": "jetbook bench",
        "format": 1,
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join(opts.command),
        "machine": mach,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "command"},
        "workload": workload,
        **net,
        "core": core,
        "memory": memory,
        "checks": checks,
        "problems": problems,
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
    }
    return doc


def _core(flow: Flow, orders: list[Cmd], repeat: int, expected: int) -> tuple[dict[str, Any], list[str]]:
    from jetbook.bench.core import measure

    rows, problems = measure(flow.setup, orders, ("decode", "handle"), repeat, expected)
    rows["handle"]["x_decode"] = round(rows["handle"]["us_per_order"] / rows["decode"]["us_per_order"], 1)
    return rows, problems
