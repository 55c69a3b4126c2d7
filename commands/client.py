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

from commands.model import CancelOrder, Command, CreateMarket, PlaceOrder
from commands.subjects import HDR_MSG_ID, cmd_subject, ctl_subject


class CommandClient:
    def __init__(self, js: Any) -> None:
        self.js = js
        self._nuid = NUID()

    async def send(self, subject: str, payload: bytes | dict[str, Any], msg_id: str | None = None) -> int:
        """Publish raw; returns the command's JB_CMD sequence (the `cmd_seq` its events will carry)."""
        data = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
        headers = {HDR_MSG_ID: msg_id or self._nuid.next().decode()}
        ack = await self.js.publish(subject, data, headers=headers)
        return int(ack.seq)

    async def _send_model(self, subject: str, command: Command, msg_id: str | None = None) -> int:
        data: bytes = msgpack.packb(command.model_dump(exclude_none=True), use_bin_type=True)
        if msg_id is not None:
            msg_id = f"{msg_id}.{hashlib.sha256(data).hexdigest()[:16]}"
        return await self.send(subject, data, msg_id)

    async def create_market(self, market_id: str, base: str, quote: str) -> int:
        command = CreateMarket(market_id=market_id, base=base, quote=quote)
        return await self._send_model(ctl_subject(market_id), command)

    async def place(
        self, market_id: str, account_id: str, client_order_id: str, side: str, price: int, qty: int,
        tif: str = "gtc",
    ) -> int:  # fmt: skip
        command = PlaceOrder.model_validate(
            {"client_order_id": client_order_id, "side": side, "price": price, "qty": qty, "tif": tif}
        )
        msg_id = f"place.{market_id}.{account_id}.{client_order_id}"
        return await self._send_model(cmd_subject(market_id, account_id), command, msg_id)

    async def cancel(
        self, market_id: str, account_id: str, order_id: int | None = None, client_order_id: str | None = None
    ) -> int:
        command = CancelOrder(order_id=order_id, client_order_id=client_order_id)
        return await self._send_model(cmd_subject(market_id, account_id), command)
