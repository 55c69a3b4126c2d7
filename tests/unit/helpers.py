"""Build raw commands the way a client puts them on the wire, and feed them to the pure core."""

from __future__ import annotations

from typing import Any

import msgpack

from engine.core import Engine
from events.model import Event

M = "ETH-USDC"


def raw(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


class Session:
    """A core plus a command counter: cmd_seq and ts advance like JB_CMD would."""

    def __init__(self, market: str | None = M) -> None:
        self.engine = Engine()
        self.seq = 0
        if market:
            self.create(market)

    def send(self, subject: str, body: Any) -> list[Event]:
        self.seq += 1
        data = body if isinstance(body, bytes) else raw(body)
        return self.engine.handle(self.seq, 1_000 + self.seq, subject, data)

    def create(self, market: str, **extra: Any) -> list[Event]:
        return self.send(
            f"jb.ctl.{market}",
            {"type": "create_market", "market_id": market, "base": "B", "quote": "Q", **extra},
        )

    def place(
        self,
        account: str,
        side: str,
        price: int,
        qty: int,
        coid: str | None = None,
        market: str = M,
        **extra: Any,
    ) -> list[Event]:
        body = {
            "type": "place_order",
            "client_order_id": coid or f"c{self.seq + 1}",
            "side": side,
            "price": price,
            "qty": qty,
            **extra,
        }
        return self.send(f"jb.cmd.{market}.{account}", body)

    def cancel(self, account: str, market: str = M, **ref: Any) -> list[Event]:
        return self.send(f"jb.cmd.{market}.{account}", {"type": "cancel_order", **ref})

    def book(self, market: str = M) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        b = self.engine.state.markets[market].books[None]
        return b.depth("buy", 100), b.depth("sell", 100)

    def control(self, market: str, type_: str, **fields: Any) -> list[Event]:
        return self.send(f"jb.ctl.{market}", {"type": type_, **fields})

    def trade(self, account: str, type_: str, market: str = M, **fields: Any) -> list[Event]:
        return self.send(f"jb.cmd.{market}.{account}", {"type": type_, **fields})
