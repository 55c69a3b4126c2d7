"""Private fills and orders (issue 9): the fan-out worker, JB_ACCT per account, JB_TAPE without accounts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats

from commands.client import CommandClient
from commands.model import CancelOrder, CancelOrders, CloseMarket, PlaceOrder, PlaceOrders, SettleMarket
from events.model import Fill, decode, to_wire
from events.private import account_events, tape
from events.stream_readers import RawMsg, last_seq
from jetbook.server import EmbeddedServer
from projections.fanout import FanOut, outputs
from protocol.streams import ensure_fanout_streams
from protocol.subjects import ACCT_STREAM, EVT_STREAM, HDR_EVT_SEQ, HDR_MSG_ID, TAPE_STREAM
from tests.conftest import wait_until
from tests.integration.harness import publish_all, read_all, running_engine, wait_for_command, workload


@contextlib.asynccontextmanager
async def running_fanout(nc: Any, batch: int = 1000) -> AsyncIterator[FanOut]:
    worker = FanOut(nc, batch=batch)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def fanned_out(js: Any, worker: FanOut) -> None:
    end = await last_seq(js, EVT_STREAM)

    async def done() -> bool:
        return worker.position >= end

    await wait_until(done, what=f"fan-out to reach JB_EVT {end}")


def accounts_in(event: dict[str, Any]) -> set[str]:
    """Every account an event names, found independently of the worker's own rules."""
    found = {event.get(k) for k in ("account_id", "maker_account", "taker_account")}
    if event.get("type") == "orders_cancelled":  # an orders_accepted row has no account: the event's is the one
        found |= {entry[1] for entry in event["orders"]}
    found |= {line[0] for line in event.get("pnl", [])}
    return {a for a in found if a}


async def trading_session(js: Any) -> None:
    client = CommandClient(js)
    await client.create_market("M", "B", "Q")
    await client.place("M", "alice", "a1", "sell", 100, 10)
    await client.place("M", "bob", "b1", "buy", 100, 4)  # fill: alice maker, bob taker
    await client.place("M", "carol", "c1", "buy", 90, 1)
    await client.cancel("M", "alice", client_order_id="nope")  # rejected, alice's
    await client.amend("M", "carol", client_order_id="c1", qty=2)
    quotes = [PlaceOrder(f"c{i}", "buy", 1, 80 + i, "limit", None, "gtc") for i in (2, 3)]
    await client.trade("M", "carol", PlaceOrders(quotes, compact=True))  # orders_accepted (v1.3)
    await client.trade("M", "carol", CancelOrders([CancelOrder(None, "c2")], compact=True))  # orders_cancelled
    await client.control("M", CloseMarket())  # orders_cancelled: alice's rest and carol's
    await wait_for_command(js, await client.control("M", SettleMarket(price=100)))


async def test_each_account_gets_exactly_its_events_and_the_tape_no_accounts(nc: Any, js: Any) -> None:
    async with running_engine(nc), running_fanout(nc) as worker:
        await trading_session(js)
        await fanned_out(js, worker)
    log = [(m.seq, to_wire(decode(m.data))) for m in await read_all(js, EVT_STREAM)]
    kinds: dict[str, set[str]] = {}
    for account in ("alice", "bob", "carol"):
        got = [(evt_seq, to_wire(e)) async for _, evt_seq, e in account_events(nc, account, heartbeat=0.5)]
        assert [s for s, _ in got] == [s for s, e in log if account in accounts_in(e)], account
        for _, e in got:
            assert accounts_in(e) == {account}  # never another account's name, in any field
        kinds[account] = {e["type"] for _, e in got}
    assert kinds["alice"] >= {"order_accepted", "fill", "rejected", "orders_cancelled", "market_settled"}
    assert kinds["bob"] == {"order_accepted", "fill", "market_settled"}  # no pnl line for carol: she never traded
    assert kinds["carol"] == {"order_accepted", "order_amended", "orders_accepted", "orders_cancelled"}
    alice = [e async for _, _, e in account_events(nc, "alice", heartbeat=0.5)]
    bob = [e async for _, _, e in account_events(nc, "bob", heartbeat=0.5)]
    (maker,) = [e for e in alice if isinstance(e, Fill)]
    (taker,) = [e for e in bob if isinstance(e, Fill)]
    assert (maker.maker_client_order_id, maker.taker_client_order_id, maker.taker_order_id) == ("a1", "", 0)
    assert (taker.taker_client_order_id, taker.maker_client_order_id, taker.maker_order_id) == ("b1", "", 0)
    assert maker.trade_id == taker.trade_id == 1 and maker.qty == taker.qty == 4
    assert any(e.type == "rejected" for e in alice)
    trades = [t async for _, t in tape(nc, heartbeat=0.5)]
    evt_fill_seq = next(s for s, e in log if e["type"] == "fill")
    assert trades == [{
        "type": "trade", "market_id": "M", "runner": None, "trade_id": 1, "price": 100, "qty": 4,
        "taker_side": "buy", "ts": maker.ts, "evt_seq": evt_fill_seq,
    }]  # fmt: skip


