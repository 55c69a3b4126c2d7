"""projections/queries.py on real read-model files folded from real events, checked against the engine's own state."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.model import Event, Fill, MarketSettled
from projections import queries
from projections.read_model import plan, write
from tests.unit.helpers import M, Session
from tests.unit.test_read_model import build, v11_workload, workload


@pytest.fixture(params=[False, True], ids=["trading", "settled"])
def v11(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Session, list[Event], sqlite3.Connection]]:
    session, events = v11_workload(5, finish=request.param)
    db = tmp_path / "v11.db"
    asyncio.run(build(db, events, 17))
    con = sqlite3.connect(db)
    yield session, events, con
    con.close()


def test_position_and_answer_come_from_one_commit(tmp_path: Path) -> None:
    """A commit that lands while an answer is being read is not in it, and the answer says the older position."""
    _, events = workload(n=120)
    db = tmp_path / "rm.db"
    asyncio.run(build(db, events[:100], 10))
    reader = sqlite3.connect(db, isolation_level=None)
    writer = sqlite3.connect(db, isolation_level=None)
    assert queries.position(reader) == 100
    before = queries.order_count(reader, status=None)

    def read(con: sqlite3.Connection) -> tuple[int, int]:
        writer.execute("BEGIN IMMEDIATE")
        write(writer, plan(list(enumerate(events, 1))[100:]))
        writer.execute("COMMIT")
        return queries.order_count(con, status=None), queries.position(con)

    answer = queries.at(reader, read)
    assert answer == queries.At(100, (before, 100))
    assert not reader.in_transaction
    after = queries.at(reader, lambda c: queries.order_count(c, status=None))
    assert after.at_seq == len(events) and after.value > before
    assert queries.position(reader, "another") == 0


def test_set_position_is_the_position(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    con.executescript((Path(queries.__file__).parent / "schema.sql").read_text())
    for seq in (0, 7, 3):
        queries.set_position(con, seq)
        assert queries.position(con) == seq
    assert con.execute("SELECT name, stream, last_seq FROM projection_position").fetchall() == [
        ("read_model", "JB_EVT", 3)
    ]


def test_book_and_top_of_book_equal_the_engines_books(v11: tuple[Session, list[Event], sqlite3.Connection]) -> None:
    session, _, con = v11
    for market_id, market in session.engine.state.markets.items():
        for depth in (1, 3, -1):
            ladders = queries.book(con, market_id, depth)
            assert sorted(ld["runner"] for ld in ladders) == sorted(r or "" for r in market.books)
            for ladder in ladders:
                engine_book = market.books[ladder["runner"] or None]
                n = 1000 if depth < 0 else depth
                assert [(lv["price"], lv["qty"]) for lv in ladder["bids"]] == engine_book.depth(ladder["bid_side"], n)
                assert [(lv["price"], lv["qty"]) for lv in ladder["asks"]] == engine_book.depth(ladder["ask_side"], n)
                assert all(lv["orders"] > 0 for lv in ladder["bids"] + ladder["asks"])
        tops = queries.top_of_book(con, market_id)
        full = queries.book(con, market_id, 1)
        assert [(t["runner"], t["bid_price"], t["bid_qty"], t["ask_price"], t["ask_qty"]) for t in tops] == sorted(
            (
                ld["runner"],
                *((ld["bids"][0]["price"], ld["bids"][0]["qty"]) if ld["bids"] else (None, None)),
                *((ld["asks"][0]["price"], ld["asks"][0]["qty"]) if ld["asks"] else (None, None)),
            )
            for ld in full
        )
    assert [ld["runner"] for ld in queries.book(con, "O", 5, runner="draw")] == ["draw"]
    assert queries.book(con, "P", 5, runner="draw") == queries.book(con, "P", 5)  # a pair has one book
    assert queries.book(con, "nope") == [] and queries.snapshot(con, "nope") is None
    snap = queries.snapshot(con, "O", 2)
    assert snap is not None and snap["market"]["market_id"] == "O" and snap["ladders"] == queries.book(con, "O", 2)
    assert queries.top_of_book(con) == sorted(queries.top_of_book(con), key=lambda t: (t["market_id"], t["runner"]))


def test_markets_say_what_the_engine_holds(v11: tuple[Session, list[Event], sqlite3.Connection]) -> None:
    session, events, con = v11
    listed = queries.markets(con)
    assert [m["market_id"] for m in listed] == sorted(session.engine.state.markets)
    for m in listed:
        engine_market = session.engine.state.markets[m["market_id"]]
        assert (m["kind"], m["state"], m["phase"]) == (engine_market.kind, engine_market.state, engine_market.phase)
        assert {r["runner_id"]: r["label"] for r in m["runners"]} == engine_market.runners
        assert m == queries.market(con, m["market_id"])
        fills = [e for e in events if isinstance(e, Fill) and e.market_id == m["market_id"]]
        assert (m["last_trade_id"], m["volume"]) == (fills[-1].trade_id, sum(f.qty for f in fills))
    assert [r["runner_id"] for r in listed[0]["runners"]] == ["draw", "home", "away"]  # created together, then added
    assert queries.market(con, "nope") is None


def test_orders_by_status_id_and_client_order_id(v11: tuple[Session, list[Event], sqlite3.Connection]) -> None:
    session, _, con = v11
    total = queries.order_count(con, status=None)
    assert total == sum(
        queries.order_count(con, status=[s]) for s in ("open", "partially_filled", "filled", "cancelled")
    )
    for market_id, market in session.engine.state.markets.items():
        open_orders = queries.orders(con, market_id)
        assert [(o["order_id"], o["open_qty"], o["price"]) for o in open_orders] == sorted(
            (o.order_id, o.qty, o.price) for b in market.books.values() for o in b.orders.values()
        )
        assert all(o["status"] in queries.OPEN for o in open_orders)
        assert queries.order_count(con, market_id) == len(open_orders)
        every = queries.orders(con, market_id, status=None)
        assert [o["order_id"] for o in every] == sorted(o["order_id"] for o in every)
        assert every[:5] == queries.orders(con, market_id, status=None, limit=5)
        for o in every[::7]:
            assert queries.order(con, market_id, order_id=o["order_id"]) == o
            by_coid = queries.order(con, market_id, account_id=o["account_id"], client_order_id=o["client_order_id"])
            assert by_coid == o
            assert o["open_qty"] == o["qty"] - o["filled_qty"] - o["cancelled_qty"]
        mine = queries.orders(con, market_id, account_id="a", status=None)
        assert mine == [o for o in every if o["account_id"] == "a"] and mine
    assert queries.order(con, "P", order_id=10**9) is None
    with pytest.raises(ValueError):
        queries.order(con, "P", client_order_id="k1")


def test_completed_orders_newest_first(v11: tuple[Session, list[Event], sqlite3.Connection]) -> None:
    _, _, con = v11
    for market_id in ("P", "O"):
        done = queries.completed_orders(con, market_id, limit=-1)
        assert done and all(o["status"] in ("filled", "cancelled") for o in done)
        assert len(done) == queries.order_count(con, market_id, status=queries.COMPLETED)
        keys = [(o["updated_seq"], o["order_id"]) for o in done]
        assert keys == sorted(keys, reverse=True)
        assert queries.completed_orders(con, market_id, limit=4) == done[:4]
        assert queries.completed_orders(con, market_id, "b") == [o for o in done if o["account_id"] == "b"][:100]


def test_fills_by_market_account_from_seq_and_limit(v11: tuple[Session, list[Event], sqlite3.Connection]) -> None:
    _, events, con = v11
    for market_id in ("P", "O"):
        logged = [(seq, e) for seq, e in enumerate(events, 1) if isinstance(e, Fill) and e.market_id == market_id]
        got = queries.fills(con, market_id)
        assert [(t["seq"], t["trade_id"], t["price"], t["qty"], t["runner"]) for t in got] == [
            (seq, e.trade_id, e.price, e.qty, e.runner or "") for seq, e in logged
        ]
        mid = logged[len(logged) // 2][0]
        assert queries.fills(con, market_id, from_seq=mid) == [t for t in got if t["seq"] >= mid]
        assert queries.fills(con, market_id, from_seq=mid, limit=3) == [t for t in got if t["seq"] >= mid][:3]
        assert queries.fills(con, market_id, account_id="c") == [
            t for t in got if "c" in (t["maker_account"], t["taker_account"])
        ]


def test_positions_and_risk_equal_the_engines(v11: tuple[Session, list[Event], sqlite3.Connection]) -> None:
    session, events, con = v11
    settled = {(e.market_id, a): p for e in events if isinstance(e, MarketSettled) for a, p in e.pnl}
    for market_id, market in session.engine.state.markets.items():
        risks = {r["account_id"]: r for r in queries.risk(con, market_id)}
        listed = queries.market(con, market_id)
        assert listed is not None
        assert list(risks) == sorted(risks)
        for account, pos in market.positions.items():
            r = risks[account]
            if market.kind == "pair":
                assert [r["net_qty"], r["cash"]] == pos and r["if_wins"] == []
            else:
                assert {w["runner"]: w["pnl"] for w in r["if_wins"]} == {
                    w: sum(wl[0] if runner == w else wl[1] for runner, wl in pos.items()) for w in market.runners
                }
                assert [w["runner"] for w in r["if_wins"]] == [x["runner_id"] for x in listed["runners"]]
            assert r["realised_pnl"] == settled.get((market_id, account))
            assert queries.risk(con, market_id, account) == [r]
        for account, engine_risk in market.risk.items():
            found = risks.get(account)
            got = (found["open_orders"], found["open_exposure"]) if found else (0, 0)
            assert got == (engine_risk.open_orders, engine_risk.open_exposure), (market_id, account)
            if found:
                assert (found["max_order_qty"], found["max_open_orders"], found["max_open_exposure"]) == (
                    engine_risk.max_order_qty,
                    engine_risk.max_open_orders,
                    engine_risk.max_open_exposure,
                )
        rows = queries.positions(con, market_id)
        assert [(p["account_id"], p["runner"]) for p in rows] == sorted((p["account_id"], p["runner"]) for p in rows)
    assert risks_have_exposure(con)
    assert queries.risk(con, "nope") == []


def risks_have_exposure(con: sqlite3.Connection) -> bool:
    """The workload leaves something resting, so the exposure comparison above compared non-zero figures."""
    return any(r["open_exposure"] > 0 for m in ("P", "O") for r in queries.risk(con, m))


def test_counts_and_levels(tmp_path: Path) -> None:
    s = Session(market=None)
    events = s.create(M)
    events += s.place("alice", "sell", 300_000, 10)
    events += s.place("alice", "sell", 301_000, 5)
    events += s.place("bob", "buy", 300_500, 15)
    events += s.cancel("alice", order_id=2)
    events += s.cancel("alice", order_id=2)  # rejected: no longer open
    db = tmp_path / "rm.db"
    asyncio.run(build(db, events, 2))
    con = sqlite3.connect(db)
    assert queries.counts(con) == {
        "markets": 1, "runners": 0, "orders": 3, "open_orders": 1, "cancelled_orders": 1, "trades": 1,
        "book_levels": 1, "positions": 2, "rejections": 1,
    }  # fmt: skip
    assert queries.book_levels(con) == [
        {"market_id": M, "runner": "", "side": "buy", "price": 300_500, "qty": 5, "orders": 1}
    ]
    assert queries.top_of_book(con) == [
        {"market_id": M, "runner": "", "bid_price": 300_500, "bid_qty": 5, "ask_price": None, "ask_qty": None}
    ]
