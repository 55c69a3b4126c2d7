"""What a command model and an event object cost to build: the figures behind two core choices.

    python bench/model_cost.py

1. Events are slotted dataclasses, not frozen ones: building a frozen dataclass
   of 15 fields (the size of a `fill`) goes through object.__setattr__ once per
   field.
2. Commands are parsed by the hand-written table in commands/model.py, not by a
   strict pydantic model: both are timed on the same place_order payload
   (pydantic's validate from the decoded map; `parse` from the raw bytes,
   decoding included).
3. How big a chunk of a mass event is: `orders_cancelled` with CHUNK (500)
   rows, with everyday ids and with every id and number at its maximum.

Each figure is the best of 25 timeit repeats of 50 000 calls, per call (the best is the least disturbed by other load).
"""

from __future__ import annotations

import sys
import timeit
from dataclasses import make_dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class PlaceOrder(BaseModel):  # v1's style (strict, frozen, extra fields forbidden) with v1.1's fields and rules
        model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
        type: Literal["place_order"]
        v: Literal[1] = 1
        client_order_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
        side: Literal["buy", "sell", "back", "lay"]
        qty: int = Field(ge=1, le=10**9)
        order_type: Literal["limit", "market"] = "limit"
        price: int | None = Field(default=None, ge=1, le=10**9)
        protection_price: int | None = Field(default=None, ge=1, le=10**9)
        tif: Literal["gtc", "ioc", "fok", "post_only"] | None = None
        stp: Literal["cancel_resting", "cancel_newest", "cancel_both"] = "cancel_resting"
        persistence: Literal["lapse", "persist"] = "lapse"
        runner: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
        market_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
        account_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")

        @model_validator(mode="after")
        def rules(self) -> PlaceOrder:
            if self.order_type == "limit" and self.price is None:
                raise ValueError("price: missing")
            return self

    body = {"type": "place_order", "client_order_id": "c-1", "side": "buy", "price": 300500, "qty": 15}
    data = msgpack.packb(body)
    subject = "jb.cmd.ETH-USDC.alice"
    assert PlaceOrder.model_validate(body).qty == 15
    decode = per_call(lambda: msgpack.unpackb(data, raw=False), n)
    print(f"msgpack decode alone:                    {decode:.2f} µs")
    pyd = per_call(lambda: PlaceOrder.model_validate(msgpack.unpackb(data, raw=False)), n)
    print(f"decode + pydantic strict model:          {pyd:.2f} µs")
    print(f"commands.model.parse (decode included):  {per_call(lambda: parse(subject, data), n):.2f} µs")
    ts = 1795242253348034326
    rows: list[list[Any]] = [
        [100_000 + i, f"account-{i:04d}", f"cli-{i:022d}", "buy", 300_000, 10, None] for i in range(CHUNK)
    ]
    everyday = len(encode(OrdersCancelled("ETH-USDC", 1, ts, "market_closed", None, rows)))
    rows = [[2**62 + i, "a" * 64, "c" * 64, "sell", MAX_PRICE, MAX_QTY, "r" * 64] for i in range(CHUNK)]
    largest = len(encode(OrdersCancelled("M" * 64, 2**62, ts, "market_closed", None, rows)))
    print(
        f"orders_cancelled, {CHUNK} rows: {everyday} bytes (everyday ids), {largest} bytes (64-char ids, max numbers)"
    )
    print("command: python bench/model_cost.py")


if __name__ == "__main__":
    main()