def expected_outputs(events: list[RawMsg]) -> dict[str, list[tuple[str, bytes, str, str]]]:
    """What each output stream must hold, in order: (subject, data, msg id, JB_EVT seq)."""
    out: dict[str, list[tuple[str, bytes, str, str]]] = {ACCT_STREAM: [], TAPE_STREAM: []}
    for m in events:
        for o in outputs(m.seq, decode(m.data), m.data):
            out[o.stream].append((o.subject, o.data, o.msg_id, str(m.seq)))
    return out


async def stored_outputs(js: Any, stream: str) -> list[tuple[str, bytes, str, str]]:
    return [(m.subject, m.data, (m.headers or {})[HDR_MSG_ID], (m.headers or {})[HDR_EVT_SEQ])
            for m in await read_all(js, stream)]  # fmt: skip


async def test_a_worker_killed_mid_stream_duplicates_nothing_and_loses_nothing(
    nc: Any, js: Any, nats_server: EmbeddedServer
) -> None:
    async with running_engine(nc):
        await wait_for_command(js, await publish_all(js, workload(400, seed=7)))
    events = await read_all(js, EVT_STREAM)
    expected = expected_outputs(events)
    assert len(expected[TAPE_STREAM]) > 10 and len(expected[ACCT_STREAM]) > 400
    for kill_after in (37, 211):  # its connection dropped with publishes in flight, twice (a process dying)
        own = await nats.connect(nats_server.url, allow_reconnect=False)
        worker, stop = FanOut(own, batch=13), asyncio.Event()
        task = asyncio.create_task(worker.run(stop))

        async def published_enough(w: FanOut = worker, n: int = kill_after) -> bool:
            return w.published >= n

        await wait_until(published_enough, what=f"{kill_after} outputs")
        await own.close()
        stop.set()
        await asyncio.wait_for(task, 10)  # it notices the lost connection and stops, without waiting out acks
        assert worker.position < len(events)  # it really stopped part way
    async with running_fanout(nc, batch=13) as worker:
        await fanned_out(js, worker)
    assert await stored_outputs(js, ACCT_STREAM) == expected[ACCT_STREAM]
    assert await stored_outputs(js, TAPE_STREAM) == expected[TAPE_STREAM]


async def test_resumes_inside_an_event_whose_outputs_were_half_stored(nc: Any, js: Any) -> None:
    """A fill's maker copy landed, then the worker died: the next one stores the taker copy and the trade once."""
    async with running_engine(nc):
        client = CommandClient(js)
        await client.create_market("M", "B", "Q")
        await client.place("M", "alice", "a1", "sell", 100, 10)
        await wait_for_command(js, await client.place("M", "bob", "b1", "buy", 100, 4))
    events = await read_all(js, EVT_STREAM)
    fill = next(m for m in events if decode(m.data).type == "fill")
    await ensure_fanout_streams(js)
    expected = expected_outputs(events)
    for subject, data, msg_id, evt_seq in expected[ACCT_STREAM]:  # everything up to the fill's maker copy
        await js.publish(subject, data, headers={HDR_MSG_ID: msg_id, HDR_EVT_SEQ: evt_seq})
        if msg_id == f"{fill.seq}.alice":
            break
    async with running_fanout(nc) as worker:
        await fanned_out(js, worker)
    assert await stored_outputs(js, ACCT_STREAM) == expected[ACCT_STREAM]
    assert await stored_outputs(js, TAPE_STREAM) == expected[TAPE_STREAM]


