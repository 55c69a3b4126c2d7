"""Engine recovery: a restart with a snapshot, a full replay without one, the cost of writing a snapshot, failover.

    python -m jetbook.bench.recovery [--events 1000000] [--tail 100000] [--seed 1] [--markets 4] [--json PATH]

Builds a JB_EVT of just under --events events quickly: the seeded flow of
jetbook/bench/workload.py (the core decides every command while it is
generated, so the events are exactly what an engine writes, checkpoints
included) is published straight to JB_EVT on jb.wal.<market>.<kind> as fenced
ADR-50 atomic batches, never splitting a command. JB_CMD holds the commands
those events name (published first, as in a real log, because a resume
refuses events of commands JB_CMD does not hold), all of them already decided:
only recovery is measured. On a real nats-server (temporary store, free port):

1. the log up to the command that crosses `--events - --tail` (with the
   default intervals that command ends with a checkpoint, right where the
   running engine snapshots); an engine replays it and a snapshot is written
   there, forked, as the running engine writes it;
2. the rest of the log, up to the last command before --events (so before the
   next checkpoint); then, in this process:
   - restart with that snapshot and a tail of about --tail events: the worst
     case for `--snapshot-every` = --tail under sustained load,
   - full replay of every event, no snapshot (checkpoints verified),
   - a snapshot of the full state: serialised inline (what the loop would
     stall for), forked (what it does stall for), the child's time, upload,
   - restart with the snapshot at the end of the log (tail 0: the case after
     an idle spell), and its parts, download and restore,
   - the raw read of JB_EVT, no decode, for scale: with BulkReader (how
     recovery reads a known range) and StreamReader (how a standby follows);
3. `jetbook engine` as a process: spawn until "active: deciding";
4. failover: a second `jetbook engine` as standby, kill -9 the active one,
   time until the standby logs "active: deciding".

Each in-process phase prints its wall time and the CPU seconds this process
and nats-server used meanwhile (the machine is shared: CPU below wall time
means we waited for a core). Every recovery must end at the same state hash.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import nats

from engine.core import State, restore, state_hash
from engine.service import EngineService
from engine.snapshots import SnapshotStore, capture
from events.stream_readers import BulkReader, StreamReader, last_seq, read_to_end
from jetbook.bench.floor import AtomicWriter, group
from jetbook.bench.procs import Children, cpu_seconds, role_argv
from jetbook.bench.run import Clients, publish_closed_loop
from jetbook.bench.workload import Cmd, Flow
from jetbook.server import EmbeddedServer
from protocol.streams import ensure_streams
from protocol.subjects import EVT_STREAM

Payloads = list[tuple[str, bytes]]


def generate(events: int, seed: int, markets: int) -> tuple[list[Cmd], list[Payloads]]:
    """Every command and its encoded events, in order, until the flow has made at least `events` events."""
    flow = Flow(seed, markets, keep_events=True)
    cmds = list(flow.setup)
    while flow.events < events + 20_000:
        cmds += flow.take(10_000)
    per_command = list(flow.events_by_msg_id.values())
    print(f"flow: {flow.last_cmd_seq:,} commands -> {flow.events:,} events, {flow.open_orders():,} open orders "
          f"({flow.gen_seconds:.1f}s to generate)")  # fmt: skip
    return cmds, per_command


async def publish(nc: Any, per_command: list[Payloads], expected: int) -> int:
    writer = AtomicWriter(nc, expected, inflight=8, timeout=30)
    for i in range(0, len(per_command), 1000):
        for batch in group(per_command[i : i + 1000]):
            await writer.write(batch)
    await writer.drain()
    return writer.expected


def wait_for_line(log: Path, pattern: str, timeout: float, after: int = 0) -> float:
    """Seconds until a line matching `pattern` appears in `log` past byte `after` (polling the file)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if log.exists() and re.search(pattern, log.read_text(errors="replace")[after:]):
            return time.monotonic() - t0
        time.sleep(0.01)
    raise RuntimeError(f"no {pattern!r} in {log} within {timeout}s")


