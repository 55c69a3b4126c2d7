"""Where the engine's wall clock goes: the real EngineService, in this process, on a full JB_CMD backlog.

    python -m jetbook.bench.engine_phases [--orders 100000] [--seed 1] [--markets 4] [--with-projection]
                                                 [--max-batch 1000] [--json PATH]

Starts an embedded nats-server, publishes the flow of jetbook/bench/workload.py
into JB_CMD with no engine running, then runs engine.service.EngineService
(unmodified; only timing wrappers are put around its calls from outside) until
every command is applied, and splits its wall time into:

  read wait      awaiting StreamReader.next_batch (nothing buffered yet)
  handle         Engine.handle: parse + decide + evolve (the pure core)
  encode         events.model.encode and the subject of every event
  publish calls  nc.publish of the non-final messages of each atomic batch
  commit wait    nc.request of each batch's commit message, until the PubAck
  other          the rest (loop overhead, nats-py callbacks delivering messages,
                 the reader's _on_msg, GC)

--with-projection also runs `jetbook project` as a subprocess, as in
production, to see how much the second consumer of the machine's two cores
slows the engine down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

import events.stream_readers
from engine.service import EngineService
from jetbook.bench.procs import Children, cpu_delta, cpu_snapshot, role_argv
from jetbook.bench.run import Clients, publish_closed_loop
from jetbook.bench.workload import Flow
from jetbook.server import EmbeddedServer
from protocol.streams import ensure_streams


class Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, name: str, dt: float) -> None:
        self.t[name] = self.t.get(name, 0.0) + dt
        self.n[name] = self.n.get(name, 0) + 1


def instrument(service: EngineService, timer: Timer) -> None:
    """Wrap the calls the engine makes, from outside, on this instance and this process only."""
    handle = service.engine.handle
    nc = service.nc
    nc_publish, nc_request = nc.publish, nc.request

    def timed_handle(*a: Any) -> Any:
        t = time.perf_counter()
        try:
            return handle(*a)
        finally:
            timer.add("handle", time.perf_counter() - t)

    async def timed_publish(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return await nc_publish(*a, **kw)
        finally:
            timer.add("publish calls", time.perf_counter() - t)

    async def timed_request(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return await nc_request(*a, **kw)
        finally:
            timer.add("commit wait", time.perf_counter() - t)

    service_publish = service.publish

    async def timed_service_publish(evts: Any) -> Any:
        t = time.perf_counter()
        try:
            return await service_publish(evts)
        finally:
            timer.add("_publish total", time.perf_counter() - t)

    real_recover = service.recover

    async def recover_then_wrap() -> None:
        await real_recover()  # replaces service.engine: wrap the new one
        h = service.engine.handle

        def th(*a: Any) -> Any:
            t = time.perf_counter()
            try:
                return h(*a)
            finally:
                timer.add("handle", time.perf_counter() - t)

        service.engine.handle = th  # type: ignore[method-assign,assignment]

    service.engine.handle = timed_handle  # type: ignore[method-assign,assignment]
    service.recover = recover_then_wrap  # type: ignore[method-assign]
    service.publish = timed_service_publish  # type: ignore[method-assign,assignment]
    nc.publish, nc.request = timed_publish, timed_request

    next_batch = events.stream_readers.StreamReader.next_batch

    async def timed_next_batch(self: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return await next_batch(self, *a, **kw)
        finally:
            timer.add("read wait", time.perf_counter() - t)

    events.stream_readers.StreamReader.next_batch = timed_next_batch  # type: ignore[method-assign]


async def run(args: argparse.Namespace, url: str, tmp: Path, children: Children, server_pid: int) -> dict[str, Any]:
    flow = Flow(args.seed, args.markets)
    orders = flow.take(args.orders)
    nc = await nats.connect(url, name="bench-publisher", allow_reconnect=False)
    await ensure_streams(nc.jetstream())
    await nc.close()
    clients = await Clients.open(url, 1, 1000)
    await publish_closed_loop(clients, flow.setup + orders)
    await clients.close()
    pids = {"nats-server": server_pid}
    if args.with_projection:
        pids["projection"] = children.spawn("projection", role_argv("project", url, tmp / "rm.db")).proc.pid

    enc = await nats.connect(url, name="bench-engine", allow_reconnect=False)
    service = EngineService(enc, max_batch=args.max_batch)
    timer = Timer()
    instrument(service, timer)
    stop = asyncio.Event()
    last = flow.last_cmd_seq

    async def watch() -> None:
        while service.engine.state.last_cmd_seq < last:
            children.check_alive()
            await asyncio.sleep(0.005)
        stop.set()

    cpu0 = cpu_snapshot(pids)
    t0 = time.perf_counter()
    watcher = asyncio.create_task(watch())
    await service.run(stop)
    wall = time.perf_counter() - t0
    cpu = cpu_delta(cpu0, cpu_snapshot(pids))
    await watcher
    await enc.close()

    # the final next_batch after the last command is the one that returns on `stop`: not counted
    t = timer.t
    encode = t.get("_publish total", 0.0) - t.get("publish calls", 0.0) - t.get("commit wait", 0.0)
    phases = {
        "read wait": t.get("read wait", 0.0),
        "handle": t.get("handle", 0.0),
        "encode": encode,
        "publish calls": t.get("publish calls", 0.0),
        "commit wait": t.get("commit wait", 0.0),
    }
    phases["other"] = wall - sum(phases.values())
    n = len(orders)
    return {
        "orders": n,
        "events": service.events_written,
        "wall_s": round(wall, 3),
        "orders_per_s": round(n / wall),
        "batches_read": timer.n.get("read wait", 0),
        "atomic_batches": timer.n.get("commit wait", 0),
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "cpu_s": cpu | {"engine (this process)": cpu.get("bench client", 0.0)},
        "last_cmd_seq": service.engine.state.last_cmd_seq,
        "expected_last_cmd_seq": last,
        "expected_events": flow.events,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markets", type=int, default=4)
    ap.add_argument("--max-batch", type=int, default=1000, help="EngineService max_batch (default 1000)")
    ap.add_argument("--with-projection", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="jetbook-bench-"))
    server = EmbeddedServer(tmp / "nats", port=0, host="127.0.0.1", die_with_parent=True)
    children = Children(tmp)
    try:
        url = server.start()
        assert server.proc is not None
        r = asyncio.run(run(args, url, tmp, children, server.proc.pid))
    finally:
        children.stop_all()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"engine on a backlog of {r['orders']:,} commands: {r['wall_s']}s, {r['orders_per_s']:,} orders/s,"
        f" {r['events']:,} events in {r['atomic_batches']:,} atomic batches, {r['batches_read']:,} reads"
    )
    print(f"\n{'phase':<16}{'seconds':>10}{'share':>8}")
    for k, v in r["phases_s"].items():
        print(f"{k:<16}{v:>10.3f}{v / r['wall_s']:>8.1%}")
    cpu = r["cpu_s"]
    cpu.pop("bench client", None)
    print("\nCPU seconds: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
    ok = r["last_cmd_seq"] == r["expected_last_cmd_seq"] and r["events"] == r["expected_events"]
    print(
        f"checks: last cmd_seq {r['last_cmd_seq']} (want {r['expected_last_cmd_seq']}),"
        f" events {r['events']} (want {r['expected_events']})"
    )
    if args.json:
        doc = {"bench": "engine_phases", "args": vars(args) | {"json": str(args.json)}, "cpus": os.cpu_count()}
        args.json.write_text(json.dumps(doc | {"results": r}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
