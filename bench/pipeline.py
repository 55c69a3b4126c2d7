"""Benchmark the whole pipeline on a real nats-server: publish -> JB_CMD -> engine -> JB_EVT -> SQLite.

    python bench/pipeline.py [--orders 100000] [--seed 1] [--window 1000]
                                            [--mode live|backlog] [--no-raw] [--json PATH]
                                            [--py-spy DIR] [--keep]

It starts an embedded nats-server (jetbook.server.EmbeddedServer, a free port
on 127.0.0.1, a temporary store), runs `jetbook engine` and `jetbook project`
as subprocesses (each on its own core, as in production), waits until both
have folded the setup commands (one create_market per market), then publishes
the N pre-generated commands of bench/workload.py from this process with
`js.publish_async` (at most --window un-acknowledged at a time, each with the
Nats-Msg-Id commands/client.py would give it) and watches the streams and the
read model every --poll seconds.

Figures (all wall clock, perf_counter in this process):
  publish       N / (first publish .. last PubAck): the rate JB_CMD took the commands
  end-to-end    N / (first publish .. the last event in JB_EVT has cmd_seq == last command)
  events/s      events the engine wrote / the same interval
  engine after publish
                commands still undone when the last PubAck came, / the time the engine
                then needed: its rate once the publisher no longer competes for CPU
  projection    first publish .. projection_position.last_seq == JB_EVT last_seq
                (read from the SQLite file, read-only), its events/s, and its lag
                (events behind, seconds behind) at the moment the engine finished
  raw transport the same N payloads published the same way to a scratch stream
                (file storage, same dedupe window) and read back with the ordered
                consumer of events/reader.py: what NATS + nats-py alone cost here

--mode backlog stops the engine after the setup, publishes everything, then
starts the engine again and times it from its first observed progress to the
end: the engine's catch-up rate on a full JB_CMD (the projection runs throughout).

Only the benchmark's own processes are stopped at the end (SIGTERM, then SIGKILL
after 10 s), on success and on error. Benchmarks are not tests: nothing asserts
a duration; the checks at the end only say whether every command was processed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from workload import Workload, generate

from commands.subjects import CMD_STREAM, EVT_STREAM, HDR_MSG_ID
from events.model import decode
from events.reader import StreamReader
from events.streams import DUPLICATE_WINDOW_S, ensure_streams
from jetbook.server import EmbeddedServer

RAW_STREAM = "BENCH_RAW"


class BenchError(RuntimeError):
    pass


# --- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class Children:
    """The subprocesses this benchmark started; only these are ever signalled."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[Child] = []

    def spawn(self, name: str, argv: list[str]) -> Child:
        log = self.logdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "JETBOOK_LOG_LEVEL": "INFO"},
            )
        child = Child(name, proc, log)
        self.items.append(child)
        return child

    def check_alive(self) -> None:
        for c in self.items:
            if c.name.startswith("py-spy"):
                continue
            if c.proc.poll() is not None:
                raise BenchError(f"{c.name} exited with {c.proc.returncode}:\n{tail(c.log)}")

    def stop(self, child: Child, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if child.proc.poll() is None:
            try:
                child.proc.send_signal(sig)
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        # py-spy first (SIGINT makes it write its profile), then the roles, newest first
        for c in reversed(self.items):
            if c.name.startswith("py-spy"):
                self.stop(c, signal.SIGINT, 30.0)
        for c in reversed(self.items):
            self.stop(c)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores), from /proc/stat."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    out = {name: cpu_seconds(pid) for name, pid in pids.items()}
    out["bench client"] = time.process_time()
    out["machine"] = machine_busy_seconds()
    return out


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Per process CPU seconds between two snapshots; "others" is what the rest of the machine used."""
    out = {k: round(b[k] - a[k], 2) for k in a if k in b and k != "machine"}
    if "machine" in a and "machine" in b:
        out["others"] = round(max(0.0, (b["machine"] - a["machine"]) - sum(out.values())), 2)
    return out


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def role_argv(role: str, url: str, db: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", "jetbook", role, "--nats-url", url]
    if db is not None:
        argv += ["--db", str(db)]
    return argv


def attach_py_spy(children: Children, target: Child, outdir: Path) -> None:
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        raise BenchError(f"--py-spy needs {exe} (pip install py-spy)")
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{target.name}.txt"
    children.spawn(
        f"py-spy-{target.name}",
        [
            str(exe),
            "record",
            "--pid",
            str(target.proc.pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "-o",
            str(out),
        ],
    )


# --- observing the system -----------------------------------------------------------------------


class Probe:
    """Reads the stream heads and the read model's position."""

    def __init__(self, js: Any, db: Path) -> None:
        self.js = js
        self.db = db
        self._con: sqlite3.Connection | None = None
        self._evt_last = -1
        self._evt_cmd = 0

    async def cmd_last(self) -> int:
        return int((await self.js.stream_info(CMD_STREAM)).state.last_seq)

    async def evt(self) -> tuple[int, int]:
        """(JB_EVT last_seq, cmd_seq of the event stored there)."""
        last = int((await self.js.stream_info(EVT_STREAM)).state.last_seq)
        if last != self._evt_last:
            if last:
                msg = await self.js.get_msg(EVT_STREAM, last, direct=True)
                self._evt_cmd = decode(msg.data).cmd_seq
            self._evt_last = last
        return last, self._evt_cmd

    def projection(self) -> int:
        try:
            if self._con is None:
                if not self.db.exists():
                    return 0
                self._con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            row = self._con.execute("SELECT last_seq FROM projection_position WHERE name = 'read_model'").fetchone()
            return int(row[0]) if row else 0
        except sqlite3.Error:
            return 0  # not created yet

    def query(self, sql: str) -> Any:
        assert self._con is not None
        return self._con.execute(sql).fetchone()[0]

    def close(self) -> None:
        if self._con is not None:
            self._con.close()


