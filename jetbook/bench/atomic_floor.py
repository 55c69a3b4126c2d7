"""The write path's floor: ADR-50 atomic batches from nats-py, as the engine sends them, with no engine.

    python -m jetbook.bench.atomic_floor [--messages 100000] [--payload 180]

For batch sizes 1000, 100 and 10 it publishes --messages messages to a scratch
stream (file storage, allow_atomic) the way the engine's commit pipeline
(engine/commit.py) does: messages 1..n-1 as one buffer of HPUB frames
(`batch_frames`, Nats-Expected-Last-Sequence on the first), then nc.request
for the commit message, waiting for its PubAck before the next batch (one
commit in flight, to time the two parts apart). Reported
per batch size: messages/s, the time in the publish calls and the commit wait
per batch. The last row is plain core-NATS publishing (no JetStream ack) of the
same messages, for scale. --payload is about an encoded event's size.

Then the round trip of one small write, repeated 500 times: a plain acked
js.publish, and atomic batches of 1 and 2 messages (what the engine pays per
read batch when commands trickle in one at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import StorageType, StreamConfig
from nats.nuid import NUID

from engine.commit import batch_frames
from jetbook.server import EmbeddedServer
from protocol.subjects import HDR_BATCH_COMMIT, HDR_BATCH_ID, HDR_BATCH_SEQ, HDR_EXPECTED_LAST_SEQ


def commit_headers(batch_id: str, n: int, expected: int) -> dict[str, str]:
    """The headers of the last message of an atomic batch of n, as engine/commit.py sets them."""
    headers = {HDR_BATCH_ID: batch_id, HDR_BATCH_SEQ: str(n), HDR_BATCH_COMMIT: "1"}
    if n == 1:
        headers[HDR_EXPECTED_LAST_SEQ] = str(expected)
    return headers


async def run(url: str, messages: int, payload_size: int) -> None:
    nc = await nats.connect(url, name="bench-atomic", allow_reconnect=False)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="BENCH_ATOMIC", subjects=["bench.atomic.>"], storage=StorageType.FILE, allow_atomic=True)
    )
    payload = b"x" * payload_size
    nuid = NUID()
    send_raw = nc._send_command  # nats-py's write buffer, as engine/commit.py writes the frames
    expected = 0  # the stream's last seq: every batch carries Nats-Expected-Last-Sequence, as the engine's do
    print(f"{'batch':>6}{'batches':>9}{'msg/s':>10}{'publish ms/batch':>18}{'commit ms/batch':>17}{'us/msg wait':>13}")
    for size in (1000, 100, 10):
        batches = max(1, messages // size)
        t_pub = t_commit = 0.0
        t0 = time.perf_counter()
        for _ in range(batches):
            bid = nuid.next().decode()
            ta = time.perf_counter()
            if size > 1:
                await send_raw(batch_frames(bid, expected, [("bench.atomic.x", payload)] * (size - 1)))
            tb = time.perf_counter()
            reply = await nc.request("bench.atomic.x", payload, timeout=10, headers=commit_headers(bid, size, expected))
            expected += size
            if b'"error"' in reply.data:
                raise RuntimeError(reply.data.decode())
            t_pub += tb - ta
            t_commit += time.perf_counter() - tb
        wall = time.perf_counter() - t0
        print(
            f"{size:>6}{batches:>9}{batches * size / wall:>10,.0f}{t_pub / batches * 1e3:>18.2f}"
            f"{t_commit / batches * 1e3:>17.2f}{t_commit / batches / size * 1e6:>13.1f}"
        )
    t0 = time.perf_counter()
    for i in range(messages):
        await nc.publish("bench.plain.x", payload)
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()
    print(f"{'core':>6}{'-':>9}{messages / (time.perf_counter() - t0):>10,.0f}  (plain publish, flush every 1000)")
    print("\nround trip of one small write, 500 times in a row (ms):")
    await js.add_stream(StreamConfig(name="BENCH_PLAIN", subjects=["bench.acked.>"], storage=StorageType.FILE))

    async def acked() -> None:
        await js.publish("bench.acked.x", payload)

    async def batch(n: int) -> None:
        bid = nuid.next().decode()
        nonlocal expected
        if n > 1:
            await send_raw(batch_frames(bid, expected, [("bench.atomic.x", payload)] * (n - 1)))
        reply = await nc.request("bench.atomic.x", payload, timeout=10, headers=commit_headers(bid, n, expected))
        if b'"error"' in reply.data:
            raise RuntimeError(reply.data.decode())
        expected += n

    cases = [
        ("js.publish, 1 message", acked),
        ("atomic batch of 1", lambda: batch(1)),
        ("atomic batch of 2", lambda: batch(2)),
    ]
    for name, write in cases:
        times = []
        for _ in range(500):
            t = time.perf_counter()
            await write()
            times.append(time.perf_counter() - t)
        times.sort()
        print(f"  {name:<24} p50 {times[250] * 1e3:6.3f}   p99 {times[495] * 1e3:6.3f}")
    await nc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--payload", type=int, default=180, help="bytes per message (default 180)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jetbook-bench-"))
    server = EmbeddedServer(tmp, port=0, host="127.0.0.1", die_with_parent=True)
    try:
        asyncio.run(run(server.start(), args.messages, args.payload))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
