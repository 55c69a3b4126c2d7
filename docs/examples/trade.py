"""Trade on jetbook with nothing but a NATS client and msgpack (docs/QUICKSTART.md).

    python docs/examples/trade.py --nats-url nats://127.0.0.1:4222

Creates a fresh market, has alice sell 10 @ 300000 and bob buy 15 @ 300500,
and prints every event each command caused, correlated by cmd_seq, then the
fills. Expected: one fill of 10 @ 300000 (the maker's price); bob's remaining
5 rests at 300500.

Only `nats-py` and `msgpack` are used: no jetbook import, so this is exactly
what a client in any other language has to do.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from typing import Any

import msgpack
import nats
import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

EVT_STREAM = "JB_EVT"


def new_msg_id() -> str:
    """128 random bits, made once per request. Never derive it from the order: another account that can
    predict your id can publish it first (on its own subject) and the broker then drops your command."""
    return secrets.token_hex(16)


async def send(js: Any, subject: str, command: dict[str, Any], attempts: int = 3) -> int:
    """Publish one command to JB_CMD and return its cmd_seq (the PubAck's seq).

    The same msg id is reused for every retry of this publish, so a retry after a lost ack is stored once.
    """
    data = msgpack.packb(command, use_bin_type=True)  # strings as msgpack str, ints as ints
    msg_id = new_msg_id()
    for attempt in range(attempts):
        try:
            ack = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            break
        except nats.errors.TimeoutError:
            if attempt == attempts - 1:
                raise
    if ack.duplicate:  # our own earlier attempt was stored: ack.seq is it. Confirm it really is ours.
        stored = await js.get_msg("JB_CMD", ack.seq, direct=True)
        if stored.subject != subject or stored.data != data:
            raise SystemExit(f"msg id {msg_id} was taken by another command (seq {ack.seq}); ours was NOT stored")
    return int(ack.seq)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--market", default=f"EX-{secrets.token_hex(3)}", help="market id (a fresh one by default)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the engine")
    args = ap.parse_args()
    market = args.market
    run = secrets.token_hex(4)  # makes client_order_ids unique per run

    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()

    # 1. Start reading JB_EVT *before* publishing, at the current end of the log,
    #    so no event of our commands can be missed. Unfiltered: the message that
    #    closes the engine's atomic batch (step 3) may be another market's event.
    start = (await js.stream_info(EVT_STREAM)).state.last_seq + 1
    sub = await js.subscribe(
        "jb.evt.>",
        stream=EVT_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=start),
    )

    # 2. Publish the commands. Each PubAck's seq is the command's cmd_seq.
    #    No need to wait for market_created: the engine applies commands in JB_CMD order.
    cmds: dict[int, str] = {}
    seq = await send(
        js, f"jb.ctl.{market}", {"type": "create_market", "market_id": market, "base": "ETH", "quote": "USDC"}
    )
    cmds[seq] = f"create_market {market}"
    for account, coid, side, price, qty in [
        ("alice", f"a-{run}", "sell", 300_000, 10),
        ("bob", f"b-{run}", "buy", 300_500, 15),
    ]:
        order = {"type": "place_order", "client_order_id": coid, "side": side, "price": price, "qty": qty}
        seq = await send(js, f"jb.cmd.{market}.{account}", order)
        cmds[seq] = f"{account} {side} {qty} @ {price} ({coid})"
    for seq, what in cmds.items():
        print(f"published cmd_seq {seq:<6} {what}")

    # 3. Collect events until every command is complete. A command's events are
    #    contiguous and inside one atomic batch, so it is complete once an event of
    #    a later command arrives, or once the batch's last message (the one with the
    #    Nats-Batch-Commit header) has. Not "num_pending == 0": a consumer can get the
    #    first events of a batch before the rest are stored.
    events: dict[int, list[tuple[int, dict[str, Any]]]] = {s: [] for s in cmds}
    done_upto = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while done_upto < max(cmds):
        try:
            msg = await sub.next_msg(timeout=max(0.01, deadline - loop.time()))
        except nats.errors.TimeoutError:
            raise SystemExit(f"no complete events within {args.timeout}s: is the engine running?") from None
        event = msgpack.unpackb(msg.data, raw=False)
        cmd_seq = event["cmd_seq"]
        if event["market_id"] == market:
            events.setdefault(cmd_seq, []).append((msg.metadata.sequence.stream, event))
        done_upto = max(done_upto, cmd_seq - 1)
        if (msg.headers or {}).get("Nats-Batch-Commit"):
            done_upto = max(done_upto, cmd_seq)
    await sub.unsubscribe()
    await nc.close()

    # 4. Print what each command caused, then the fills.
    fills = []
    for cmd_seq, what in cmds.items():
        print(f"\ncmd_seq {cmd_seq} ({what}):")
        for evt_seq, e in events[cmd_seq]:
            kind = e["type"]
            if kind == "market_created":
                info = f"{e['market_id']} {e['base']}/{e['quote']}"
            elif kind == "order_accepted":
                info = (
                    f"order_id {e['order_id']} {e['account_id']} {e['side']} {e['qty']} @ {e['price']}, "
                    f"resting {e['resting_qty']}"
                )
            elif kind == "orders_accepted":  # v1.3: a compact batch's orders that rest untouched, one row each
                rows = (f"order_id {r[0]} {r[2]} {r[4]} @ {r[3]}" for r in e["orders"])
                info = f"{e['account_id']}: " + ", ".join(rows)
            elif kind == "fill":
                info = f"trade_id {e['trade_id']} {e['qty']} @ {e['price']}"
                fills.append(e)
            elif kind == "rejected":
                info = f"{e['reason']} ({e['detail']})"
            else:
                info = ""
            print(f"  JB_EVT seq {evt_seq:<6} {kind:<15} {info}")

    print(f"\n{len(fills)} fill(s):")
    for f in fills:
        print(
            f"  trade {f['trade_id']} in {f['market_id']}: "
            f"{f['taker_account']} ({f['taker_side']}, order {f['taker_order_id']}) "
            f"took {f['qty']} @ {f['price']} from {f['maker_account']} (order {f['maker_order_id']}); "
            f"maker_remaining {f['maker_remaining']}, taker_remaining {f['taker_remaining']}, "
            f"cmd_seq {f['cmd_seq']}, ts {f['ts']}"
        )
        print(f"  raw: {f}")


if __name__ == "__main__":
    asyncio.run(main())
