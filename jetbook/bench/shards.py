"""`jetbook bench --shards 1,2,4`: the seeded flow through N shard engines, what a shard costs and what the broker does.

On a machine with fewer cores than shards the aggregate rate cannot scale, so
the figures that carry over to bigger machines are costs, not rates: each shard
engine's CPU per command (user + sys of its process ÷ the commands routed to its
shard) and the broker's CPU per message (nats-server's user + sys ÷ the messages
in and out its /varz counts). The aggregate rate is reported beside them.

Each run starts its own nats-server with the account mappings for N shards
(protocol/shards.py) and its monitoring port, makes the shard streams, starts
`jetbook engine --shard k --shards N` for every k, publishes the setup, then
every command from one client per market (the same concurrent clients as the
main bench) and stops the clock when every shard's JB_EVT_k holds the events of
the last command routed to it. The markets are chosen so that each shard of
every N measured gets the same number (FNV-1a of the name, the broker's own
partition), and every PubAck must name the market's own shard's stream.

Then the same check as a one-shard venue would pass: the count of every event
kind per market in the JB_EVT_k streams equals what the generator's private
one-shard engine produced (checkpoints aside: a shard checkpoints on its own
count), so the shards decided exactly the fills of one engine.
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import shutil
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from events.model import decode
from jetbook.bench.procs import BenchError, Children, cpu_delta, cpu_snapshot, role_argv, tail
from jetbook.bench.run import Clients, Options, publish_in_order, say
from jetbook.bench.stages import free_port
from jetbook.bench.workload import Cmd, Flow, market_names
from protocol.shards import cmd_stream_name, evt_stream_name, mappings, partition
from protocol.subjects import HDR_MSG_ID

CHECKPOINT_KIND = "checkpoint"


def balanced_markets(markets: int, counts: list[int]) -> list[str]:
    """`markets` names (rounded up) such that every shard count in `counts` gives each shard the same number."""
    lcm = math.lcm(*counts)
    per = max(1, math.ceil(markets / lcm))
    picked: dict[int, list[str]] = {r: [] for r in range(lcm)}
    for name in market_names(64 * lcm + 8):
        bucket = picked[partition(name, lcm)] if lcm > 1 else picked[0]
        if len(bucket) < per:
            bucket.append(name)
        if all(len(b) == per for b in picked.values()):
            break
    # interleave the residues so the clients (one per market, by index) are spread over the shards
    return [picked[r][i] for i in range(per) for r in range(lcm)]


def expected_kinds(flow: Flow, cmds: list[Cmd]) -> Counter[tuple[str, str]]:
    """(market, kind) -> events the one-shard generator made for these commands, checkpoints aside."""
    out: Counter[tuple[str, str]] = Counter()
    for c in cmds:
        for subject, _ in flow.events_by_msg_id[c.msg_id]:
            _, _, market, kind = subject.split(".", 3)
            if kind != CHECKPOINT_KIND:
                out[(market, kind)] += 1
    return out


def varz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as r:
        doc: dict[str, Any] = json.load(r)
    return doc


def start_server(children: Children, tmp: Path, shards: int) -> tuple[str, int, int]:
    """nats-server with the N-shard mappings and a monitoring port: (url, pid, monitor port)."""
    from jetbook.server import accepts_connections, find_binary

    conf = tmp / f"server-{shards}.conf"
    conf.write_text(json.dumps({"mappings": mappings(shards)}))
    port, monitor = free_port(), free_port()
    argv = [find_binary(), "-js", "-sd", str(tmp / f"store-{shards}"), "-a", "127.0.0.1", "-p", str(port),
            "-m", str(monitor), "-c", str(conf)]  # fmt: skip
    child = children.spawn(f"nats-server-{shards}", argv)
    url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while not accepts_connections(url):
        children.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"nats-server did not start:\n{tail(child.log)}")
        time.sleep(0.05)
    return url, child.proc.pid, monitor


async def publish_all(clients: Clients, cmds: list[Cmd], shards: int) -> None:
    """Every client its markets' commands in order, a window of un-acked publishes; each ack from its shard."""
    shares: list[list[Cmd]] = [[] for _ in clients.js]
    for c in cmds:
        shares[c.market % len(shares)].append(c)

    async def one(js: Any, items: list[Cmd]) -> list[tuple[Cmd, Any]]:
        futures = [(c, await js.publish_async(c.subject, c.data, headers={HDR_MSG_ID: c.msg_id})) for c in items]
        if futures:
            await js.publish_async_completed()
        return [(c, f.result()) for c, f in futures]

    results = await asyncio.gather(*(one(js, share) for js, share in zip(clients.js, shares, strict=True)))
    for c, ack in (r for rs in results for r in rs):
        market = c.subject.split(".")[2]
        if ack.duplicate or ack.stream != cmd_stream_name(partition(market, shards), shards):
            raise BenchError(f"{c.subject} stored in {ack.stream} (duplicate {ack.duplicate}), not its shard's")


