"""Replay speed on a real nats-server: the raw read rate of JB_EVT beside the rebuild rate into SQLite, same run.

    python -m jetbook.bench.replay [--orders 100000] [--seed 1] [--markets 2] [--runs 3] [--no-verify] [--json PATH]

It starts an embedded nats-server (free port on 127.0.0.1, temporary store),
publishes the seeded flow of jetbook/bench/workload.py into JB_CMD, runs
`jetbook engine` (a subprocess, as in production) until JB_EVT holds every
event the flow must produce, and stops it. Then, --runs times, on the idle
streams:

  raw read (bulk)      every JB_EVT message read with events.stream_readers.BulkReader and
                       counted, nothing else: what any replay here can at best do
  raw read (ordered)   the same with events.stream_readers.StreamReader (nats-py's ordered
                       consumer, the live worker's reader), for comparison
  rebuild              replay.rebuild.rebuild of the read model into a new file,
                       start to swap: read, decode, plan, write, indexes, fsync
  verify               replay.verify.verify: both streams read, every command
                       re-decided, every event compared (--no-verify skips it)

Each figure is events / wall seconds (perf_counter, this process), with the CPU
seconds this process, the rebuild's two fold processes and nats-server used
meanwhile, and "others": what the rest of the machine used (a noise
indicator; this machine is shared). The end
checks compare the rebuilt model with what the flow's own core says: orders,
trades, and every book level. Benchmarks are not tests: nothing asserts a
duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from events.model import decode
from events.stream_readers import BulkReader, StreamReader, last_seq, read_to_end
from jetbook.bench.procs import BenchError, Children, cpu_delta, cpu_snapshot, role_argv, tail
from jetbook.bench.workload import Flow
from jetbook.server import EmbeddedServer
from projections import queries
from protocol.streams import ensure_streams
from protocol.subjects import EVT_STREAM, HDR_MSG_ID
from replay.rebuild import rebuild
from replay.verify import verify


async def fill(js: Any, flow: Flow, orders: int, window: int) -> int:
    """Publish setup + orders into JB_CMD, at most `window` unacknowledged; returns the last command seq."""
    cmds = flow.setup + flow.take(orders)
    pending: list[Any] = []
    for c in cmds:
        pending.append(await js.publish_async(c.subject, c.data, headers={HDR_MSG_ID: c.msg_id}))
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return flow.last_cmd_seq


async def wait_for_engine(js: Any, children: Children, last_cmd: int, timeout: float) -> int:
    started = time.perf_counter()
    while True:
        children.check_alive()
        end = await last_seq(js, EVT_STREAM)
        if end and decode((await js.get_msg(EVT_STREAM, end)).data).cmd_seq >= last_cmd:
            return end
        if time.perf_counter() - started > timeout:
            raise BenchError(f"the engine did not finish in {timeout}s (JB_EVT at {end})")
        await asyncio.sleep(0.1)


def _children_cpu() -> float:
    """CPU seconds of this process's finished children: the rebuild's fold processes."""
    t = os.times()
    return t.children_user + t.children_system


async def timed(name: str, pids: dict[str, int], body: Callable[[], Awaitable[int]]) -> dict[str, Any]:
    cpu0 = {**cpu_snapshot(pids), "fold processes": _children_cpu()}
    t0 = time.perf_counter()
    events = await body()
    seconds = time.perf_counter() - t0
    cpu1 = {**cpu_snapshot(pids), "fold processes": _children_cpu()}
    return {
        "what": name,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "cpu_s": cpu_delta(cpu0, cpu1),
    }


async def raw_bulk(js: Any, end: int) -> int:
    n = 0
    async with BulkReader(js, EVT_STREAM, 1, end) as reader:
        async for chunk in reader:
            n += len(chunk)
    return n


async def raw_ordered(js: Any, end: int) -> int:
    async with StreamReader(js, EVT_STREAM, 1) as reader:
        return sum(len(batch) for batch in await read_to_end(reader))


def check_model(db: Path, flow: Flow) -> dict[str, Any]:
    """The rebuilt model against the flow's own core: [model, expected] per figure."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        c = flow.counts
        n = queries.counts(con)
        levels = {
            (lv["market_id"], lv["side"], lv["price"]): (lv["qty"], lv["orders"]) for lv in queries.book_levels(con)
        }
        expected = flow.book_levels()
        return {
            "orders": [n["orders"], c["accepted"]],
            "trades": [n["trades"], c["fills"]],
            "book_levels_differing": [len(set(levels.items()) ^ set(expected.items())), 0],
        }
    finally:
        con.close()


