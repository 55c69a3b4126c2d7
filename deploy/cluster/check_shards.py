"""The sharded half of the cluster check, run by check_shards.sh: leaders placed apart, a node lost under load.

    python check_shards.py place  URL MONITOR_PORT...        shard k's two streams led by node n(k+2): printed
    python check_shards.py load   URL ORDERS KILL_PID        the seeded flow, n3 killed a third of the way in
    python check_shards.py verify URL ORDERS                 every command once, exactly one engine's events

URL is the operator's. The flow is jetbook's bench flow (seed 1) over 4 markets, two per shard; each market's
commands go out one acked publish after another from their own task, a failed or timed-out publish retried
with the same Nats-Msg-Id (the stream's duplicate window makes a retry of a stored command a no-op), so the
order within a market holds however the node loss falls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from typing import Any

SHARDS = 2
SEED = 1


def flow(orders: int) -> Any:
    from jetbook.bench.shards import balanced_markets
    from jetbook.bench.workload import Flow

    f = Flow(SEED, 4, 20, keep_events=True, names=balanced_markets(4, [SHARDS]))
    return f, f.take(orders)


def leaders(ports: list[int]) -> dict[str, str]:
    """stream -> the node its leader is on, as the leader itself reports it."""
    out: dict[str, str] = {}
    for port in ports:
        try:
            url = f"http://127.0.0.1:{port}/jsz?accounts=true&streams=true"
            with urllib.request.urlopen(url, timeout=2) as r:
                doc = json.load(r)
        except OSError:
            continue
        for acc in doc.get("account_details") or []:
            for s in acc.get("stream_detail") or []:
                cl = s.get("cluster") or {}
                # only the leader's own view lists the other two as its replicas
                if cl.get("leader") and cl["leader"] not in {r["name"] for r in cl.get("replicas") or []}:
                    out[s["name"]] = cl["leader"]
    return out


async def place(url: str, ports: list[int]) -> None:
    """Shard k's JB_CMD_k and JB_EVT_k led by n(k+2) (n2 and n3): a step-down naming the preferred node."""
    from jetbook.wiring import connect

    want = {f"{kind}_{k}": f"n{k + 2}" for k in range(SHARDS) for kind in ("JB_CMD", "JB_EVT")}
    nc = await connect(url, "check-place", reconnect=False)
    stepdowns = 0
    try:
        deadline = time.monotonic() + 60
        while any((now := leaders(ports)).get(s) != n for s, n in want.items()):
            for stream, node in want.items():
                if now.get(stream) not in (None, node):
                    body = json.dumps({"placement": {"preferred": node}}).encode()
                    stepdowns += 1
                    try:
                        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=5)
                    except Exception as err:  # an election in progress: ask again
                        print(f"    stepdown {stream}: {err!r}", flush=True)
            if time.monotonic() > deadline:
                sys.exit(f"leaders not placed in 60 s: {now}")
            await asyncio.sleep(1.0)
        for stream in sorted(want):
            print(f"{stream}: R3, leader {now[stream]}")
        print(f"({stepdowns} leader step-downs to get there)")
    finally:
        await nc.close()


async def publish_flow(url: str, orders: int, on_progress: Any) -> int:
    """Every command of the flow, in order per market, retried until acked; the retries it took."""
    from jetbook.wiring import connect
    from protocol.shards import cmd_stream_name, partition
    from protocol.subjects import HDR_MSG_ID

    f, cmds = flow(orders)
    nc = await connect(url, "check-load", reconnect=True)
    js = nc.jetstream(timeout=2)
    retries = 0
    sent = 0

    async def send(c: Any) -> None:
        nonlocal retries
        deadline = time.monotonic() + 90
        while True:
            try:
                ack = await js.publish(c.subject, c.data, headers={HDR_MSG_ID: c.msg_id})
                market = c.subject.split(".")[2]
                if ack.stream != cmd_stream_name(partition(market, SHARDS), SHARDS):
                    sys.exit(f"{c.subject} stored in {ack.stream}")
                return
            except Exception:  # no leader, a timeout, a reconnect: the same message again
                retries += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def market(i: int) -> None:
        nonlocal sent
        for c in (c for c in cmds if c.market == i):
            await send(c)
            sent += 1
            on_progress(sent)

    try:
        for c in f.setup:
            await send(c)
        await asyncio.gather(*(market(i) for i in range(len(f.markets))))
    finally:
        await nc.close()
    return retries