async def last_cmd_seq(js: Any, stream: str) -> int:
    """cmd_seq of the newest event in an event stream (0 when empty)."""
    last = int((await js.stream_info(stream)).state.last_seq)
    return decode((await js.get_msg(stream, last, direct=True)).data).cmd_seq if last else 0


async def one_run(opts: Options, flow: Flow, orders: list[Cmd], shards: int, tmp: Path) -> dict[str, Any]:
    from jetbook.wiring import connect
    from protocol.streams import ensure_shard_streams

    tmp.mkdir(parents=True, exist_ok=True)
    children = Children(tmp)
    url, server_pid, monitor = start_server(children, tmp, shards)
    nc = await connect(url, "jetbook-bench-shards", reconnect=False)
    js = nc.jetstream()
    clients: Clients | None = None
    try:
        await ensure_shard_streams(js, shards)
        engines = {}
        for k in range(shards):
            extra = ["--shard", str(k), "--shards", str(shards)] if shards > 1 else []
            engines[f"engine {k}"] = children.spawn(f"engine-{shards}-{k}", [*role_argv("engine", url), *extra])
        per_shard = [[c for c in [*flow.setup, *orders] if partition(c.subject.split(".")[2], shards) == k]
                     for k in range(shards)]  # fmt: skip
        evt = [evt_stream_name(k, shards) for k in range(shards)]
        await publish_in_order(js, flow.setup)

        async def shards_done(upto: list[int]) -> bool:
            children.check_alive()
            for k in range(shards):
                if await last_cmd_seq(js, evt[k]) < upto[k]:
                    return False
            return True

        setup_counts = [sum(1 for c in flow.setup if partition(c.subject.split(".")[2], shards) == k)
                        for k in range(shards)]  # fmt: skip
        deadline = time.monotonic() + 60
        while not await shards_done(setup_counts):
            if time.monotonic() > deadline:
                raise BenchError("the shard engines did not decide the setup in 60 s")
            await asyncio.sleep(opts.poll)
        clients = await Clients.open(url, opts.effective_clients(), opts.window)
        pids = {name: ch.proc.pid for name, ch in engines.items()} | {"nats-server": server_pid}
        v0, cpu0, t0 = varz(monitor), cpu_snapshot(pids), time.perf_counter()
        publish = asyncio.create_task(publish_all(clients, orders, shards))
        done = [len(cmds) for cmds in per_shard]
        last_progress, prev = time.perf_counter(), -1
        while not await shards_done(done):
            if publish.done() and publish.exception() is not None:
                await publish
            seen = sum([int((await js.stream_info(s)).state.last_seq) for s in evt])
            if seen != prev:
                prev, last_progress = seen, time.perf_counter()
            elif time.perf_counter() - last_progress > opts.stall:
                raise BenchError(f"no progress for {opts.stall:.0f}s ({seen} events)")
            await asyncio.sleep(opts.poll)
        seconds = time.perf_counter() - t0
        cpu, v1 = cpu_delta(cpu0, cpu_snapshot(pids)), varz(monitor)
        await publish
        got: Counter[tuple[str, str]] = Counter()
        for s in evt:
            subjects = (await js.stream_info(s, subjects_filter="jb.evt.>")).state.subjects or {}
            for subject, count in subjects.items():
                _, _, market, kind = subject.split(".", 3)
                if kind != CHECKPOINT_KIND:
                    got[(market, kind)] += count
    finally:
        if clients is not None:
            await clients.close()
        await nc.close()
        children.stop_all()
    want = expected_kinds(flow, [*flow.setup, *orders])
    differing = sorted(f"{m} {k}: {got[(m, k)]} != {want[(m, k)]}" for m, k in got.keys() | want.keys()
                       if got[(m, k)] != want[(m, k)])  # fmt: skip
    msgs = (v1["in_msgs"] - v0["in_msgs"]) + (v1["out_msgs"] - v0["out_msgs"])
    n = len(orders)
    broker = cpu.get("nats-server", 0.0)
    return {
        "shards": shards,
        "orders": n,
        "seconds": round(seconds, 3),
        "orders_per_s": round(n / seconds),
        "commands_per_shard": [len(cmds) - setup_counts[k] for k, cmds in enumerate(per_shard)],
        "engine_cpu_us_per_command": [
            round(cpu.get(f"engine {k}", 0.0) * 1e6 / max(1, len(per_shard[k]) - setup_counts[k]), 1)
            for k in range(shards)
        ],
        "broker_msgs": msgs,
        "broker_msgs_per_command": round(msgs / n, 2),
        "broker_cpu_us_per_msg": round(broker * 1e6 / max(1, msgs), 2),
        "broker_cpu_us_per_command": round(broker * 1e6 / n, 1),
        "cpu_s": cpu,
        "fills": sum(c for (_, kind), c in got.items() if kind == "fill"),
        "kinds_differing": differing,
    }