class Clock:
    """Wall time, this process's CPU time and nats-server's CPU time of one phase: on a shared 2-core machine
    the CPU figures say how much of the wall time was ours."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> Clock:
        self.t0, self.c0, self.s0 = time.perf_counter(), time.process_time(), cpu_seconds(self.server_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        self.server = cpu_seconds(self.server_pid) - self.s0

    def row(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 3), "cpu_s": round(self.cpu, 3), "server_cpu_s": round(self.server, 3)}

    def __str__(self) -> str:
        return f"{self.wall:.2f}s (CPU: this process {self.cpu:.2f}s, nats-server {self.server:.2f}s)"


async def recover(nc: Any, clock: Clock, **options: Any) -> EngineService:
    service = EngineService(nc, **options)
    with clock:
        await service.recover()
    return service


def cut_points(sizes: list[int], events: int, tail: int) -> tuple[int, int]:
    """(mid, end) command indexes: the log ends before the command that would reach `events` (so before its
    checkpoint), and the older snapshot sits right after the command that crossed `events - tail` (with the
    default intervals that command ends with a checkpoint, where the running engine snapshots too)."""
    acc, mid, end = 0, 0, 0
    for i, n in enumerate(sizes):
        if acc + n > events - 1:
            break
        acc += n
        end = i + 1
        if not mid and acc > events - tail:
            mid = i + 1
    return mid, end


async def run(url: str, server_pid: int, args: argparse.Namespace, workdir: Path, out: dict[str, Any]) -> None:
    cmds, per_command = generate(args.events, args.seed, args.markets)
    mid_cut, end_cut = cut_points([len(c) for c in per_command], args.events, args.tail)
    nc = await nats.connect(url, name="bench-recovery", allow_reconnect=False)
    js = nc.jetstream()
    await ensure_streams(js)
    clock = Clock(server_pid)
    # The commands the log's events name go to JB_CMD first, as in a real log: a resume refuses a JB_EVT that
    # names commands JB_CMD does not hold. Nothing decides them again: the engines start with all of them decided.
    with clock:
        clients = await Clients.open(url, 1, 1000)
        await publish_closed_loop(clients, cmds[:end_cut])
        await clients.close()
    print(f"JB_CMD 1..{end_cut:,} published: {clock}")
    with clock:
        head = await publish(nc, per_command[:mid_cut], 0)
    print(f"JB_EVT 1..{head:,} published: {clock}")

    # 1. the snapshot `tail` events before the end, written the way the running engine writes it
    mid = await recover(nc, clock, load_snapshots=False)
    store = await SnapshotStore(js, keep=5).open()
    snap = await capture(mid.engine.state, mid._last_event, fork=True)
    await store.save(snap)
    print(f"engine state at {head:,} rebuilt: {clock}; snapshot {snap.tag.name} stored ({len(snap.data):,} B)")
    del mid

    with clock:
        end = await publish(nc, per_command[mid_cut:end_cut], head)
    print(f"JB_EVT {head + 1:,}..{end:,} published: {clock}")
    assert end == await last_seq(js, EVT_STREAM)
    out.update(events=end, commands=end_cut, loadavg_start=os.getloadavg())

    # 2a. restart with the older snapshot: the worst case for --snapshot-every = --tail
    tailed = await recover(nc, clock)
    assert tailed.recovered_from == snap.tag and tailed.recovery_folded == end - head
    out["restart_snapshot_tail"] = {"tail_events": end - head, **clock.row()}
    print(f"restart, snapshot {end - head:,} events behind the end: {clock}")

    # 2b. full replay, no snapshot
    full = await recover(nc, clock, load_snapshots=False)
    expected = state_hash(cast(State, full.engine.state))
    assert state_hash(cast(State, tailed.engine.state)) == expected
    del tailed
    out["full_replay"] = {**clock.row(), "events_per_s": round(end / clock.wall)}
    print(f"full replay of {end:,} events, no snapshot: {clock} = {end / clock.wall:,.0f} events/s")

    # 2c. writing a snapshot of the whole state
    gc.disable()  # as on the engine's loop, where batches run with the collector paused
    inline = await capture(full.engine.state, full._last_event, fork=False)
    gc.enable()
    forked = await capture(full.engine.state, full._last_event, fork=True)
    assert forked.data == inline.data
    with clock:
        await store.save(forked)
    out["snapshot_write"] = {
        "bytes": len(forked.data), "inline_serialise_s": round(inline.serialise_s, 3),
        "fork_stall_s": round(forked.stall_s, 4), "child_serialise_s": round(forked.serialise_s, 3),
        "upload_s": round(clock.wall, 3),
    }  # fmt: skip
    print(f"snapshot of the full state: {len(forked.data):,} B; serialised inline {inline.serialise_s:.2f}s "
          "(also what a checkpoint's hash holds the loop for); "
          f"forked: the loop held {forked.stall_s * 1e3:.1f} ms, the child took {forked.serialise_s:.2f}s; "
          f"upload {clock.wall:.2f}s")  # fmt: skip
    del full

    # 2d. restart with the snapshot at the end of the log, and its parts
    fresh = await recover(nc, clock)
    assert fresh.recovered_from == forked.tag and fresh.recovery_folded == 0
    assert state_hash(cast(State, fresh.engine.state)) == expected
    out["restart_snapshot_at_end"] = clock.row()
    print(f"restart, snapshot at the end: {clock}")
    del fresh
    with clock:
        data = await store.fetch(forked.tag)
    fetch = clock.row()
    gc.disable()
    with clock:
        restore(data)
    gc.enable()
    out["restart_snapshot_at_end"].update(fetch=fetch, restore=clock.row())
    print(f"  of which: download {fetch['wall_s']:.2f}s, restore {clock.wall:.2f}s")
    with clock:
        async with BulkReader(js, EVT_STREAM, 1, end) as bulk:
            n = sum([len(chunk) async for chunk in bulk])
    out["raw_read_bulk"] = {**clock.row(), "events_per_s": round(n / clock.wall)}
    print(f"raw read of JB_EVT, BulkReader (as recovery reads), no decode: {clock} = {n / clock.wall:,.0f} events/s")
    with clock:
        async with StreamReader(js, EVT_STREAM, 1) as reader:
            n = sum(len(b) for b in await read_to_end(reader))
    out["raw_read_ordered"] = {**clock.row(), "events_per_s": round(n / clock.wall)}
    print(f"raw read of JB_EVT, StreamReader (as the standby follows), no decode: {clock} = "
          f"{n / clock.wall:,.0f} events/s")  # fmt: skip
    out["loadavg_end"] = os.getloadavg()
    await nc.close()

    # 3. and 4. as processes
    children = Children(workdir)
    try:
        a = children.spawn("engine-a", role_argv("engine", url))
        start = wait_for_line(a.log, r"active: deciding", 120)
        out["process_start_to_active_s"] = round(start, 2)
        print(f"`jetbook engine` spawn -> active: {start:.2f}s (Python start-up and imports included)")
        b = children.spawn("engine-b", role_argv("engine", url))
        wait_for_line(b.log, r"standby: following", 120)
        size = b.log.stat().st_size
        a.proc.send_signal(signal.SIGKILL)
        took = wait_for_line(b.log, r"active: deciding", 30, size)
        out["failover_after_kill_9_s"] = round(took, 2)
        print(f"failover: kill -9 of the active engine -> standby active: {took:.2f}s (lease TTL 1.0s)")
    finally:
        children.stop_all()
    print(f"load average (1 min) at the start of the measurements {out['loadavg_start'][0]:.2f}, "
          f"at the end {out['loadavg_end'][0]:.2f} (2 cores)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--tail", type=int, default=100_000, help="events after the older snapshot (= --snapshot-every)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--markets", type=int, default=4)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    print("command: python -m jetbook.bench.recovery " + " ".join(sys.argv[1:]))
    workdir = Path(tempfile.mkdtemp(prefix="jetbook-recovery-"))
    server = EmbeddedServer(workdir / "nats", port=0)
    out: dict[str, Any] = {"command": "python -m jetbook.bench.recovery " + " ".join(sys.argv[1:])}
    try:
        url = server.start()
        assert server.proc is not None
        asyncio.run(run(url, server.proc.pid, args, workdir, out))
        print("OK: every recovery reached the same state hash at the last event")
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
