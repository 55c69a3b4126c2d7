"""`jetbook bench --batch K`: the same quoting flow sent one order per command and K orders per batch command.

Market makers pull and re-quote their ladders: each round one maker account of
one market cancels its open quotes and places K new ones around the market's
mid (a random walk), and then a few takers cross the touch with single orders.
The flow is a list of instructions; it goes out twice:

- single:  every instruction its own command (place_order, cancel_order);
- batch:   each maker's pull as one cancel_orders and its new ladder as one
           place_orders, K instructions each, sent compact (v1.3: the quotes
           that rest untouched are one orders_accepted, the pull one
           orders_cancelled); the takers' orders as before.

A batch is its instructions one by one (PROTOCOL 6.14), and compact changes
only how they are reported, so both decide to the same orders, fills and
books: the generator runs both through a private Engine and refuses to
measure if the markets end differently. Both then run the same
way as the main bench's end-to-end phase (run.phase_end_to_end: `jetbook
engine` and `jetbook project` as subprocesses, the concurrent clients, the
clock from the first publish to the last event in JB_EVT), alternated with the
transport floor (run.phase_floor: the null engine writing the same events for
the same messages), so a ratio compares runs made side by side. Orders/s
counts instructions; the engine's CPU per order (user + sys ÷ orders) is the
figure that stays put on a busy machine.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from commands.client import new_msg_id
from engine.core import Engine
from engine.state import State, snapshot
from events.model import OrderAccepted, encode
from jetbook.bench.procs import BenchError, Children, tail
from jetbook.bench.run import Options, fresh_streams, phase_end_to_end, phase_floor, refuse_foreign_streams, say
from jetbook.bench.workload import BASE_TS, Cmd, Flow, market_names, pack
from protocol.subjects import cmd_subject, ctl_subject, wal_subject

MID = 100_000
MAKERS = 8  # maker accounts per market
TAKERS = 20  # taker accounts, any market


@dataclass
class Sent:
    """One way of sending the flow: its commands and what the core makes of them (what run.py reads of a Flow)."""

    setup: list[Cmd]
    orders: list[Cmd] = field(default_factory=list)
    events_by_msg_id: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    events: int = 0  # JB_EVT's last seq once every command is decided (setup included)
    last_cmd_seq: int = 0


def _decide(sent: Sent, engine: Engine) -> None:
    """Every command through a private engine: the events the run must write, and the floor's messages."""
    for cmd in [*sent.setup, *sent.orders]:
        sent.last_cmd_seq += 1
        events = engine.handle(sent.last_cmd_seq, BASE_TS + sent.last_cmd_seq * 1000, cmd.subject, cmd.data)
        sent.events += len(events)
        sent.events_by_msg_id[cmd.msg_id] = [(wal_subject(e.market_id, e.type), encode(e)) for e in events]