def run_shards(opts: Options, counts: list[int]) -> dict[str, Any]:
    """Every shard count in `counts`, `opts.runs` times alternated, each on a fresh server; the figures."""
    if not counts or min(counts) < 1 or max(counts) > 16:
        raise BenchError("--shards takes shard counts 1..16, e.g. 1,2,4")
    names = balanced_markets(opts.markets, counts)
    say(f"generating the flow: {opts.orders:,} commands over {len(names)} markets, seed {opts.seed} ...")
    flow = Flow(opts.seed, len(names), opts.accounts, keep_events=True, names=names)
    orders = flow.take(opts.orders)
    tmp = Path(tempfile.mkdtemp(prefix="jetbook-bench-shards-"))
    runs: list[dict[str, Any]] = []
    try:
        for r in range(opts.runs):
            for n in counts:
                say(f"run {r + 1}/{opts.runs}: {n} shard(s) ...")
                runs.append(asyncio.run(one_run(opts, flow, orders, n, tmp / f"r{r}-{n}")))
                row = runs[-1]
                say(f"    {row['orders_per_s']:,} orders/s, engine CPU us/command {row['engine_cpu_us_per_command']},"
                    f" broker {row['broker_cpu_us_per_msg']} us/msg")  # fmt: skip
    finally:
        if opts.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    problems = [f"{row['shards']} shards: {d}" for row in runs for d in row["kinds_differing"]]
    return {
        "bench": "jetbook bench --shards",
        "command": shlex.join(opts.command),
        "workload": {
            "orders": len(orders),
            "markets": names,
            "seed": opts.seed,
            "fills": flow.counts["fills"],
            "clients": opts.effective_clients(),
            "window_per_client": opts.window,
        },
        "runs": runs,
        "problems": problems,
    }


def print_shards_report(doc: dict[str, Any]) -> None:
    w = doc["workload"]
    print(doc["command"])
    print(f"{w['orders']:,} commands over {len(w['markets'])} markets ({w['fills']:,} fills), {w['clients']} clients")
    print(f"{'shards':>6} {'orders/s':>9} {'engine CPU us/command (each shard)':>36} {'broker us/msg':>14} "
          f"{'msgs/command':>13} {'broker us/command':>18} {'fills':>7}")  # fmt: skip
    for row in doc["runs"]:
        per = " ".join(f"{x:g}" for x in row["engine_cpu_us_per_command"])
        print(
            f"{row['shards']:>6} {row['orders_per_s']:>9,} {per:>36} {row['broker_cpu_us_per_msg']:>14} "
            f"{row['broker_msgs_per_command']:>13} {row['broker_cpu_us_per_command']:>18} {row['fills']:>7,}"
        )
    for p in doc["problems"]:
        print(f"PROBLEM: {p}")