async def bench(args: argparse.Namespace, url: str, tmp: Path, children: Children, server_pid: int) -> dict[str, Any]:
    nc = await nats.connect(url, name="jetbook-bench-replay", allow_reconnect=False)
    js = nc.jetstream(publish_async_max_pending=args.window)
    try:
        await ensure_streams(js)
        flow = Flow(args.seed, args.markets)
        last_cmd = await fill(js, flow, args.orders, args.window)
        engine = children.spawn("engine", role_argv("engine", url))
        end = await wait_for_engine(js, children, last_cmd, args.timeout)
        children.stop(engine)
        if end != flow.events:
            raise BenchError(f"JB_EVT holds {end} events, the flow makes {flow.events}:\n{tail(engine.log)}")
        print(f"log: {last_cmd} commands -> {end} events ({flow.summary()})", flush=True)

        pids = {"nats-server": server_pid}
        runs: list[dict[str, Any]] = []
        checks: dict[str, Any] = {}
        for i in range(args.runs):
            run: dict[str, Any] = {}
            run["raw_bulk"] = await timed("raw read (bulk)", pids, lambda: raw_bulk(js, end))
            run["raw_ordered"] = await timed("raw read (ordered)", pids, lambda: raw_ordered(js, end))
            db = tmp / f"run{i}" / "read_model.db"

            async def do_rebuild(db: Path = db) -> int:
                return (await rebuild(js, db)).events

            run["rebuild"] = await timed("rebuild", pids, do_rebuild)
            checks = check_model(db, flow)
            if not args.no_verify:

                async def do_verify() -> int:
                    result = await verify(js)
                    if not result.identical:
                        raise BenchError(f"verify diverged: {result.divergence}")
                    return result.events

                run["verify"] = await timed("verify", pids, do_verify)
            runs.append(run)
            print(
                f"run {i + 1}: " + ", ".join(f"{v['what']} {v['events_per_s']:,}/s" for v in run.values()),
                flush=True,
            )
        return {"commands": last_cmd, "events": end, "flow": flow.summary(), "runs": runs, "checks": checks}
    finally:
        await nc.close()


def summarise(result: dict[str, Any]) -> list[str]:
    lines = [f"{'figure':<24} {'events/s median (min … max)':>34}   CPU s per run (median)"]
    for key in result["runs"][0]:
        rates = [r[key]["events_per_s"] for r in result["runs"]]
        cpu: dict[str, list[float]] = {}
        for r in result["runs"]:
            for who, s in r[key]["cpu_s"].items():
                cpu.setdefault(who, []).append(s)
        cpu_text = ", ".join(f"{who} {statistics.median(v):.2f}" for who, v in cpu.items())
        what = result["runs"][0][key]["what"]
        span = f"{statistics.median(rates):,.0f} ({min(rates):,} … {max(rates):,})"
        lines.append(f"{what:<24} {span:>34}   {cpu_text}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markets", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=int, default=1000, help="unacknowledged publishes at most while filling")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    command = "python -m jetbook.bench.replay " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"$ {command}")
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="jetbook-bench-replay-") as tmpdir:
        tmp = Path(tmpdir)
        server = EmbeddedServer(tmp / "nats", port=0)
        children = Children(tmp)
        server.start()
        try:
            assert server.proc is not None
            result = asyncio.run(bench(args, server.url, tmp, children, server.proc.pid))
        finally:
            children.stop_all()
            server.stop()
    result["command"] = command
    print()
    for line in summarise(result):
        print(line)
    ok = all(a == b for a, b in result["checks"].values())
    print(f"checks: {result['checks']} -> {'all passed' if ok else 'FAILED'}")
    print(f"(command: {command})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
