"""Message ids another account cannot squat (issue 9, defect 5), on a real nats-server."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgpack
import pytest

from commands.client import CommandClient, MsgIdCollision, new_msg_id
from commands.model import PlaceOrder, encode
from protocol.subjects import CMD_STREAM, HDR_MSG_ID, cmd_subject


def old_style_id(market: str, account: str, order: PlaceOrder) -> str:
    """How jetbook derived a place_order's id before: anyone who sees or guesses the order can compute it."""
    return f"place.{market}.{account}.{order.client_order_id}.{hashlib.sha256(encode(order)).hexdigest()[:16]}"


async def stored_count(js: Any) -> int:
    return int((await js.stream_info(CMD_STREAM)).state.messages)


async def test_an_old_style_id_lets_another_account_suppress_an_order(js: Any) -> None:
    bob_order = PlaceOrder(client_order_id="b1", side="buy", price=100, qty=5)
    squat = old_style_id("M", "bob", bob_order)
    alice_seq = (await js.publish(cmd_subject("M", "alice"), b"\x80", headers={HDR_MSG_ID: squat})).seq
    ack = await js.publish(cmd_subject("M", "bob"), encode(bob_order), headers={HDR_MSG_ID: squat})
    assert ack.duplicate and ack.seq == alice_seq  # bob's order was never stored
    assert await stored_count(js) == 1


async def test_the_client_detects_a_squatted_id_instead_of_reporting_the_other_seq(js: Any) -> None:
    """Even if an id leaked, bob's client must not take alice's command for its own."""
    leaked = new_msg_id()
    alice_seq = (await js.publish(cmd_subject("M", "alice"), b"\x80", headers={HDR_MSG_ID: leaked})).seq
    bob = CommandClient(js)
    with pytest.raises(MsgIdCollision) as caught:
        await bob.trade("M", "bob", PlaceOrder(client_order_id="b1", side="buy", price=100, qty=5), msg_id=leaked)
    assert caught.value.seq == alice_seq and "not stored" in str(caught.value)
    assert await stored_count(js) == 1
    # Nothing on bob's subject at all, and alice's command after more of bob's: both refused.
    await bob.place("M", "bob", "b2", "buy", 100, 5)
    with pytest.raises(MsgIdCollision):
        await bob.send(cmd_subject("M", "bob"), b"\x81", msg_id=leaked)


async def test_ids_are_random_and_a_retry_is_stored_once(js: Any) -> None:
    client = CommandClient(js)
    order = PlaceOrder(client_order_id="c1", side="sell", price=100, qty=5)
    first = await client.trade("M", "alice", order)
    first_id = client.last_msg_id
    assert re.fullmatch(r"[0-9a-f]{32}", first_id) and first_id != old_style_id("M", "alice", order)
    # A retry of the same request (same id) is stored once and confirmed as ours.
    assert await client.trade("M", "alice", order, msg_id=first_id) == first and client.last_was_duplicate
    # The same order again from the same client is a retry too; a second client makes its own id.
    assert await client.trade("M", "alice", order) == first and client.last_msg_id == first_id
    other = CommandClient(js)
    await other.send(cmd_subject("M", "alice"), msgpack.packb({"type": "cancel_all"}))
    assert other.last_msg_id != first_id and not other.last_was_duplicate
    # A retry still confirmed after later commands on the same subject (the message at the seq is ours).
    assert await client.trade("M", "alice", order, msg_id=first_id) == first
    assert await stored_count(js) == 2
    ids = {new_msg_id() for _ in range(10_000)}
    assert len(ids) == 10_000
