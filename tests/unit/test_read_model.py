"""The SQLite read model on real files: rows, statuses, levels, and independence from batch boundaries."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from events.model import Event, Rejected
from projections.read_model import ReadModel
from replay.hashing import db_content_hash
from tests.unit.helpers import M, Session


def workload(seed: int = 7, n: int = 400) -> tuple[Session, list[Event]]:
    rng = random.Random(seed)
    s = Session(market=None)
    events = list(s.create(M))
    events += s.create("BTC-USDC")
    open_ids: list[tuple[str, str, int]] = []
    for _ in range(n):
        market = rng.choice([M, "BTC-USDC"])
        account = rng.choice("abcd")
        if open_ids and rng.random() < 0.25:
            m, acct, oid = open_ids.pop(rng.randrange(len(open_ids)))
            events += s.cancel(acct, market=m, order_id=oid)
            continue
        out = s.place(account, rng.choice(["buy", "sell"]), rng.randint(95, 105), rng.randint(1, 9), market=market)
        events += out
        open_ids.append((market, account, out[0].order_id))  # type: ignore[attr-defined]
    events += s.send("jb.cmd.ETH-USDC.a", b"\xc1")
    return s, events


async def build(path: Path, events: list[Event], batch: int) -> None:
    model = await ReadModel.open(path)
    try:
        numbered = list(enumerate(events, 1))
        for i in range(0, len(numbered), batch):
            assert await model.apply(numbered[i : i + batch]) == numbered[min(i + batch, len(numbered)) - 1][0]
        assert await model.position() == len(events)
    finally:
        await model.close()


async def test_content_does_not_depend_on_batch_boundaries(tmp_path: Path) -> None:
    _, events = workload()
    hashes = set()
    for batch in (1, 7, 100, len(events)):
        await build(tmp_path / f"b{batch}.db", events, batch)
        hashes.add(db_content_hash(tmp_path / f"b{batch}.db"))
    assert len(hashes) == 1


async def test_levels_equal_the_engines_book_and_statuses_add_up(tmp_path: Path) -> None:
    session, events = workload()
    db = tmp_path / "rm.db"
    await build(db, events, 50)
    con = sqlite3.connect(db)
    for market_id, market in session.engine.state.markets.items():
        for side in ("buy", "sell"):
            order = "DESC" if side == "buy" else "ASC"
            rows = con.execute(
                f"SELECT price, qty FROM book_levels WHERE market_id=? AND side=? ORDER BY price {order}",
                (market_id, side),
            ).fetchall()
            assert rows == market.books[None].depth(side, 1000)
        open_rows = con.execute(
            "SELECT order_id, open_qty FROM orders WHERE market_id=? AND status IN ('open','partially_filled')"
            " ORDER BY order_id",
            (market_id,),
        ).fetchall()
        assert open_rows == sorted((o.order_id, o.qty) for o in market.books[None].orders.values())
    bad = con.execute("SELECT COUNT(*) FROM orders WHERE filled_qty + cancelled_qty > qty OR open_qty < 0").fetchone()
    assert bad == (0,)
    statuses = dict(con.execute("SELECT status, COUNT(*) FROM orders GROUP BY status").fetchall())
    assert set(statuses) <= {"open", "partially_filled", "filled", "cancelled"} and statuses.get("filled")
    want = [(e.reason,) for e in events if isinstance(e, Rejected)]
    assert con.execute("SELECT reason FROM rejections ORDER BY seq").fetchall() == want
    assert want[-1] == ("malformed",) and ("order_not_open",) in want


async def test_top_of_book_view_and_market_stats(tmp_path: Path) -> None:
    s2 = Session(market=None)
    events = s2.create(M)
    events += s2.place("alice", "sell", 300_000, 10)
    events += s2.place("alice", "sell", 301_000, 5)
    events += s2.place("bob", "buy", 299_000, 8)
    events += s2.place("bob", "buy", 300_500, 15)
    db = tmp_path / "rm.db"
    await build(db, events, 2)
    con = sqlite3.connect(db)
    assert con.execute("SELECT * FROM top_of_book").fetchall() == [(M, "", 300_500, 5, 301_000, 5)]
    assert con.execute("SELECT last_trade_id, last_price, volume FROM markets").fetchall() == [(1, 300_000, 10)]
    assert con.execute("SELECT order_id, status, filled_qty FROM orders ORDER BY order_id").fetchall() == [
        (1, "filled", 10), (2, "open", 0), (3, "open", 0), (4, "partially_filled", 10),
    ]  # fmt: skip
    assert con.execute("SELECT trade_id, price, qty, maker_order_id, taker_order_id FROM trades").fetchall() == [
        (1, 300_000, 10, 1, 4)
    ]


async def test_a_failed_batch_leaves_rows_and_position_untouched(tmp_path: Path) -> None:
    _, events = workload(n=50)
    db = tmp_path / "rm.db"
    await build(db, events[:20], 20)
    before = db_content_hash(db)
    model = await ReadModel.open(db)
    try:
        # Re-applying an order that already exists violates the primary key mid-transaction.
        dup = [(21, events[20]), (22, events[2])]
        try:
            await model.apply(dup)
        except sqlite3.IntegrityError:
            pass
        else:
            raise AssertionError("expected the duplicate insert to fail")
        assert await model.position() == 20
    finally:
        await model.close()
    assert db_content_hash(db) == before


def v11_workload(seed: int, n: int = 600, finish: bool = True) -> tuple[Session, list[Event]]:
    """Every v1.1 event kind: pair and odds books, order types, amends, self-trades, lifecycle, settlement."""
    rng = random.Random(seed)
    s = Session(market=None)
    events = list(s.create("P", tick_size=5))
    runners = [{"runner_id": r, "label": r.title()} for r in ("home", "draw")]
    events += s.control("O", "create_market", market_id="O", kind="odds", quote="GBP", runners=runners)
    events += s.control("P", "set_risk_limits", account_id="a", max_open_orders=40)
    placed: list[tuple[str, str, str]] = []
    for i in range(n):
        r = rng.random()
        account = rng.choice("abc")
        if i == n // 3:
            events += s.control("O", "add_runner", runner_id="away", label="Away")
        if i == n // 2:
            events += s.control("O", "go_live")
        if r < 0.55:
            market = rng.choice("PO")
            body = {"type": "place_order", "client_order_id": f"k{i}", "qty": rng.randint(1, 9),
                    "stp": rng.choice(["cancel_resting", "cancel_newest", "cancel_both"]),
                    "persistence": rng.choice(["lapse", "persist"])}  # fmt: skip
            if market == "P":
                body |= {"side": rng.choice(["buy", "sell"]), "price": 5 * rng.randint(18, 22)}
            else:
                runner = rng.choice(["home", "draw", "away"] if i > n // 3 else ["home", "draw"])
                body |= {
                    "side": rng.choice(["back", "lay"]),
                    "price": rng.choice([190, 200, 210, 220]),
                    "runner": runner,
                }
            kind = rng.random()
            if kind < 0.15:
                body["tif"] = rng.choice(["ioc", "fok", "post_only"])
            elif kind < 0.2:
                body |= {"order_type": "market"}
                body.pop("price")
            events += s.send(f"jb.cmd.{market}.{account}", body)
            placed.append((market, account, f"k{i}"))
        elif r < 0.75 and placed:
            market, account, coid = rng.choice(placed)
            events += s.trade(account, "cancel_order", market=market, client_order_id=coid)
        elif r < 0.95 and placed:
            market, account, coid = rng.choice(placed)
            change = {"qty": rng.randint(1, 9)} if rng.random() < 0.5 else {}
            if not change or rng.random() < 0.3:
                change["price"] = 5 * rng.randint(18, 22) if market == "P" else rng.choice([190, 200, 210, 220])
            events += s.trade(account, "amend_order", market=market, client_order_id=coid, **change)
        else:
            events += s.trade(account, "cancel_all", market=rng.choice(["P", "O", "_all"]))
    if finish:
        events += s.control("P", "close_market")
        events += s.control("P", "settle_market", price=100)
        events += s.control("O", "set_market_state", state="suspended")
    return s, events


@pytest.mark.parametrize("finish", [False, True])
async def test_v11_model_matches_the_engine_and_ignores_batch_boundaries(tmp_path: Path, finish: bool) -> None:
    session, events = v11_workload(3, finish=finish)
    kinds = {e.type for e in events}
    assert kinds >= {"order_amended", "orders_cancelled", "market_state_changed", "runner_added", "risk_limits_set",
                     "fill", "order_cancelled", *(["market_settled"] if finish else [])}, kinds  # fmt: skip
    hashes = set()
    for batch in (1, 13, len(events)):
        await build(tmp_path / f"v{batch}.db", events, batch)
        hashes.add(db_content_hash(tmp_path / f"v{batch}.db"))
    assert len(hashes) == 1
    con = sqlite3.connect(tmp_path / "v13.db")
    for market_id, market in session.engine.state.markets.items():
        for runner, book in market.books.items():
            for side in ("buy", "sell") if market.kind == "pair" else ("lay", "back"):
                rows = con.execute(
                    "SELECT price, qty FROM book_levels WHERE market_id=? AND runner=? AND side=? ORDER BY price "
                    + ("DESC" if side in ("buy", "lay") else "ASC"),
                    (market_id, runner or "", side),
                ).fetchall()
                assert rows == book.depth(side, 1000), (market_id, runner, side)
        open_rows = con.execute(
            "SELECT order_id, open_qty, price FROM orders WHERE market_id=? AND open_qty > 0 ORDER BY order_id",
            (market_id,),
        ).fetchall()
        assert open_rows == sorted(
            (o.order_id, o.qty, o.price) for b in market.books.values() for o in b.orders.values()
        )
        state = con.execute("SELECT state, phase FROM markets WHERE market_id=?", (market_id,)).fetchone()
        assert state == (market.state, market.phase)
        for account, pos in market.positions.items():
            if market.kind == "pair":
                row = con.execute(
                    "SELECT net_qty, cash FROM positions WHERE market_id=? AND account_id=?", (market_id, account)
                ).fetchone()
                assert list(row) == pos
            else:
                for runner, wl in pos.items():
                    row = con.execute(
                        "SELECT if_win, if_lose FROM positions WHERE market_id=? AND account_id=? AND runner=?",
                        (market_id, account, runner),
                    ).fetchone()
                    assert list(row) == wl
    bad = con.execute("SELECT COUNT(*) FROM orders WHERE open_qty < 0 OR filled_qty > qty").fetchone()
    assert bad == (0,)
    settled = dict(con.execute("SELECT account_id, pnl FROM settlements WHERE market_id = 'P'").fetchall())
    pnl = {a: p for e in events if e.type == "market_settled" for a, p in e.pnl}  # type: ignore[attr-defined]
    assert settled == pnl and bool(settled) == finish


async def test_a_compact_log_gives_the_orders_and_levels_of_the_plain_one(tmp_path: Path) -> None:
    """v1.3: orders_accepted and a compact cancel_orders' orders_cancelled fold into the rows the single-order
    events give (only the JB_EVT sequences differ: the compact log has fewer messages)."""
    rng = random.Random(3)
    logs: list[list[Event]] = []
    for compact in (False, True):
        rng.seed(3)
        s = Session()
        events: list[Event] = []
        for _ in range(30):
            account = rng.choice("ab")
            ins = [
                {"client_order_id": f"c{rng.randrange(400)}", "side": rng.choice(["buy", "sell"]),
                 "price": rng.randint(95, 105), "qty": rng.randint(1, 5)}
                for _ in range(rng.randint(1, 8))
            ]  # fmt: skip
            events += s.trade(account, "place_orders", instructions=ins, compact=compact)
            cancels = [{"order_id": rng.randint(1, 120)} for _ in range(rng.randint(1, 6))]
            events += s.trade(account, "cancel_orders", instructions=cancels, compact=compact)
        logs.append(events)
    assert len(logs[1]) < len(logs[0])
    assert any(e.type == "orders_accepted" for e in logs[1]) and any(e.type == "orders_cancelled" for e in logs[1])
    rows = []
    for i, events in enumerate(logs):
        setup = Session(market=None).create(M)
        await build(tmp_path / f"{i}.db", [*setup, *events], 17)
        con = sqlite3.connect(tmp_path / f"{i}.db")
        orders = (
            "SELECT market_id, order_id, account_id, client_order_id, side, price, qty, tif, filled_qty,"
            " cancelled_qty, runner, order_type, stp, persistence, status FROM orders ORDER BY 1, 2"
        )
        rows.append((
            con.execute(orders).fetchall(),
            con.execute("SELECT * FROM book_levels ORDER BY 1, 2, 3, 4").fetchall(),
            con.execute("SELECT * FROM positions ORDER BY 1, 2, 3").fetchall(),
        ))  # fmt: skip
        con.close()
    assert rows[0] == rows[1] and len(rows[0][0]) > 50


async def test_a_forged_orders_accepted_does_not_fold(tmp_path: Path) -> None:
    """A row that is not ten columns is an event that does not fold: the runner names it as CorruptLog."""
    from events.model import OrdersAccepted
    from projections.read_model import plan

    setup = Session(market=None).create(M)
    for orders in ([[1, "x"]], [5], "junk", [[1, "c", "buy", 100, 1, "gtc", None, "limit", "none", "lapse", 9]]):
        forged = OrdersAccepted(market_id=M, cmd_seq=2, ts=1, account_id="a", orders=orders)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            plan([(1, setup[0]), (2, forged)])
