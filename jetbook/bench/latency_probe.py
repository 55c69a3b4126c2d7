"""One order at a time: the engine's own latency, with nothing else competing for the two cores.

Starts an embedded nats-server and `jetbook engine` (no projection), creates a
market, then publishes N orders one by one (waiting GAP after each answer) and
times each from the start of its publish to the arrival of its first event on
a plain `jb.evt.>` subscription (events are republished there once stored).
This is the floor under `jetbook bench`'s latency figures, which are taken
with four publishing clients, the projection and the measuring client all on
the same two cores.

    python -m jetbook.bench.latency_probe --orders 300 --gap-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import nats

from jetbook.server import EmbeddedServer
from protocol.streams import ensure_streams


def _ms(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def probe(n: int, gap: float) -> None:
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="jetbook-probe-")), port=0)
    url = server.start()
    nc = await nats.connect(url)
    engine = subprocess.Popen([sys.executable, "-m", "jetbook", "engine", "--nats-url", url], stderr=subprocess.DEVNULL)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        seen: dict[int, float] = {}
        arrived = asyncio.Event()

        async def on_event(msg: Any) -> None:
            seen.setdefault(msgpack.unpackb(msg.data)["cmd_seq"], time.perf_counter())
            arrived.set()

        await nc.subscribe("jb.evt.>", cb=on_event)
        create = {"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"}
        first = (await js.publish("jb.ctl.M", msgpack.packb(create))).seq
        deadline = time.monotonic() + 30
        while first not in seen:
            if time.monotonic() > deadline:
                raise SystemExit("the engine did not answer within 30 s")
            await asyncio.sleep(0.05)
        latencies: list[float] = []
        for i in range(n):
            buy = i % 2 == 1
            price = 100 + (i % 7) if buy else 120 - (i % 7)  # about one order in seven crosses
            body = {"type": "place_order", "client_order_id": f"c{i}", "side": "buy" if buy else "sell",
                    "price": price, "qty": 1}  # fmt: skip
            t = time.perf_counter()
            seq = (await js.publish(f"jb.cmd.M.a{i % 5}", msgpack.packb(body))).seq
            while seq not in seen:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 5)
            latencies.append(seen[seq] - t)
            await asyncio.sleep(gap)
        latencies.sort()
        print(f"command: python -m jetbook.bench.latency_probe --orders {n} --gap-ms {gap * 1000:g}")
        print(f"publish -> first event, {n} orders one at a time: p50 {_ms(latencies, 0.5):.2f} ms, "
              f"p99 {_ms(latencies, 0.99):.2f} ms, max {latencies[-1] * 1000:.2f} ms")  # fmt: skip
    finally:
        engine.terminate()
        engine.wait(15)
        await nc.close()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--gap-ms", type=float, default=10.0)
    args = ap.parse_args()
    asyncio.run(probe(args.orders, args.gap_ms / 1000))


if __name__ == "__main__":
    main()
