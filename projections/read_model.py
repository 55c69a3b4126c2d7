"""The SQLite read model: markets (state, phase, settlement), runners, orders with status, trades, book
levels and top of book per book, positions, settlements, risk limits, rejections.

A batch of events becomes a handful of `executemany` statements in one
transaction, together with the new position. Every row change is a delta that
commutes with the others (add to filled_qty, add to a level's qty), so the
statements can run grouped by kind instead of event by event, and the result
does not depend on where batch boundaries fall: a rebuild from 0 gives the same
content as the live model.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from events.model import (
    Checkpoint,
    Event,
    Fill,
    MarketCreated,
    MarketSettled,
    MarketStateChanged,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrdersAccepted,
    OrdersCancelled,
    Rejected,
    RiskLimitsSet,
    RunnerAdded,
    accepted_orders,
)
from framework.app import create_schema
from projections import queries
from protocol.errors import CorruptLog
from protocol.subjects import EVT_STREAM

Key = tuple[str, int]
T = TypeVar("T")


@dataclass(slots=True)
class Writes:
    """The row changes of one batch of events; built without touching the database.

    Every list keeps event order, and each column is written by one kind of
    statement only, so running the statements grouped by kind gives the same
    rows as running them event by event.
    """

    first_seq: int = 0  # of the batch's first event
    markets: list[tuple[Any, ...]] = field(default_factory=list)
    runners: list[tuple[Any, ...]] = field(default_factory=list)
    states: list[tuple[Any, ...]] = field(default_factory=list)  # (state, phase, seq, market)
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    trades: list[tuple[Any, ...]] = field(default_factory=list)
    amends: list[tuple[Any, ...]] = field(default_factory=list)  # (price, d_qty, d_cancelled, seq, market, order)
    filled: dict[Key, list[int]] = field(default_factory=dict)  # (market, order) -> [qty, last seq, first seq]
    cancels: list[tuple[Any, ...]] = field(default_factory=list)
    levels: dict[tuple[str, str, str, int], list[int]] = field(default_factory=dict)  # -> [d_qty, d_orders]
    stats: dict[str, list[int]] = field(default_factory=dict)  # market -> [last trade, last price, d_volume]
    positions: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # -> [net, cash, win, lose]
    settled: list[tuple[Any, ...]] = field(default_factory=list)
    settlements: list[tuple[Any, ...]] = field(default_factory=list)
    risk: list[tuple[Any, ...]] = field(default_factory=list)
    rejections: list[tuple[Any, ...]] = field(default_factory=list)
    last_seq: int = 0
    stream: str | None = None  # the shard's event stream, when the model follows several (None: JB_EVT alone)


def _level(w: Writes, key: tuple[str, str, str, int], qty: int, orders: int) -> None:
    delta = w.levels.get(key)
    if delta is None:
        w.levels[key] = [qty, orders]
    else:
        delta[0] += qty
        delta[1] += orders


def _filled(w: Writes, key: Key, qty: int, seq: int) -> None:
    acc = w.filled.get(key)
    if acc is None:
        w.filled[key] = [qty, seq, seq]
    else:
        acc[0] += qty
        acc[1] = seq


_MAKER_SIDE = {"buy": "sell", "sell": "buy", "back": "lay", "lay": "back"}


def _position(w: Writes, market: str, account: str, runner: str, side: str, price: int, qty: int) -> None:
    key = (market, account, runner)
    pos = w.positions.get(key)
    if pos is None:
        pos = w.positions[key] = [0, 0, 0, 0]
    if side == "buy":
        pos[0] += qty
        pos[1] -= price * qty
    elif side == "sell":
        pos[0] -= qty
        pos[1] += price * qty
    elif side == "back":  # odds: P&L in hundredths of a stake if the runner wins / loses
        pos[2] += qty * (price - 100)
        pos[3] -= qty * 100
    else:
        pos[2] -= qty * (price - 100)
        pos[3] += qty * 100


def _accepted(w: Writes, seq: int, e: OrderAccepted) -> None:
    runner = e.runner or ""
    w.orders.append((
        e.market_id, e.order_id, e.account_id, e.client_order_id, e.side, e.price, e.qty, e.tif,
        seq, e.ts, seq, runner, e.order_type, e.stp, e.persistence,
    ))  # fmt: skip
    if e.resting_qty:
        assert e.price is not None
        _level(w, (e.market_id, runner, e.side, e.price), e.resting_qty, 1)


def plan(batch: Iterable[tuple[int, Event]]) -> Writes:
    w = Writes()
    for seq, e in batch:
        w.first_seq = w.first_seq or seq
        w.last_seq = seq
        m = e.market_id
        if isinstance(e, Fill):
            runner = e.runner or ""
            w.trades.append((
                m, e.trade_id, e.price, e.qty, e.maker_order_id, e.taker_order_id, e.maker_account,
                e.taker_account, e.taker_side, e.maker_client_order_id, e.taker_client_order_id,
                seq, e.cmd_seq, e.ts, runner, int(e.implied), e.maker_runner,
                *((e.maker_qty, e.maker_stake, e.taker_stake) if e.implied else (None, None, None)),
            ))  # fmt: skip
            _filled(w, (m, e.taker_order_id), e.qty, seq)
            if e.implied:  # two_runner: the maker sits on the other runner's same side; figures from the stakes
                assert e.maker_runner is not None
                _filled(w, (m, e.maker_order_id), e.maker_qty, seq)
                _level(w, (m, e.maker_runner, e.taker_side, e.price), -e.maker_qty, -1 if e.maker_remaining == 0 else 0)
                stats = w.stats.setdefault(m, [0, 0, 0])
                stats[0], stats[1], stats[2] = e.trade_id, e.price, stats[2] + e.qty
                sign = 1 if e.taker_side == "back" else -1
                for who, r, win, lose in (
                    (e.taker_account, runner, e.maker_stake, e.taker_stake),
                    (e.maker_account, e.maker_runner, e.taker_stake, e.maker_stake),
                ):
                    pos = w.positions.get((m, who, r))
                    if pos is None:
                        pos = w.positions[(m, who, r)] = [0, 0, 0, 0]
                    pos[2] += sign * win
                    pos[3] -= sign * lose
                continue
            _filled(w, (m, e.maker_order_id), e.qty, seq)
            maker_side = _MAKER_SIDE[e.taker_side]
            _level(w, (m, runner, maker_side, e.price), -e.qty, -1 if e.maker_remaining == 0 else 0)
            stats = w.stats.setdefault(m, [0, 0, 0])
            stats[0], stats[1], stats[2] = e.trade_id, e.price, stats[2] + e.qty
            _position(w, m, e.taker_account, runner, e.taker_side, e.price, e.qty)
            _position(w, m, e.maker_account, runner, maker_side, e.price, e.qty)
        elif isinstance(e, OrderAccepted):
            _accepted(w, seq, e)
        elif isinstance(e, OrdersAccepted):  # a compact batch's run: its order_accepted events, one row each
            for one in accepted_orders(e):
                _accepted(w, seq, one)
        elif isinstance(e, OrderCancelled):
            w.cancels.append((e.cancelled_qty, seq, m, e.order_id))
            if e.was_resting:
                assert e.price is not None
                _level(w, (m, e.runner or "", e.side, e.price), -e.cancelled_qty, -1)
        elif isinstance(e, OrdersCancelled):
            for order_id, _, _, side, price, qty, runner in e.orders:
                w.cancels.append((qty, seq, m, order_id))
                _level(w, (m, runner or "", side, price), -qty, -1)
        elif isinstance(e, OrderAmended):
            runner = e.runner or ""
            grow = e.qty - e.old_qty
            w.amends.append((e.price, max(grow, 0), max(-grow, 0), seq, m, e.order_id))
            if e.priority == "kept":
                _level(w, (m, runner, e.side, e.price), grow, 0)
            else:
                _level(w, (m, runner, e.side, e.old_price), -e.old_qty, -1)
                if e.resting_qty:
                    _level(w, (m, runner, e.side, e.price), e.resting_qty, 1)
        elif isinstance(e, Rejected):
            w.rejections.append((
                seq, e.cmd_seq, e.ts, m, e.account_id, e.command_type, e.client_order_id, e.order_id,
                e.reason, e.detail,
            ))  # fmt: skip
        elif isinstance(e, MarketStateChanged):
            w.states.append((e.state, e.phase, seq, m))
        elif isinstance(e, MarketCreated):
            w.markets.append((
                m, e.base, e.quote, seq, e.ts, e.kind, e.tick_size, e.lot_size, e.min_qty, e.max_qty, e.min_price,
                e.max_price, e.band_bps, e.book_type,
            ))  # fmt: skip
            w.runners += [(m, r, label, seq) for r, label in e.runners]
        elif isinstance(e, RunnerAdded):
            w.runners.append((m, e.runner_id, e.label, seq))
        elif isinstance(e, MarketSettled):
            w.settled.append((e.winner, e.price, m))
            w.settlements += [(m, account, pnl, seq) for account, pnl in e.pnl]
        elif isinstance(e, RiskLimitsSet):
            w.risk.append((m, e.account_id, e.max_order_qty, e.max_open_orders, e.max_open_exposure, seq))
        elif isinstance(e, Checkpoint):
            pass  # the engine's self-check; nothing to show
        else:
            raise TypeError(f"read model cannot fold {type(e).__name__}")
    return w


SCHEMA = resources.files("projections").joinpath("schema.sql").read_text()
NAME = queries.READ_MODEL
SCHEMA_VERSION = 4  # PRAGMA user_version set by schema.sql


def write(con: sqlite3.Connection, w: Writes, name: str = NAME) -> None:
    """Run one batch's row changes and its new position on `con`, inside the caller's transaction.

    Shared by the live worker (one transaction per batch) and `replay rebuild`
    (a fresh file, large transactions), so both write exactly the same rows.
    """
    if w.markets:
        con.executemany(
            "INSERT INTO markets (market_id, base, quote, created_seq, created_ts, kind, tick_size, lot_size,"
            " min_qty, max_qty, min_price, max_price, band_bps, book_type) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            w.markets,
        )
    if w.runners:
        con.executemany("INSERT INTO runners VALUES (?,?,?,?)", w.runners)
    if w.states:
        con.executemany("UPDATE markets SET state = ?, phase = ?, state_seq = ? WHERE market_id = ?", w.states)
    if w.orders:
        con.executemany(
            "INSERT INTO orders (market_id, order_id, account_id, client_order_id, side, price, qty,"
            " tif, created_seq, created_ts, updated_seq, runner, order_type, stp, persistence)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            w.orders,
        )
    if w.trades:
        con.executemany("INSERT INTO trades VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", w.trades)
    if w.first_seq:
        con.execute("INSERT INTO projection_origin VALUES (?, ?) ON CONFLICT DO NOTHING", (name, w.first_seq))
    if w.amends:
        cur = con.executemany(
            "UPDATE orders SET price = ?, qty = qty + ?, cancelled_qty = cancelled_qty + ?, amends = amends + 1,"
            " updated_seq = MAX(updated_seq, ?) WHERE market_id = ? AND order_id = ?",
            w.amends,
        )
        if cur.rowcount != len(w.amends):
            _known_orders(con, name, "amends", [(a[3], a[4], a[5]) for a in w.amends])
    if w.filled:
        cur = con.executemany(
            "UPDATE orders SET filled_qty = filled_qty + ?, updated_seq = MAX(updated_seq, ?)"
            " WHERE market_id = ? AND order_id = ?",
            [(q, s, m, o) for (m, o), (q, s, _) in w.filled.items()],
        )
        if cur.rowcount != len(w.filled):
            _known_orders(con, name, "fills", [(first, m, o) for (m, o), (_, _, first) in w.filled.items()])
    if w.cancels:
        cur = con.executemany(
            "UPDATE orders SET cancelled_qty = cancelled_qty + ?, updated_seq = MAX(updated_seq, ?)"
            " WHERE market_id = ? AND order_id = ?",
            w.cancels,
        )
        if cur.rowcount != len(w.cancels):
            _known_orders(con, name, "cancels", [(c[1], c[2], c[3]) for c in w.cancels])
    if w.stats:
        con.executemany(
            "UPDATE markets SET last_trade_id = ?, last_price = ?, volume = volume + ? WHERE market_id = ?",
            [(t, p, v, m) for m, (t, p, v) in w.stats.items()],
        )
    if w.levels:
        rows = [(m, r, s, p, q, n) for (m, r, s, p), (q, n) in w.levels.items()]
        con.executemany(
            "INSERT INTO book_levels VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE"
            " SET qty = qty + excluded.qty, orders = orders + excluded.orders",
            rows,
        )
        con.executemany(
            "DELETE FROM book_levels WHERE market_id = ? AND runner = ? AND side = ? AND price = ? AND qty <= 0",
            [r[:4] for r in rows],
        )
    if w.positions:
        con.executemany(
            "INSERT INTO positions VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
            " net_qty = net_qty + excluded.net_qty, cash = cash + excluded.cash,"
            " if_win = if_win + excluded.if_win, if_lose = if_lose + excluded.if_lose",
            [(m, a, r, *pos) for (m, a, r), pos in w.positions.items()],
        )
    if w.settled:
        con.executemany("UPDATE markets SET settled_winner = ?, settled_price = ? WHERE market_id = ?", w.settled)
    if w.settlements:
        con.executemany("INSERT INTO settlements VALUES (?,?,?,?)", w.settlements)
    if w.risk:
        con.executemany(
            "INSERT INTO risk_limits VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
            " max_order_qty = excluded.max_order_qty, max_open_orders = excluded.max_open_orders,"
            " max_open_exposure = excluded.max_open_exposure, seq = excluded.seq",
            w.risk,
        )
    if w.rejections:
        if w.stream is None:
            con.executemany("INSERT INTO rejections VALUES (?,?,?,?,?,?,?,?,?,?)", w.rejections)
        else:  # sequences are per shard stream: the stream is part of the key
            con.executemany(
                "INSERT INTO shard_rejections VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(w.stream, *r) for r in w.rejections],
            )
    queries.set_position(con, w.last_seq, name, w.stream or EVT_STREAM)


def _known_orders(con: sqlite3.Connection, name: str, what: str, refs: list[tuple[int, str, int]]) -> None:
    """An event that changes an order this model never saw accepted: CorruptLog, if the model holds every order.

    A model folded from JB_EVT 1 holds every order an event can refer to
    (`order_accepted` comes first, in the same batch at the latest, and its
    row is written before the batch's updates). One started further on (a
    rebuild `--from-seq`) may not, so it cannot tell and goes on.
    """
    row = con.execute("SELECT first_seq FROM projection_origin WHERE name = ?", (name,)).fetchone()
    if row is None or int(row[0]) > 1:
        return
    for seq, market, order in sorted(refs):
        if con.execute("SELECT 1 FROM orders WHERE market_id = ? AND order_id = ?", (market, order)).fetchone() is None:
            raise CorruptLog(
                seq, f"an event of {market}", f"{what} order {order} of {market}, which was never accepted"
            )


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Used only from the model's own thread; check_same_thread is off because that thread is not this one.
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    (version,) = con.execute("PRAGMA user_version").fetchone()
    old = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'orders'").fetchone()
    if old and version != SCHEMA_VERSION:
        con.close()
        raise ValueError(
            f"{path} has read-model layout {version}, this version writes {SCHEMA_VERSION}: "
            "rebuild it (jetbook replay rebuild --db PATH)"
        )
    create_schema(con, SCHEMA)
    # WAL + NORMAL: a crash can lose the newest transactions but never tears one,
    # and the position is inside each transaction, so lost ones are simply re-read.
    con.execute("PRAGMA synchronous = NORMAL")
    return con


class ReadModel:
    """The live model: one SQLite connection on its own thread, one transaction per batch.

    Plain sqlite3 on a dedicated thread rather than aiosqlite: a batch is one
    hop to the thread (plan, then every statement of the batch there), not one
    per statement, and sqlite3 releases the GIL while it steps, so the event
    loop keeps reading JB_EVT meanwhile.
    """

    NAME = NAME
    SCHEMA = SCHEMA
    plan = staticmethod(plan)
    write = staticmethod(write)

    def __init__(self, con: sqlite3.Connection, path: Path, executor: ThreadPoolExecutor) -> None:
        self.con = con
        self.path = path
        self._executor = executor

    @classmethod
    async def open(cls, path: Path | str) -> ReadModel:
        path = Path(path)
        executor = ThreadPoolExecutor(1, thread_name_prefix="read-model")
        try:
            con = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(con, path, executor)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def position(self, name: str = NAME) -> int:
        return await self._run(queries.position, self.con, name)

    def _commit(self, w: Writes, name: str) -> int:
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            write(con, w, name)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return w.last_seq

    async def apply(self, batch: list[tuple[int, Event]], name: str = NAME, stream: str | None = None) -> int:
        """Fold a batch into the database in one transaction; returns the new position.

        `name` and `stream`: the position row and the shard stream the batch comes from, when the model
        follows several (queries.position_name); one transaction per batch either way, so each shard's
        position always matches its rows.
        """
        w = plan(batch)
        w.stream = stream
        return await self._run(self._commit, w, name)

    async def close(self) -> None:
        try:
            await self._run(self.con.close)
        finally:
            self._executor.shutdown(wait=False)
