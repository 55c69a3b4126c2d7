"""The whole flow on a real nats-server: commands -> engine -> JB_EVT -> projection -> fills."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgpack

from commands.client import CommandClient
from events.fills import fills
from events.model import Fill, OrderAccepted, Rejected, decode
from events.watch import EventWatcher
from jetbook.demo import run_demo
from protocol.subjects import (
    CMD_STREAM,
    EVT_STREAM,
    HDR_BATCH_COMMIT,
    HDR_BATCH_ID,
    HDR_BATCH_SEQ,
    HDR_EXPECTED_LAST_SEQ,
    HDR_WRITE_ID,
)
from tests.conftest import wait_until
from tests.integration.harness import assert_log_is_exact, read_all, running_engine, running_projection


async def test_demo_scenario_end_to_end(nc: Any, js: Any, tmp_path: Path) -> None:
    db = tmp_path / "rm.db"
    lines: list[str] = []
    async with running_engine(nc), running_projection(js, db) as projection:
        result = await run_demo(js, say=lines.append)
        (f,) = result.fills
        assert (f.taker_account, f.taker_side, f.taker_order_id) == ("bob", "buy", 4)
        assert (f.maker_account, f.maker_order_id, f.price, f.qty) == ("alice", 1, 300_000, 10)
        assert result.bids == [(300_500, 5), (299_000, 8)] and result.asks == [(301_000, 5)]
        assert "1 fill:" in lines and "  trade 1: bob buy order 4 took 10 from alice order 1 at 300000" in lines

        last = (await js.stream_info(EVT_STREAM)).state.last_seq

        async def caught_up() -> bool:
            return projection.position == last

        await wait_until(caught_up, what="projection to reach the end of JB_EVT")
    con = sqlite3.connect(db)
    assert con.execute("SELECT * FROM top_of_book").fetchall() == [("ETH-USDC", "", 300_500, 5, 301_000, 5)]
    assert con.execute("SELECT order_id, status FROM orders WHERE account_id='bob' ORDER BY 1").fetchall() == [
        (3, "open"),
        (4, "partially_filled"),
    ]
    got = [(seq, f) async for seq, f in fills(js, "ETH-USDC")]
    assert [f.trade_id for _, f in got] == [1]
    assert [f.trade_id for _, f in [x async for x in fills(js, None, from_seq=got[0][0] + 1)]] == []
    await assert_log_is_exact(js)


async def test_second_demo_uses_a_fresh_market(nc: Any, js: Any) -> None:
    async with running_engine(nc):
        first = await run_demo(js, say=lambda _: None)
        second = await run_demo(js, say=lambda _: None)
    assert (first.market_id, second.market_id) == ("ETH-USDC", "ETH-USDC-2")
    assert len(second.fills) == 1


async def test_events_carry_the_commands_jetstream_time_and_sequence(nc: Any, js: Any) -> None:
    client = CommandClient(js)
    async with running_engine(nc), EventWatcher(js) as watcher:
        seqs = [await client.create_market("M1", "B", "Q")]
        seqs.append(await client.place("M1", "a", "o1", "sell", 10, 1))
        seqs.append(await client.place("M1", "b", "o2", "buy", 10, 1))
        await watcher.wait(seqs)
    cmds = {m.seq: m for m in await read_all(js, CMD_STREAM)}
    events = await read_all(js, EVT_STREAM)
    assert len(events) == 4
    for m in events:
        e = decode(m.data)
        assert e.ts == cmds[e.cmd_seq].ts  # the command's broker timestamp, to the nanosecond
        assert m.subject == f"jb.evt.M1.{e.type}"


async def test_a_commands_events_are_one_fenced_atomic_batch(nc: Any, js: Any) -> None:
    client = CommandClient(js)
    async with running_engine(nc), EventWatcher(js) as watcher:
        await watcher.wait([await client.create_market("M1", "B", "Q")])
        for i in range(3):  # one at a time: a command alone, with nothing in flight, is one write
            await watcher.wait([await client.place("M1", "a", f"s{i}", "sell", 10, 1)])
        seq = await client.place("M1", "b", "sweep", "buy", 10, 3)
        await watcher.wait([seq])
    msgs = await read_all(js, EVT_STREAM)
    sweep = [m for m in msgs if decode(m.data).cmd_seq == seq]
    assert len(sweep) == 4
    raw = [await js.get_msg(EVT_STREAM, m.seq) for m in msgs]
    # Each write is an atomic batch (Nats-Batch-Id) or a single event (Jb-Write-Id, written alone).
    write_ids = [r.headers.get(HDR_BATCH_ID) or r.headers[HDR_WRITE_ID] for r in raw]
    # Each write starts with the fence, ends with Nats-Batch-Commit, and a command's events never straddle two.
    for i, r in enumerate(raw):
        if HDR_WRITE_ID in r.headers or r.headers[HDR_BATCH_SEQ] == "1":
            assert int(r.headers[HDR_EXPECTED_LAST_SEQ]) == msgs[i].seq - 1
        if HDR_WRITE_ID in r.headers:
            assert HDR_BATCH_ID not in r.headers and r.headers[HDR_BATCH_COMMIT] == "1"
            assert write_ids.count(write_ids[i]) == 1
    assert len({write_ids[msgs.index(m)] for m in sweep}) == 1
    assert HDR_BATCH_ID in raw[msgs.index(sweep[0])].headers  # four events: an atomic batch
    assert sum(HDR_WRITE_ID in r.headers for r in raw) >= 3  # an order that only rests is one event, written alone


async def test_bad_input_over_nats_is_rejected_and_the_engine_goes_on(nc: Any, js: Any) -> None:
    client = CommandClient(js)
    bad: list[tuple[str, bytes, str]] = [
        ("jb.cmd.M1.bob", b"\x00\xc1not msgpack", "malformed"),
        ("jb.cmd.M1.bob", msgpack.packb({"type": "teleport"}), "unknown_type"),
        (
            "jb.cmd.M1.bob",
            msgpack.packb({"type": "place_order", "side": "buy", "price": 1, "qty": 1}),
            "missing_field",
        ),
        (
            "jb.cmd.M1.bob",
            msgpack.packb({"type": "place_order", "client_order_id": "p", "side": "buy", "price": "1", "qty": 1}),
            "invalid_price",
        ),
        (
            "jb.cmd.M1.bob",
            msgpack.packb({"type": "place_order", "client_order_id": "p", "side": "buy", "price": 1, "qty": 0}),
            "invalid_qty",
        ),
        (
            "jb.cmd.NOPE.bob",
            msgpack.packb({"type": "place_order", "client_order_id": "p", "side": "buy", "price": 1, "qty": 1}),
            "unknown_market",
        ),
        ("jb.cmd.M1.bob", msgpack.packb({"type": "cancel_order", "order_id": 1}), "not_order_owner"),
        ("jb.cmd.M1.bob", msgpack.packb({"type": "cancel_order", "order_id": 42}), "unknown_order"),
        (
            "jb.cmd.M1.alice",
            msgpack.packb({"type": "place_order", "client_order_id": "a1", "side": "sell", "price": 5, "qty": 1}),
            "duplicate_client_order_id",
        ),
        (
            "jb.cmd.M1.bob",
            msgpack.packb(
                {
                    "type": "place_order",
                    "client_order_id": "p",
                    "side": "buy",
                    "price": 1,
                    "qty": 1,
                    "account_id": "alice",
                }
            ),
            "account_mismatch",
        ),
        ("jb.cmd.M1", msgpack.packb({"type": "place_order"}), "invalid_subject"),
    ]
    async with running_engine(nc), EventWatcher(js) as watcher:
        setup = [
            await client.create_market("M1", "B", "Q"),
            await client.place("M1", "alice", "a1", "sell", 5, 1),
        ]
        seqs = [await client.send(subject, data) for subject, data, _ in bad]
        after = await client.place("M1", "bob", "after", "buy", 5, 1)
        out = await watcher.wait([*setup, *seqs, after])
    for seq, (_, _, reason) in zip(seqs, bad, strict=True):
        (event,) = out[seq]
        assert isinstance(event, Rejected) and event.reason == reason, (reason, event)
    accepted, fill = out[after]
    assert isinstance(accepted, OrderAccepted) and isinstance(fill, Fill) and fill.maker_account == "alice"
    await assert_log_is_exact(js)


async def test_broker_drops_a_repeated_msg_id_and_the_engine_a_repeated_client_order_id(nc: Any, js: Any) -> None:
    client = CommandClient(js)
    async with running_engine(nc), EventWatcher(js) as watcher:
        await client.create_market("M1", "B", "Q")
        first = await client.place("M1", "a", "same", "buy", 10, 1)
        retry = await client.place("M1", "a", "same", "buy", 10, 1)  # same Nats-Msg-Id: a lost-ack retry
        later = await client.send(
            "jb.cmd.M1.a",
            msgpack.packb({"type": "place_order", "client_order_id": "same", "side": "buy", "price": 10, "qty": 1}),
        )
        out = await watcher.wait([first, later])
    assert retry == first  # stored once
    assert (await js.stream_info(CMD_STREAM)).state.messages == 3
    assert isinstance(out[first][0], OrderAccepted)
    (r,) = out[later]
    assert isinstance(r, Rejected) and r.reason == "duplicate_client_order_id"