def flows(orders: int, k: int, markets: int, seed: int) -> tuple[Sent, Sent, dict[str, Any]]:
    """(single, batch, summary) for about `orders` instructions of the quoting flow, batches of k."""
    rng = random.Random(seed)
    names = market_names(markets)
    setup = [
        Cmd(ctl_subject(m), pack({"type": "create_market", "market_id": m, "base": m.split("-")[0], "quote": "USD"}),
            new_msg_id(), i, "create_market")
        for i, m in enumerate(names)
    ]  # fmt: skip
    # Each round is a list of (market index, account, kind, instructions); kind "batch" goes out as one batch
    # command in the batched flow and as one command per instruction in the single one.
    rounds: list[tuple[int, str, str, str, list[dict[str, Any]]]] = []
    mids = [MID] * markets
    live: dict[tuple[int, str], list[str]] = {}  # the maker's quotes still out, by client_order_id
    coid = 0
    n = 0
    while n < orders:
        mi = rng.randrange(markets)
        mids[mi] += rng.choice((-3, -2, -1, 0, 0, 1, 2, 3))
        maker = f"m{rng.randrange(MAKERS)}"
        pull = live.pop((mi, maker), [])
        if pull:
            rounds.append((mi, maker, "cancel_orders", "cancel_order", [{"client_order_id": c} for c in pull]))
        quotes: list[dict[str, Any]] = []
        for j in range(k):
            coid += 1
            buy = j % 2 == 0
            price = mids[mi] - 1 - j // 2 if buy else mids[mi] + 1 + j // 2
            quotes.append({"client_order_id": f"q{coid}", "side": "buy" if buy else "sell", "price": price,
                           "qty": 1 + int(rng.expovariate(1 / 4))})  # fmt: skip
        live[(mi, maker)] = [q["client_order_id"] for q in quotes]
        rounds.append((mi, maker, "place_orders", "place_order", quotes))
        n += len(pull) + k
        for _ in range(max(1, k // 10)):
            coid += 1
            buy = rng.random() < 0.5
            through = int(rng.expovariate(1 / 2))
            taker = {
                "client_order_id": f"t{coid}",
                "side": "buy" if buy else "sell",
                "tif": "ioc",
                "price": mids[mi] + 1 + through if buy else mids[mi] - 1 - through,
                "qty": 1 + rng.randrange(6),
            }
            rounds.append((mi, f"t{rng.randrange(TAKERS)}", "", "place_order", [taker]))  # fmt: skip
            n += 1

    single, batch = Sent(setup), Sent(setup)
    for mi, account, batch_type, one_type, items in rounds:
        subject = cmd_subject(names[mi], account)
        kind = "cancel" if one_type == "cancel_order" else "place"
        for item in items:
            single.orders.append(Cmd(subject, pack({"type": one_type, **item}), new_msg_id(), mi, kind))
        if batch_type:
            body = {"type": batch_type, "instructions": items, "compact": True}  # v1.3: runs as one event
            batch.orders.append(Cmd(subject, pack(body), new_msg_id(), mi, kind))
        else:
            batch.orders.extend(single.orders[-len(items) :])
    engines = Engine(), Engine()
    _decide(single, engines[0])
    _decide(batch, engines[1])
    ends = [snapshot(State(markets=e.state.markets)) for e in engines]
    if ends[0] != ends[1]:
        raise BenchError("the batched flow does not decide to the same markets as the single one")
    accepted = sum(
        1 for evs in single.events_by_msg_id.values() for s, _ in evs if s.endswith("." + OrderAccepted.type)
    )
    instructions = len(single.orders)
    summary = {
        "seed": seed, "markets": names, "k": k, "orders": instructions, "accepted": accepted,
        "single_commands": instructions, "batch_commands": len(batch.orders),
        "orders_per_batch_command": round(instructions / len(batch.orders), 1),
        "events": single.events - len(setup), "events_batch": batch.events - len(setup),
        "events_per_order": {"single": round((single.events - len(setup)) / instructions, 3),
                             "batch": round((batch.events - len(setup)) / instructions, 3)},
        "command_bytes_avg": {"single": round(sum(len(c.data) for c in single.orders) / instructions, 1),
                              "batch": round(sum(len(c.data) for c in batch.orders) / len(batch.orders), 1)},
    }  # fmt: skip
    return single, batch, summary


async def _phases(opts: Options, url: str, sends: dict[str, Sent], tmp: Path, children: Children,
                  server_pid: int | None) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    from jetbook.wiring import connect

    nc = await connect(url, "jetbook-bench-batch", reconnect=False)
    js = nc.jetstream()
    runs: dict[str, list[dict[str, Any]]] = {f"{w}_{name}": [] for name in sends for w in ("floor", "engine")}
    try:
        if opts.nats_url:
            await refuse_foreign_streams(js)
        for r in range(opts.runs):
            for name, sent in sends.items():  # single then batch, then again: side by side, alternated
                flow = cast(Flow, sent)  # phase_floor / phase_end_to_end read setup, events_by_msg_id, events
                setup_events, total = len(sent.setup), sent.events
                say(f"run {r + 1}/{opts.runs} {name}: floor, {len(sent.orders):,} commands ...")
                floor = await phase_floor(
                    opts, url, js, flow, setup_events, total, sent.orders, tmp, children, server_pid
                )
                runs[f"floor_{name}"].append(floor)
                say(f"run {r + 1}/{opts.runs} {name}: engine ...")
                e2e, _, probe = await phase_end_to_end(
                    opts, url, js, flow, setup_events, total, sent.orders, tmp / f"rm-{name}-{r}.db", children,
                    server_pid, profile=False,
                )  # fmt: skip
                children.stop_all()
                probe.close()
                e2e.pop("pids", None)
                runs[f"engine_{name}"].append(e2e)
        if opts.nats_url:
            await fresh_streams(js)
    finally:
        await nc.close()
    return runs


def run_batch(opts: Options, k: int) -> dict[str, Any]:
    """Both ways of sending the flow, floor and engine, `opts.runs` times alternated; the figures."""
    from jetbook.server import EmbeddedServer

    if not 1 <= k <= 200:
        raise BenchError("--batch is 1..200 (MAX_INSTRUCTIONS)")
    say(f"generating the quoting flow: about {opts.orders:,} orders over {opts.markets} markets, K = {k} ...")
    single, batch, workload = flows(opts.orders, k, opts.markets, opts.seed)
    tmp = Path(tempfile.mkdtemp(prefix="jetbook-bench-batch-"))
    children = Children(tmp)
    server = None if opts.nats_url else EmbeddedServer(tmp / "nats", port=0, host="127.0.0.1", die_with_parent=True)
    try:
        url = opts.nats_url or server.start()  # type: ignore[union-attr]
        pid = server.proc.pid if server is not None and server.proc is not None else None
        runs = asyncio.run(_phases(opts, url, {"single": single, "batch": batch}, tmp, children, pid))
    except BenchError:
        for ch in children.items:
            say(f"--- {ch.name} log ---\n{tail(ch.log)}")
        raise
    finally:
        children.stop_all()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    n = workload["orders"]
    out: dict[str, Any] = {"bench": "jetbook bench --batch", "command": shlex.join(opts.command),
                           "workload": workload, "runs": []}  # fmt: skip
    for r in range(opts.runs):
        row: dict[str, Any] = {}
        for name in ("single", "batch"):
            e, f = runs[f"engine_{name}"][r], runs[f"floor_{name}"][r]
            engine_cpu = e["cpu_s"].get("engine", 0.0)
            # run.py's orders_per_s counts commands: here an order is an instruction, whichever way it was sent
            row[name] = {
                "orders_per_s": round(n / e["seconds"]), "floor_orders_per_s": round(n / f["seconds"]),
                "commands_per_s": e["orders_per_s"], "events_per_s": e["events_per_s"],
                "engine_cpu_us_per_order": round(engine_cpu / n * 1e6, 1),
                "floor_cpu_us_per_order": round(f["cpu_s"].get("null engine", 0.0) / n * 1e6, 1),
                "seconds": e["seconds"], "floor_seconds": f["seconds"],
            }  # fmt: skip
        row["ratio"] = round(row["batch"]["orders_per_s"] / max(1, row["single"]["orders_per_s"]), 2)
        row["floor_ratio"] = round(row["batch"]["floor_orders_per_s"] / max(1, row["single"]["floor_orders_per_s"]), 2)
        out["runs"].append(row)
    best = {name: max(out["runs"], key=lambda row: row[name]["orders_per_s"])[name] for name in ("single", "batch")}
    out["best"] = best
    out["ratio_best"] = round(best["batch"]["orders_per_s"] / max(1, best["single"]["orders_per_s"]), 2)
    return out


def print_batch_report(doc: dict[str, Any]) -> None:
    w = doc["workload"]
    print(f"{doc['command']}")
    print(f"quoting flow: {w['orders']:,} orders ({w['accepted']:,} places) over {len(w['markets'])} markets, "
          f"K = {w['k']}: {w['single_commands']:,} single commands or {w['batch_commands']:,} with batches "
          f"({w['orders_per_batch_command']} orders per command); {w['events']:,} events single, "
          f"{w['events_batch']:,} with compact batches ({w['events_per_order']['single']} and "
          f"{w['events_per_order']['batch']} per order)")  # fmt: skip
    print(f"{'run':>4} {'single orders/s':>16} {'batch orders/s':>15} {'ratio':>6} {'floor single':>13} "
          f"{'floor batch':>12} {'floor ratio':>12} {'engine CPU us/order single':>27} {'batch':>6}")  # fmt: skip
    for i, row in enumerate(doc["runs"], 1):
        s, b = row["single"], row["batch"]
        print(f"{i:>4} {s['orders_per_s']:>16,} {b['orders_per_s']:>15,} {row['ratio']:>6} "
              f"{s['floor_orders_per_s']:>13,} {b['floor_orders_per_s']:>12,} {row['floor_ratio']:>12} "
              f"{s['engine_cpu_us_per_order']:>27} {b['engine_cpu_us_per_order']:>6}")  # fmt: skip
    print(f"best of each: {doc['best']['single']['orders_per_s']:,} vs {doc['best']['batch']['orders_per_s']:,} "
          f"orders/s: {doc['ratio_best']}x")  # fmt: skip
