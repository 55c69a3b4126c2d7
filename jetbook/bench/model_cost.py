"""What a command model and an event object cost to build: the figures behind two core choices.

    python -m jetbook.bench.model_cost

1. Events are slotted dataclasses, not frozen ones: building a frozen dataclass
   of 15 fields (the size of a `fill`) goes through object.__setattr__ once per
   field.
2. Commands are parsed by the hand-written table in commands/model.py: `parse`
   (decoding included) beside msgpack's decode alone, on one place_order. The
   strict pydantic model it was once timed against went with pydantic itself
   (no longer a dependency); that comparison is recorded in docs/DECISIONS.md.
3. How big a chunk of a mass event is: `orders_cancelled` with CHUNK (500)
   rows, with everyday ids and with every id and number at its maximum.

Each figure is the best of 25 timeit repeats of 50 000 calls, per call (the best is the least disturbed by other load).
"""

from __future__ import annotations

import timeit
from dataclasses import make_dataclass
from typing import Any

import msgpack

from commands.model import MAX_PRICE, MAX_QTY, parse
from engine.core import CHUNK
from events.model import OrdersCancelled, encode

FIELDS = [(f"f{i}", int) for i in range(15)]
Frozen = make_dataclass("Frozen", FIELDS, frozen=True, slots=True)
Slotted = make_dataclass("Slotted", FIELDS, slots=True)
ARGS = tuple(range(15))


def per_call(stmt: Any, number: int) -> float:
    """Best of 25 repeats, in microseconds per call."""
    return min(timeit.repeat(stmt, number=number, repeat=25)) / number * 1e6


def main() -> None:
    n = 50_000
    print(f"frozen dataclass, 15 fields:  {per_call(lambda: Frozen(*ARGS), n):.2f} µs")
    print(f"slotted dataclass, 15 fields: {per_call(lambda: Slotted(*ARGS), n):.2f} µs")

    body = {"type": "place_order", "client_order_id": "c-1", "side": "buy", "price": 300500, "qty": 15}
    data = msgpack.packb(body)
    subject = "jb.cmd.ETH-USDC.alice"
    decode = per_call(lambda: msgpack.unpackb(data, raw=False), n)
    print(f"msgpack decode alone:                    {decode:.2f} µs")
    print(f"commands.model.parse (decode included):  {per_call(lambda: parse(subject, data), n):.2f} µs")
    ts = 1795242253348034326
    rows: list[list[Any]] = [
        [100_000 + i, f"account-{i:04d}", f"cli-{i:022d}", "buy", 300_000, 10, None] for i in range(CHUNK)
    ]
    everyday = len(
        encode(
            OrdersCancelled(
                market_id="ETH-USDC", cmd_seq=1, ts=ts, reason="market_closed", account_id=None, orders=rows
            )
        )
    )
    rows = [[2**62 + i, "a" * 64, "c" * 64, "sell", MAX_PRICE, MAX_QTY, "r" * 64] for i in range(CHUNK)]
    largest = len(
        encode(
            OrdersCancelled(
                market_id="M" * 64, cmd_seq=2**62, ts=ts, reason="market_closed", account_id=None, orders=rows
            )
        )
    )
    print(
        f"orders_cancelled, {CHUNK} rows: {everyday} bytes (everyday ids), {largest} bytes (64-char ids, max numbers)"
    )
    print("command: python -m jetbook.bench.model_cost")


if __name__ == "__main__":
    main()