async def test_a_trader_reads_from_a_position_and_then_live(nc: Any, js: Any) -> None:
    client = CommandClient(js)
    async with running_engine(nc), running_fanout(nc) as worker:
        await client.create_market("M", "B", "Q")
        for i in range(5):
            await client.place("M", "alice", f"a{i}", "sell", 100 + i, 1)
        await wait_for_command(js, await client.place("M", "bob", "b0", "buy", 200, 5))
        await fanned_out(js, worker)
        everything = [(seq, e) async for seq, _, e in account_events(nc, "alice", heartbeat=0.5)]
        assert len(everything) == 10  # five accepted, five fills
        position = everything[6][0]
        rest = [(seq, e) async for seq, _, e in account_events(nc, "alice", from_seq=position, heartbeat=0.5)]
        assert [s for s, _ in rest] == [s for s, _ in everything[6:]]
        live: list[Any] = []

        async def follow() -> None:
            async for seq, _, e in account_events(nc, "alice", from_seq=everything[-1][0] + 1, follow=True,
                                                  heartbeat=0.5):  # fmt: skip
                live.append((seq, e))

        follower = asyncio.create_task(follow())
        await client.place("M", "alice", "late", "sell", 300, 1)

        async def arrived() -> bool:
            return len(live) == 1

        await wait_until(arrived, what="the live order_accepted")
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    assert live[0][1].client_order_id == "late" and live[0][0] > everything[-1][0]


async def test_the_fills_command_shows_own_fills_and_the_tape(nc: Any, js: Any, nats_server: EmbeddedServer) -> None:
    import json

    import typer
    from typer.testing import CliRunner

    from jetbook.submit_cli import fills

    async with running_engine(nc), running_fanout(nc) as worker:
        await trading_session(js)
        await fanned_out(js, worker)
    app = typer.Typer()
    app.command()(fills)
    app.command("unused")(lambda: None)  # two commands: typer then wants the command's name

    def run(*args: str) -> list[dict[str, Any]]:
        result = CliRunner().invoke(app, ["fills", "--nats-url", nats_server.url, "--json", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    (own,) = await asyncio.to_thread(run, "--account", "bob")
    assert (own["taker_account"], own["taker_client_order_id"], own["maker_account"]) == ("bob", "b1", "")
    (trade,) = await asyncio.to_thread(run, "--tape", "--market", "M")
    assert not {k for k in trade if "account" in k or "order_id" in k}
    assert len(await asyncio.to_thread(run, "--account", "alice", "--all")) == 5


async def test_an_implied_fill_on_the_feeds_and_in_jetbook_fills(nc: Any, js: Any, nats_server: EmbeddedServer) -> None:
    """Each side's copy keeps the implied fields without the other's account; the tape names the maker's runner
    and no account; `jetbook fills` prints the fill as implied in each of its three modes."""
    import msgpack
    import typer
    from typer.testing import CliRunner

    from jetbook.submit_cli import fills

    def cmd(subject: str, body: dict[str, Any]) -> tuple[str, bytes]:
        return subject, bytes(msgpack.packb(body))

    players = [{"runner_id": "A", "label": "Player 1"}, {"runner_id": "B", "label": "Player 2"}]
    last = await publish_all(js, [
        cmd("jb.ctl.T", {"type": "create_market", "market_id": "T", "kind": "odds", "quote": "GBP",
                         "runners": players, "book_type": "two_runner"}),
        cmd("jb.cmd.T.alice", {"type": "place_order", "client_order_id": "a", "runner": "B", "side": "back",
                               "price": 250, "qty": 10}),
        cmd("jb.cmd.T.bob", {"type": "place_order", "client_order_id": "b", "runner": "A", "side": "back",
                             "price": 166, "qty": 10}),
    ])  # fmt: skip
    async with running_engine(nc), running_fanout(nc) as worker:
        await wait_for_command(js, last)
        await fanned_out(js, worker)
    app = typer.Typer()
    app.command()(fills)
    app.command("unused")(lambda: None)

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, ["fills", "--nats-url", nats_server.url, *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    for args in (("--account", "alice"), ("--account", "bob"), ("--tape",), ("--market", "T")):
        assert "10 on A implied via B @ 250" in await asyncio.to_thread(run, *args), args
    (bob,) = [e for _, _, e in [x async for x in account_events(nc, "bob", market_id="T")] if isinstance(e, Fill)]
    assert (bob.implied, bob.maker_runner, bob.maker_qty, bob.maker_account) == (True, "B", 7, "")
    (trade,) = [t async for _, t in tape(nc, market_id="T")]
    assert (trade["implied"], trade["maker_runner"], trade["runner"]) == (True, "B", "A")
    assert not {k for k in trade if "account" in k or "order_id" in k}
