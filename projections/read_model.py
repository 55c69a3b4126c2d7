"""The SQLite read model: markets, orders with status, trades, book levels and top of book, rejections.

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

from events.model import Checkpoint, Event, Fill, MarketCreated, OrderAccepted, OrderCancelled, Rejected

Key = tuple[str, int]
T = TypeVar("T")


@dataclass(slots=True)
class Writes:
    """The row changes of one batch of events; built without touching the database."""

    markets: list[tuple[Any, ...]] = field(default_factory=list)
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    trades: list[tuple[Any, ...]] = field(default_factory=list)
    filled: dict[Key, list[int]] = field(default_factory=dict)  # (market, order) -> [qty, last seq]
    cancels: list[tuple[Any, ...]] = field(default_factory=list)
    levels: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)  # -> [d_qty, d_orders]
    stats: dict[str, list[int]] = field(default_factory=dict)  # market -> [last trade, last price, d_volume]
    rejections: list[tuple[Any, ...]] = field(default_factory=list)
    last_seq: int = 0


def _level(w: Writes, key: tuple[str, str, int], qty: int, orders: int) -> None:
    delta = w.levels.get(key)
    if delta is None:
        w.levels[key] = [qty, orders]
    else:
        delta[0] += qty
        delta[1] += orders


def _filled(w: Writes, key: Key, qty: int, seq: int) -> None:
    acc = w.filled.get(key)
    if acc is None:
        w.filled[key] = [qty, seq]
    else:
        acc[0] += qty
        acc[1] = seq


def plan(batch: Iterable[tuple[int, Event]]) -> Writes:
    w = Writes()
    for seq, e in batch:
        w.last_seq = seq
        m = e.market_id
        if isinstance(e, Fill):
            w.trades.append((
                m, e.trade_id, e.price, e.qty, e.maker_order_id, e.taker_order_id, e.maker_account,
                e.taker_account, e.taker_side, e.maker_client_order_id, e.taker_client_order_id,
                seq, e.cmd_seq, e.ts,
            ))  # fmt: skip
            _filled(w, (m, e.maker_order_id), e.qty, seq)
            _filled(w, (m, e.taker_order_id), e.qty, seq)
            maker_side = "sell" if e.taker_side == "buy" else "buy"
            _level(w, (m, maker_side, e.price), -e.qty, -1 if e.maker_remaining == 0 else 0)
            stats = w.stats.setdefault(m, [0, 0, 0])
            stats[0], stats[1], stats[2] = e.trade_id, e.price, stats[2] + e.qty
        elif isinstance(e, OrderAccepted):
            w.orders.append((
                m, e.order_id, e.account_id, e.client_order_id, e.side, e.price, e.qty, e.tif,
                seq, e.ts, seq,
            ))  # fmt: skip
            if e.resting_qty:
                _level(w, (m, e.side, e.price), e.resting_qty, 1)
        elif isinstance(e, OrderCancelled):
            w.cancels.append((e.cancelled_qty, seq, m, e.order_id))
            _level(w, (m, e.side, e.price), -e.cancelled_qty, -1)
        elif isinstance(e, Rejected):
            w.rejections.append((
                seq, e.cmd_seq, e.ts, m, e.account_id, e.command_type, e.client_order_id, e.order_id,
                e.reason, e.detail,
            ))  # fmt: skip
        elif isinstance(e, MarketCreated):
            w.markets.append((m, e.base, e.quote, seq, e.ts))
        elif isinstance(e, Checkpoint):
            pass  # the engine's self-check; nothing to show
        else:
            raise TypeError(f"read model cannot fold {type(e).__name__}")
    return w


SCHEMA = resources.files("projections").joinpath("schema.sql").read_text()
NAME = "read_model"


def write(con: sqlite3.Connection, w: Writes, name: str = NAME) -> None:
    """Run one batch's row changes and its new position on `con`, inside the caller's transaction.

    Shared by the live worker (one transaction per batch) and `replay rebuild`
    (a fresh file, large transactions), so both write exactly the same rows.
    """
    if w.markets:
        con.executemany(
            "INSERT INTO markets (market_id, base, quote, created_seq, created_ts) VALUES (?,?,?,?,?)", w.markets
        )
    if w.orders:
        con.executemany(
            "INSERT INTO orders (market_id, order_id, account_id, client_order_id, side, price, qty,"
            " tif, created_seq, created_ts, updated_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            w.orders,
        )
    if w.trades:
        con.executemany("INSERT INTO trades VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", w.trades)
    if w.filled:
        con.executemany(
            "UPDATE orders SET filled_qty = filled_qty + ?, updated_seq = ? WHERE market_id = ? AND order_id = ?",
            [(q, s, m, o) for (m, o), (q, s) in w.filled.items()],
        )
    if w.cancels:
        con.executemany(
            "UPDATE orders SET cancelled_qty = cancelled_qty + ?, updated_seq = MAX(updated_seq, ?)"
            " WHERE market_id = ? AND order_id = ?",
            w.cancels,
        )
    if w.stats:
        con.executemany(
            "UPDATE markets SET last_trade_id = ?, last_price = ?, volume = volume + ? WHERE market_id = ?",
            [(t, p, v, m) for m, (t, p, v) in w.stats.items()],
        )
    if w.levels:
        rows = [(m, s, p, q, n) for (m, s, p), (q, n) in w.levels.items()]
        con.executemany(
            "INSERT INTO book_levels VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE"
            " SET qty = qty + excluded.qty, orders = orders + excluded.orders",
            rows,
        )
        con.executemany(
            "DELETE FROM book_levels WHERE market_id = ? AND side = ? AND price = ? AND qty <= 0",
            [r[:3] for r in rows],
        )
    if w.rejections:
        con.executemany("INSERT INTO rejections VALUES (?,?,?,?,?,?,?,?,?,?)", w.rejections)
    set_position(con, w.last_seq, name)


def set_position(con: sqlite3.Connection, seq: int, name: str = NAME) -> None:
    con.execute(
        "INSERT INTO projection_position VALUES (?, 'JB_EVT', ?)"
        " ON CONFLICT DO UPDATE SET last_seq = excluded.last_seq",
        (name, seq),
    )


def get_position(con: sqlite3.Connection, name: str = NAME) -> int:
    row = con.execute("SELECT last_seq FROM projection_position WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Used only from the model's own thread; check_same_thread is off because that thread is not this one.
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.executescript(SCHEMA)
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

    async def position(self) -> int:
        return await self._run(get_position, self.con, self.NAME)

    def _commit(self, w: Writes) -> int:
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            write(con, w, self.NAME)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return w.last_seq

    async def apply(self, batch: list[tuple[int, Event]]) -> int:
        """Fold a batch into the database in one transaction; returns the new position."""
        return await self._run(self._commit, plan(batch))

    async def close(self) -> None:
        try:
            await self._run(self.con.close)
        finally:
            self._executor.shutdown(wait=False)
