"""Publish commands to JB_CMD, the way any NATS client would (see docs/PROTOCOL.md).

Message ids. JB_CMD's duplicate window covers the whole stream, whoever
published: a message whose `Nats-Msg-Id` the broker has seen in the last
120 s is not stored, and its PubAck names the first message's sequence. An id
another account can predict (one derived from the market, the account, the
client_order_id and the payload, as jetbook used to make) lets that account
publish first, on its own subject, with the id of someone else's order, and
so suppress that order. So every id jetbook makes is `new_msg_id()`: 128
random bits, made once per request and reused for every retry of that
request's publish, so a retry after a lost ack is still stored once.

A PubAck saying `duplicate` is checked: the message at its sequence must be
ours (same subject, same bytes). If it is not, or cannot be confirmed, the
client raises `MsgIdCollision` rather than report another command's sequence
as ours.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from typing import Any, Final

import msgpack
import nats.js.errors

from commands.model import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    Command,
    CreateMarket,
    PlaceOrder,
    encode,
)
from protocol.errors import TRANSIENT, JetbookError
from protocol.subjects import ALL_MARKETS, CMD_STREAM, HDR_MSG_ID, cmd_subject, ctl_subject
from protocol.vocab import Side, Tif

MSG_ID_BYTES: Final = 16  # 128 bits: nobody guesses one, and two requests never share one by chance
PUBLISH_ATTEMPTS: Final = 4  # a publish whose ack is lost is sent again, with the same id, this many times in all
RETRY_WINDOW_S: Final = 100.0  # under JB_CMD's 120 s duplicate window: a repeat after that is a new message anyway


def new_msg_id() -> str:
    """A `Nats-Msg-Id` for one request: make it once, reuse it for each retry of that request, never derive it."""
    return secrets.token_hex(MSG_ID_BYTES)


class MsgIdCollision(JetbookError):
    """The broker called our publish a duplicate of a message that is not ours: our command was NOT stored."""

    def __init__(self, subject: str, msg_id: str, seq: int, why: str) -> None:
        super().__init__(
            f"publish to {subject} with Nats-Msg-Id {msg_id} came back as a duplicate of JB_CMD seq {seq}, "
            f"which {why}: this command was not stored (send it again with a new msg id)"
        )
        self.subject = subject
        self.msg_id = msg_id
        self.seq = seq


class CommandClient:
    def __init__(self, js: Any) -> None:
        self.js = js
        self.last_was_duplicate = False  # the broker had this msg id already: the seq is the original's
        self.last_msg_id = ""
        # place_order retries: (subject, digest of payload) -> (msg id, monotonic time first sent). Sending the
        # same order again from this client is a retry (a repeated client_order_id can only be one), so it
        # reuses the id; other commands (a cancel_all sent twice is two requests) get a new id each time.
        self._place_ids: dict[tuple[str, bytes], tuple[str, float]] = {}

    async def send(self, subject: str, payload: bytes | dict[str, Any], msg_id: str | None = None) -> int:
        """Publish raw; returns the command's JB_CMD sequence (the `cmd_seq` its events will carry).

        `msg_id`: pass the id of an earlier attempt of the same request to retry it; None makes a new one.
        A publish whose ack does not arrive is sent again with the same id, so it is stored at most once.
        """
        data = payload if isinstance(payload, bytes) else msgpack.packb(payload, use_bin_type=True)
        msg_id = msg_id or new_msg_id()
        self.last_msg_id = msg_id
        headers = {HDR_MSG_ID: msg_id}
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                ack = await self.js.publish(subject, data, headers=headers)
                break
            except TRANSIENT:
                if attempt == PUBLISH_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.1 * 2**attempt)  # a reconnect or leader election: same id, again
        self.last_was_duplicate = bool(ack.duplicate)
        if ack.duplicate:
            await self._check_ours(subject, data, msg_id, int(ack.seq))
        return int(ack.seq)

    async def _check_ours(self, subject: str, data: bytes, msg_id: str, seq: int) -> None:
        """Raise MsgIdCollision unless JB_CMD's message `seq` is this very command.

        First the last message on our own subject (a direct get that permissions can bind to the
        account's subjects); when that is not `seq` (we published more since, or it is not ours), the
        message at `seq` itself, if this user may read it. A message we may not read is not confirmed.
        """
        stored: Any = None
        try:
            last = await self.js.get_msg(CMD_STREAM, subject=subject, direct=True)
            if int(last.seq) == seq:
                stored = last
        except (nats.js.errors.NotFoundError, *TRANSIENT):
            pass  # nothing on our subject (so `seq` is not ours), or not allowed: ask for `seq` itself
        if stored is None:
            try:
                stored = await self.js.get_msg(CMD_STREAM, seq, direct=True)
            except (nats.js.errors.Error, *TRANSIENT) as err:
                raise MsgIdCollision(subject, msg_id, seq, f"could not be read to confirm it ({err!r})") from err
        if stored.subject != subject or stored.data != data:
            raise MsgIdCollision(subject, msg_id, seq, f"is another command (on {stored.subject})")
        if (stored.headers or {}).get(HDR_MSG_ID, msg_id) != msg_id:
            raise MsgIdCollision(subject, msg_id, seq, "carries another msg id")

    def _place_msg_id(self, subject: str, data: bytes) -> str:
        now = time.monotonic()
        if len(self._place_ids) > 10_000:
            self._place_ids = {k: v for k, v in self._place_ids.items() if now - v[1] < RETRY_WINDOW_S}
        key = (subject, hashlib.sha256(data).digest())
        known = self._place_ids.get(key)
        if known is not None and now - known[1] < RETRY_WINDOW_S:
            return known[0]
        msg_id = new_msg_id()
        self._place_ids[key] = (msg_id, now)
        return msg_id

    async def control(self, market_id: str, command: Command, msg_id: str | None = None) -> int:
        """Any control command (create_market, set_market_state, settle_market, set_risk_limits, ...)."""
        return await self.send(ctl_subject(market_id), encode(command), msg_id)

    async def trade(self, market_id: str, account_id: str, command: Command, msg_id: str | None = None) -> int:
        """Any trading command; the same place_order sent again by this client reuses its msg id (a retry)."""
        subject = cmd_subject(market_id, account_id)
        data = encode(command)
        if msg_id is None and isinstance(command, PlaceOrder):
            msg_id = self._place_msg_id(subject, data)
        return await self.send(subject, data, msg_id)

    async def create_market(self, market_id: str, base: str, quote: str, **params: Any) -> int:
        return await self.control(market_id, CreateMarket(market_id=market_id, base=base, quote=quote, **params))

    async def place(
        self, market_id: str, account_id: str, client_order_id: str, side: Side, price: int | None, qty: int,
        tif: Tif | None = None, **options: Any,
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