async def load(url: str, orders: int, victim: int) -> None:
    killed = []

    def progress(sent: int) -> None:
        if not killed and sent >= orders // 3:
            os.kill(victim, signal.SIGKILL)
            killed.append(time.monotonic())
            print(f"n3 killed (kill -9) after {sent} of {orders} commands", flush=True)

    retries = await publish_flow(url, orders, progress)
    print(f"all {orders} commands acked ({retries} publishes retried across the node loss)")


async def verify(url: str, orders: int) -> None:
    """JB_CMD_k holds each of its commands once; JB_EVT_k the events of its last one; every kind per market."""
    from events.model import decode
    from jetbook.bench.shards import CHECKPOINT_KIND, expected_kinds
    from jetbook.wiring import connect
    from protocol.shards import cmd_stream_name, evt_stream_name, partition

    f, cmds = flow(orders)
    everything = [*f.setup, *cmds]
    want_cmds = [sum(1 for c in everything if partition(c.subject.split(".")[2], SHARDS) == k) for k in range(SHARDS)]
    nc = await connect(url, "check-verify", reconnect=False)
    js = nc.jetstream(timeout=5)
    try:
        deadline = time.monotonic() + 90
        state: list[tuple[int, int]] = []
        while True:
            try:
                state = []
                for k in range(SHARDS):
                    cmd_msgs = int((await js.stream_info(cmd_stream_name(k, SHARDS))).state.messages)
                    evt = evt_stream_name(k, SHARDS)
                    last = int((await js.stream_info(evt)).state.last_seq)
                    decided = decode((await js.get_msg(evt, last, direct=True)).data).cmd_seq if last else 0
                    state.append((cmd_msgs, decided))
                if all(m == w and d == w for (m, d), w in zip(state, want_cmds, strict=True)):
                    break
            except Exception as err:  # a stream electing its leader after the node loss: ask again
                print(f"    ({err!r}; asking again)", flush=True)
            if time.monotonic() > deadline:
                sys.exit(f"shards not caught up: (JB_CMD_k messages, last decided) {state}, want {want_cmds}")
            await asyncio.sleep(0.3)
        got: dict[tuple[str, str], int] = {}
        for k in range(SHARDS):
            info = await js.stream_info(evt_stream_name(k, SHARDS), subjects_filter="jb.evt.>")
            for subject, count in (info.state.subjects or {}).items():
                _, _, m, kind = subject.split(".", 3)
                if kind != CHECKPOINT_KIND:
                    got[(m, kind)] = got.get((m, kind), 0) + count
    finally:
        await nc.close()
    want = expected_kinds(f, everything)
    if got != dict(want):
        sys.exit(f"events differ from one engine's: got {sorted(got.items())}, want {sorted(want.items())}")
    fills = sum(n for (_, kind), n in got.items() if kind == "fill")
    for k in range(SHARDS):
        print(f"shard {k}: JB_CMD_{k} holds its {want_cmds[k]} commands once, JB_EVT_{k} decided up to the last")
    print(f"nothing lost: {fills} fills, every event kind per market as one engine decides the same commands")


if __name__ == "__main__":
    cmd, url, *rest = sys.argv[1:]
    if cmd == "place":
        asyncio.run(place(url, [int(p) for p in rest]))
    elif cmd == "load":
        asyncio.run(load(url, int(rest[0]), int(rest[1])))
    elif cmd == "verify":
        asyncio.run(verify(url, int(rest[0])))
    else:
        sys.exit(f"unknown {cmd}")
