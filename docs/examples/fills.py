"""Print jetbook fills from any JB_EVT sequence, then live, with only nats-py and msgpack (docs/QUICKSTART.md).

    python docs/examples/fills.py --nats-url nats://127.0.0.1:4222                 # all fills so far, then exit
    python docs/examples/fills.py --market ETH-USDC --from-seq 1200 --follow       # from seq 1200, then live

A JetStream consumer on JB_EVT filtered to `jb.evt.<market>.fill` (or
`jb.evt.*.fill` for every market), delivering from a start sequence. Here it is
an ordered consumer: ephemeral, no acks; the reader keeps its own position (the
JB_EVT sequence printed first on each line) and restarts from the next one.
"""

from __future__ import annotations

import argparse
import asyncio

import msgpack
import nats
import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--market", default="*", help="market id; all markets if absent")
    ap.add_argument("--from-seq", type=int, default=1, help="JB_EVT sequence to start at")
    ap.add_argument("--follow", action="store_true", help="keep printing new fills")
    args = ap.parse_args()

    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    sub = await js.subscribe(
        f"jb.evt.{args.market}.fill",
        stream="JB_EVT",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=max(1, args.from_seq)),
    )
    start, last_seen = max(1, args.from_seq), 0
    while True:
        try:
            msg = await sub.next_msg(timeout=0.5)
        except nats.errors.TimeoutError:
            if args.follow:
                continue  # nothing new yet
            # Without --follow, stop at the end of the log as it is now: nothing left
            # to deliver, and nothing delivered that we have not printed.
            info = await sub.consumer_info()
            delivered = info.delivered.stream_seq or 0
            if info.num_pending == 0 and (delivered <= last_seen or delivered < start):
                break
            continue
        last_seen = msg.metadata.sequence.stream
        f = msgpack.unpackb(msg.data, raw=False)
        print(
            f"{msg.metadata.sequence.stream:>8}  {f['market_id']}  trade {f['trade_id']}  {f['qty']} @ {f['price']}  "
            f"taker {f['taker_account']} {f['taker_side']} #{f['taker_order_id']} ({f['taker_client_order_id']})  "
            f"maker {f['maker_account']} #{f['maker_order_id']} ({f['maker_client_order_id']})  cmd_seq {f['cmd_seq']}",
            flush=True,
        )
        if not args.follow and msg.metadata.num_pending == 0:
            break
    await nc.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
