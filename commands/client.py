"""Publish commands to JB_CMD, the way any NATS client would (see docs/PROTOCOL.md).

Each publish carries a `Nats-Msg-Id`, so a retried publish inside the broker's
dedupe window is stored once. For place_order the id is derived from the
market, the account, the client_order_id and a digest of the payload: a blind
retry of the same order after a lost ack is dropped by the broker, while a
corrected order sent again with the same client_order_id (after a rejection)
is a new message. The engine refuses a repeated client_order_id of an accepted
order at any time, inside the window or long after it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
from nats.nuid import NUID

from commands.model import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    CreateMarket,
    PlaceOrder,
    encode,
)
from commands.subjects import ALL_MARKETS, HDR_MSG_ID, cmd_subject, ctl_subject


class CommandClient:
    def __init__(self, js: Any) -> None:
        self.js = js
        self._nuid = NUID()
        self.last_was_duplicate = False  # the broker had this msg id already: the seq is the original's

    async def send(self, subject: str, payload: bytes | dict[str, Any], msg_id: str | None = None) -> int:
        """Publish raw; returns the command's JB_CMD sequence (the `cmd_seq` its events will carry)."""
        data = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
        headers = {HDR_MSG_ID: msg_id or self._nuid.next().decode()}
        ack = await self.js.publish(subject, data, headers=headers)
        self.last_was_duplicate = bool(ack.duplicate)
        return int(ack.seq)

    async def _send_command(self, subject: str, command: Command, msg_id: str | None = None) -> int:
        data = encode(command)
        if msg_id is not None:
            msg_id = f"{msg_id}.{hashlib.sha256(data).hexdigest()[:16]}"
        return await self.send(subject, data, msg_id)

    async def control(self, market_id: str, command: Command) -> int:
        """Any control command (create_market, set_market_state, settle_market, set_risk_limits, ...)."""
        return await self._send_command(ctl_subject(market_id), command)

    async def trade(self, market_id: str, account_id: str, command: Command) -> int:
        """Any trading command; a place_order gets the retry-safe msg id described above."""
        msg_id = None
        if isinstance(command, PlaceOrder):
            msg_id = f"place.{market_id}.{account_id}.{command.client_order_id}"
        return await self._send_command(cmd_subject(market_id, account_id), command, msg_id)

    async def create_market(self, market_id: str, base: str, quote: str, **params: Any) -> int:
        return await self.control(market_id, CreateMarket(market_id=market_id, base=base, quote=quote, **params))

    async def place(
        self, market_id: str, account_id: str, client_order_id: str, side: str, price: int | None, qty: int,
        tif: str | None = None, **options: Any,
    ) -> int:  # fmt: skip
        command = PlaceOrder(client_order_id=client_order_id, side=side, price=price, qty=qty, tif=tif, **options)
        return await self.trade(market_id, account_id, command)

    async def cancel(
        self, market_id: str, account_id: str, order_id: int | None = None, client_order_id: str | None = None
    ) -> int:
        command = CancelOrder(order_id=order_id, client_order_id=client_order_id)
        return await self.trade(market_id, account_id, command)

    async def amend(
        self, market_id: str, account_id: str, order_id: int | None = None, client_order_id: str | None = None,
        qty: int | None = None, price: int | None = None,
    ) -> int:  # fmt: skip
        command = AmendOrder(order_id=order_id, client_order_id=client_order_id, qty=qty, price=price)
        return await self.trade(market_id, account_id, command)

    async def cancel_all(
        self, account_id: str, market_id: str | None = None, side: str | None = None, runner: str | None = None
    ) -> int:
        """Every open order of the account, in one market or (market_id None) in all of them."""
        return await self.trade(market_id or ALL_MARKETS, account_id, CancelAll(side=side, runner=runner))