@dataclass
class Sample:
    t: float  # seconds since the first publish
    cmd_last: int
    evt_last: int
    evt_cmd: int
    proj: int


class Sampler:
    """Polls the probe; notes when the engine and the projection are done."""

    def __init__(self, probe: Probe, children: Children, poll: float, last_cmd: int, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu_engine_done: dict[str, float] = {}
        self.cpu_proj_done: dict[str, float] = {}
        self.probe = probe
        self.children = children
        self.poll = poll
        self.last_cmd = last_cmd
        self.t0 = 0.0
        self.samples: list[Sample] = []
        self.engine_done: Sample | None = None
        self.proj_done: Sample | None = None

    async def run(self, stall: float, timeout: float) -> None:
        last_change = time.perf_counter()
        prev: tuple[int, int, int] | None = None
        while True:
            self.children.check_alive()
            cmd_last = await self.probe.cmd_last()
            evt_last, evt_cmd = await self.probe.evt()
            proj = self.probe.projection()
            now = time.perf_counter()
            s = Sample(now - self.t0, cmd_last, evt_last, evt_cmd, proj)
            self.samples.append(s)
            if self.engine_done is None and evt_cmd >= self.last_cmd:
                self.engine_done = s
                self.cpu_engine_done = cpu_snapshot(self.pids)
            if self.engine_done is not None and proj >= self.engine_done.evt_last:
                self.proj_done = s
                self.cpu_proj_done = cpu_snapshot(self.pids)
                return
            state = (cmd_last, evt_last, proj)
            if state != prev:
                prev, last_change = state, now
            elif now - last_change > stall:
                raise BenchError(
                    f"no progress for {stall:.0f}s: JB_CMD {cmd_last}, JB_EVT {evt_last} (cmd_seq {evt_cmd}),"
                    f" projection {proj}; want cmd_seq {self.last_cmd}"
                )
            if s.t > timeout:
                raise BenchError(f"not done after {timeout:.0f}s: {s}")
            await asyncio.sleep(self.poll)

    def at(self, t: float) -> Sample:
        """The first sample taken at or after t."""
        for s in self.samples:
            if s.t >= t:
                return s
        return self.samples[-1]


async def wait_for(what: str, cond: Any, children: Children, timeout: float, poll: float = 0.05) -> None:
    deadline = time.perf_counter() + timeout
    while not await cond():
        children.check_alive()
        if time.perf_counter() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(poll)


# --- publishing ---------------------------------------------------------------------------------


async def publish_all(js: Any, items: list[tuple[str, bytes, dict[str, str]]]) -> tuple[float, list[Any]]:
    """publish_async everything (the JetStream context bounds the in-flight window); (seconds, acks)."""
    futures = []
    t0 = time.perf_counter()
    for subject, data, headers in items:
        futures.append(await js.publish_async(subject, data, headers=headers))
    await js.publish_async_completed()
    elapsed = time.perf_counter() - t0
    acks = []
    for f in futures:
        err = f.exception()
        if err is not None:
            raise BenchError(f"publish failed: {err!r}")
        acks.append(f.result())
    return elapsed, acks


def check_acks(acks: list[Any], first_seq: int, stream: str) -> None:
    for i, ack in enumerate(acks):
        if ack.stream != stream or ack.seq != first_seq + i or ack.duplicate:
            raise BenchError(f"ack {i}: {ack}; expected {stream} seq {first_seq + i}, not a duplicate")


async def raw_floor(js: Any, wl: Workload) -> dict[str, Any]:
    """The same payloads into a scratch stream and back out through events.reader.StreamReader."""
    await js.add_stream(
        StreamConfig(
            name=RAW_STREAM,
            subjects=["bench.raw.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW_S,
            allow_direct=True,
        )
    )
    try:
        off = len(wl.setup)
        items = [
            ("bench.raw." + subject.split(".", 1)[1], data, {HDR_MSG_ID: "raw." + wl.msg_ids[off + i]})
            for i, (subject, data) in enumerate(wl.orders)
        ]
        pub_s, acks = await publish_all(js, items)
        check_acks(acks, 1, RAW_STREAM)
        n = len(items)
        got = 0
        nbytes = 0
        t0 = time.perf_counter()
        async with StreamReader(js, RAW_STREAM, 1) as reader:
            while got < n:
                batch = await reader.next_batch(10_000, timeout=30)
                if not batch:
                    raise BenchError(f"raw read-back stalled at {got}/{n}")
                got += len(batch)
                nbytes += sum(len(m.data) for m in batch)
            read_s = time.perf_counter() - t0
        return {
            "publish_s": round(pub_s, 3),
            "publish_per_s": round(n / pub_s),
            "read_s": round(read_s, 3),
            "read_per_s": round(n / read_s),
            "read_mb_per_s": round(nbytes / read_s / 1e6, 2),
        }
    finally:
        await js.delete_stream(RAW_STREAM)


async def projection_rebuild(
    js: Any, url: str, tmp: Path, children: Children, evt_last: int, args: argparse.Namespace
) -> dict[str, Any]:
    """A second `jetbook project` on a new SQLite file folds the whole of JB_EVT (engine idle)."""
    db = tmp / "rebuild.db"
    probe = Probe(js, db)
    t0 = time.perf_counter()
    child = children.spawn("projection-rebuild", role_argv("project", url, db))
    if args.py_spy:
        attach_py_spy(children, child, args.py_spy)
    cpu0 = cpu_snapshot({"projection": child.proc.pid})
    first: tuple[float, int] | None = None
    try:
        while True:
            children.check_alive()
            pos = probe.projection()
            now = time.perf_counter() - t0
            if first is None and pos > 0:
                first = (now, pos)
            if pos >= evt_last:
                break
            if now > args.timeout:
                raise BenchError(f"projection rebuild at {pos} of {evt_last} after {now:.0f}s")
            await asyncio.sleep(args.poll)
        cpu = cpu_delta(cpu0, cpu_snapshot({"projection": child.proc.pid}))
    finally:
        probe.close()
        children.stop(child)
    assert first is not None
    span = now - first[0]
    return {
        "events": evt_last,
        "seconds_from_spawn": round(now, 3),
        "events_per_s_from_spawn": round(evt_last / now),
        "events_per_s_after_first_commit": round((evt_last - first[1]) / span) if span > 0 else None,
        "cpu_s": cpu,
    }


# --- the run ------------------------------------------------------------------------------------


async def bench(
    args: argparse.Namespace, wl: Workload, url: str, tmp: Path, children: Children, server_pid: int
) -> dict[str, Any]:
    nc = await nats.connect(url, name="jetbook-bench", allow_reconnect=False)
    js = nc.jetstream(publish_async_max_pending=args.window)
    db = tmp / "rm.db"
    probe = Probe(js, db)
    try:
        await ensure_streams(js)
        engine = children.spawn("engine", role_argv("engine", url))
        projection = children.spawn("projection", role_argv("project", url, db))

        # setup: create the markets, wait until the engine and the projection have folded them
        s = len(wl.setup)
        for i, (subject, data) in enumerate(wl.setup):
            ack = await js.publish(subject, data, headers=wl.headers(i))
            if ack.seq != i + 1:
                raise BenchError(f"setup command {i} stored at {ack.seq}: JB_CMD was not empty")

        async def engine_ready() -> bool:
            return (await probe.evt())[1] >= s

        await wait_for("the engine to process the setup commands", engine_ready, children, 60)
        setup_evt = (await probe.evt())[0]

        async def projection_ready() -> bool:
            return probe.projection() >= setup_evt

        await wait_for("the projection to fold the setup events", projection_ready, children, 60)

        if args.py_spy:
            attach_py_spy(children, engine, args.py_spy)
            attach_py_spy(children, projection, args.py_spy)
            await asyncio.sleep(1.0)  # let py-spy attach before the clock starts

        if args.mode == "backlog":
            children.stop(engine)
            children.items.remove(engine)

        items = [(subj, data, wl.headers(s + i)) for i, (subj, data) in enumerate(wl.orders)]
        pids = {"engine": engine.proc.pid, "projection": projection.proc.pid, "nats-server": server_pid}
        sampler = Sampler(probe, children, args.poll, wl.last_cmd_seq, pids)
        cpu0 = cpu_snapshot(pids)
        t0 = time.perf_counter()
        sampler.t0 = t0
        sampling = None
        if args.mode == "live":
            sampling = asyncio.create_task(sampler.run(args.stall, args.timeout))
        try:
            pub_s, acks = await publish_all(js, items)
            check_acks(acks, s + 1, CMD_STREAM)
            if args.mode == "backlog":
                t_start = time.perf_counter()
                sampler.t0 = t_start
                engine = children.spawn("engine-restarted", role_argv("engine", url))
                pids["engine"] = engine.proc.pid
                cpu0 = cpu_snapshot(pids)
                cpu0["engine"] = 0.0
                if args.py_spy:
                    attach_py_spy(children, engine, args.py_spy)
                sampling = asyncio.create_task(sampler.run(args.stall, args.timeout))
            assert sampling is not None
            await sampling
        finally:
            if sampling is not None and not sampling.done():
                sampling.cancel()
        n = len(wl.orders)
        ed, pd = sampler.engine_done, sampler.proj_done
        assert ed is not None and pd is not None
        events = ed.evt_last - setup_evt
        out: dict[str, Any] = {
            "mode": args.mode,
            "publish": {"seconds": round(pub_s, 3), "commands_per_s": round(n / pub_s)},
            "samples": len(sampler.samples),
            # CPU seconds each process used from the start of the clock until the engine / projection was done
            "cpu_s_until_engine_done": cpu_delta(cpu0, sampler.cpu_engine_done),
            "cpu_s_until_projection_done": cpu_delta(cpu0, sampler.cpu_proj_done),
            # the timeline, thinned to ~200 points: [t, JB_CMD last, JB_EVT last, its cmd_seq, projection]
            "timeline": [
                [round(x.t, 3), x.cmd_last, x.evt_last, x.evt_cmd, x.proj]
                for x in [*sampler.samples[:: max(1, len(sampler.samples) // 200)], sampler.samples[-1]]
            ],
        }
        if args.mode == "live":
            at_pub = sampler.at(pub_s)
            undone = wl.last_cmd_seq - at_pub.evt_cmd
            after = ed.t - at_pub.t
            out["end_to_end"] = {
                "seconds": round(ed.t, 3),
                "orders_per_s": round(n / ed.t),
                "events": events,
                "events_per_s": round(events / ed.t),
                "commands_undone_at_publish_end": undone,
                "engine_after_publish_s": round(after, 3),
                "engine_after_publish_per_s": round(undone / after) if after > 0 and undone else None,
            }
        else:
            first = next(x for x in sampler.samples if x.evt_cmd > s)
            done = wl.last_cmd_seq - first.evt_cmd
            span = ed.t - first.t
            out["engine_backlog"] = {
                "seconds_from_spawn": round(ed.t, 3),
                "first_progress_s": round(first.t, 3),
                "commands_after_first_progress": done,
                "seconds_after_first_progress": round(span, 3),
                "orders_per_s": round(done / span) if span > 0 else None,
                "events": events,
                "events_per_s_from_spawn": round(events / ed.t),
            }
        clock = "first publish" if args.mode == "live" else "engine restart"
        out["projection"] = {
            "clock_from": clock,
            "seconds": round(pd.t, 3),
            "events_per_s": round(events / pd.t),
            "lag_events_at_engine_done": ed.evt_last - ed.proj,
            "lag_seconds_after_engine_done": round(pd.t - ed.t, 3),
        }

        # did the system do all the work?
        checks: dict[str, Any] = {}
        cmd_last = await probe.cmd_last()
        evt_last, evt_cmd = await probe.evt()
        c = wl.counts
        checks["jb_cmd_last_seq"] = [cmd_last, wl.last_cmd_seq]
        checks["last_event_cmd_seq"] = [evt_cmd, wl.last_cmd_seq]
        checks["jb_evt_last_seq"] = [evt_last, c["events"]]
        checks["projection_position"] = [probe.projection(), c["events"]]
        checks["read_model_orders"] = [probe.query("SELECT COUNT(*) FROM orders"), c["accepted"]]
        checks["read_model_trades"] = [probe.query("SELECT COUNT(*) FROM trades"), c["fills"]]
        checks["read_model_cancelled"] = [
            probe.query("SELECT COUNT(*) FROM orders WHERE status = 'cancelled'"),
            c["cancelled"],
        ]
        checks["read_model_open"] = [
            probe.query("SELECT COUNT(*) FROM orders WHERE open_qty > 0 AND status != 'cancelled'"),
            c["open_orders_end"],
        ]
        assert probe._con is not None
        levels = {
            (m, side, price): (qty, orders)
            for m, side, price, qty, orders in probe._con.execute(
                "SELECT market_id, side, price, qty, orders FROM book_levels"
            )
        }
        diff = sum(1 for k in levels.keys() | wl.book_levels.keys() if levels.get(k) != wl.book_levels.get(k))
        checks["read_model_book_levels_differing"] = [diff, 0]
        checks["read_model_rejections"] = [probe.query("SELECT COUNT(*) FROM rejections"), c["rejected"]]
        out["checks"] = checks
        out["problems"] = [f"{k}: got {got}, expected {want}" for k, (got, want) in checks.items() if got != want]

        if not args.no_rebuild:
            out["projection_rebuild"] = await projection_rebuild(js, url, tmp, children, evt_last, args)
        if not args.no_raw:
            out["raw_transport"] = await raw_floor(js, wl)
        return out
    finally:
        probe.close()
        await nc.close()


def print_report(wl: Workload, r: dict[str, Any]) -> None:
    n = len(wl.orders)
    print(f"\n{'figure':<44}{'value':>14}  note")

    def row(k: str, v: str, note: str = "") -> None:
        print(f"{k:<44}{v:>14}  {note}")

    row(
        "publish into JB_CMD (commands/s)",
        f"{r['publish']['commands_per_s']:,}",
        f"{r['publish']['seconds']}s",
    )
    if "end_to_end" in r:
        e = r["end_to_end"]
        row("end-to-end (orders/s)", f"{e['orders_per_s']:,}", f"{e['seconds']}s first publish -> last event")
        row("engine events written (events/s)", f"{e['events_per_s']:,}", f"{e['events']:,} events")
        row("commands undone at last PubAck", f"{e['commands_undone_at_publish_end']:,}")
        if e["engine_after_publish_per_s"]:
            row(
                "engine rate after publish end (cmd/s)",
                f"{e['engine_after_publish_per_s']:,}",
                f"{e['engine_after_publish_s']}s",
            )
    if "engine_backlog" in r:
        b = r["engine_backlog"]
        row(
            "engine on a full backlog (orders/s)",
            f"{b['orders_per_s']:,}",
            f"{b['commands_after_first_progress']:,} cmds in {b['seconds_after_first_progress']}s"
            f" (first progress {b['first_progress_s']}s after spawn)",
        )
        row("engine from spawn (events/s)", f"{b['events_per_s_from_spawn']:,}", f"{b['events']:,} events")
    p = r["projection"]
    row(f"projection done (s from {p['clock_from']})", f"{p['seconds']}", f"{p['events_per_s']:,} events/s")
    row(
        "projection lag when engine done (events)",
        f"{p['lag_events_at_engine_done']:,}",
        f"caught up {p['lag_seconds_after_engine_done']}s later",
    )
    if "projection_rebuild" in r:
        pr = r["projection_rebuild"]
        row(
            "projection rebuild, new file (events/s)",
            f"{pr['events_per_s_after_first_commit']:,}",
            f"{pr['events']:,} events; {pr['seconds_from_spawn']}s from spawn ({pr['events_per_s_from_spawn']:,}/s)",
        )
    if "raw_transport" in r:
        t = r["raw_transport"]
        row("raw: publish_async to scratch stream (msg/s)", f"{t['publish_per_s']:,}", f"{t['publish_s']}s")
        row(
            "raw: ordered-consumer read-back (msg/s)",
            f"{t['read_per_s']:,}",
            f"{t['read_s']}s, {t['read_mb_per_s']} MB/s payload",
        )
    cpu = r["cpu_s_until_projection_done"]
    wall = r["projection"]["seconds"]
    print(
        f"\nCPU seconds in those {wall}s (2 cores = {2 * wall:.1f} CPU-s available): "
        + ", ".join(f"{k} {v}" for k, v in cpu.items())
        + f"; sum {sum(cpu.values()):.1f}"
    )
    print(
        f"{n:,} commands; checks: "
        + (
            "ok (" + ", ".join(f"{k}={v[0]}" for k, v in r["checks"].items()) + ")"
            if not r["problems"]
            else "; ".join(r["problems"])
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000, help="measured commands (default 100000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markets", type=int, default=2)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--window", type=int, default=1000, help="max un-acked publishes in flight (default 1000)")
    ap.add_argument("--mode", choices=("live", "backlog"), default="live")
    ap.add_argument("--poll", type=float, default=0.01, help="seconds between probes (default 0.01)")
    ap.add_argument("--stall", type=float, default=60.0, help="give up after this long without progress")
    ap.add_argument("--timeout", type=float, default=1800.0, help="give up after this long in all")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw transport floor")
    ap.add_argument("--no-rebuild", action="store_true", help="skip the projection rebuild from JB_EVT")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record engine and projection with py-spy (raw collapsed stacks into DIR)",
    )
    ap.add_argument("--runs", type=int, default=1, help="repeat the whole run (fresh server) and print medians")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (store, logs, rm.db)")
    args = ap.parse_args()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks that stop our children

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background, where SIGINT is ignored

    wl = generate(args.orders, args.seed, args.markets, args.accounts)
    c = wl.counts
    print(
        f"workload: {len(wl.orders):,} commands after {len(wl.setup)} setup (seed {args.seed}, {wl.markets}):"
        f" {c['place_resting'] + c['place_crossing']:,} places"
        f" ({c['place_crossing']:,} crossing), {c['cancel']:,} cancels; expect {c['events']:,} events"
        f" ({c['fills']:,} fills); generated in {wl.gen_seconds:.1f}s"
    )
    runs: list[dict[str, Any]] = []
    for k in range(args.runs):
        if args.runs > 1:
            print(f"\n=== run {k + 1} of {args.runs} ===")
        result = run_once(args, wl)
        if result is None:
            return 2
        print_report(wl, result)
        runs.append(result)
    if len(runs) > 1:
        print_medians(runs)
    if args.json:
        doc = {
            "bench": "pipeline",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "workload": wl.summary(),
            "runs": runs,
            "medians": medians(runs),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if any(r["problems"] for r in runs) else 0


def run_once(args: argparse.Namespace, wl: Workload) -> dict[str, Any] | None:
    """One pipeline run on a fresh server and store; None if it failed (the logs are printed)."""
    tmp = Path(tempfile.mkdtemp(prefix="jetbook-bench-"))
    server = EmbeddedServer(tmp / "nats", port=0, host="127.0.0.1")
    children = Children(tmp)
    load = os.getloadavg()
    try:
        url = server.start()
        print(
            f"nats-server at {url}, store in {tmp}; window {args.window}, mode {args.mode};"
            f" load average before {load[0]:.2f}"
        )
        assert server.proc is not None
        result = asyncio.run(bench(args, wl, url, tmp, children, server.proc.pid))
        result["loadavg_1m_before"] = round(load[0], 2)
        return result
    except BenchError as err:
        print(f"\nbenchmark failed: {err}", file=sys.stderr)
        for ch in children.items:
            print(f"--- {ch.name} log ---\n{tail(ch.log)}", file=sys.stderr)
        return None
    finally:
        children.stop_all()
        server.stop()
        if args.py_spy:
            for ch in children.items:
                if ch.name.startswith("py-spy"):
                    print(f"{ch.name}: {tail(ch.log, 3)}")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


_HEADLINES = (
    ("publish", "commands_per_s"),
    ("end_to_end", "orders_per_s"),
    ("end_to_end", "events_per_s"),
    ("end_to_end", "engine_after_publish_per_s"),
    ("engine_backlog", "orders_per_s"),
    ("projection", "seconds"),
    ("projection", "lag_events_at_engine_done"),
    ("projection_rebuild", "events_per_s_after_first_commit"),
    ("raw_transport", "publish_per_s"),
    ("raw_transport", "read_per_s"),
)


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for group, key in _HEADLINES:
        vals = [r[group][key] for r in runs if group in r and r[group].get(key) is not None]
        if vals:
            out[f"{group}.{key}"] = statistics.median(vals)
    return out


def print_medians(runs: list[dict[str, Any]]) -> None:
    print(f"\n=== {len(runs)} runs: median (min .. max) ===")
    for group, key in _HEADLINES:
        vals = [r[group][key] for r in runs if group in r and r[group].get(key) is not None]
        if vals:
            med = statistics.median(vals)

            def fmt(v: float, big: bool = med >= 100) -> str:
                return f"{v:,.0f}" if big else f"{v:.3f}"

            print(f"{group + '.' + key:<54}{fmt(med):>10}  ({fmt(min(vals))} .. {fmt(max(vals))})")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stopped:
        print(f"\ninterrupted ({stopped}); the benchmark's processes were stopped", file=sys.stderr)
        sys.exit(130)
