"""Every read of the read model, and its position: the one place that knows the tables' columns for readers.

Plain functions over an `sqlite3.Connection`, so the live file, a read-only
copy, `replay at`'s in-memory model and the coming query service all ask the
same questions the same way. Amounts are the stored integers (never a float),
and every query has an ORDER BY, so the same rows always come back in the
same order and an answer can be compared, hashed or paged.

The position (the last JB_EVT sequence folded in) is written by the projection
in the same transaction as the rows. `at` reads it and the rows in one read
transaction, so an answer carries the position it reflects: in WAL mode a
reader sees one commit, whatever the worker commits meanwhile.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, NotRequired, TypedDict, TypeVar, cast

from protocol.odds import IMPLIED_SIDE, implied_price, implied_qty
from protocol.subjects import EVT_STREAM

T = TypeVar("T")

READ_MODEL = "read_model"  # the read model's name in projection_position

OPEN = ("open", "partially_filled")  # the statuses of an order that still rests
COMPLETED = ("filled", "cancelled")


# --- the position ---------------------------------------------------------------------------------


def position(con: sqlite3.Connection, name: str = READ_MODEL) -> int:
    """The last JB_EVT sequence folded in (0 before the first commit). sqlite3.Error when the file has no model."""
    row = con.execute("SELECT last_seq FROM projection_position WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def position_name(name: str, stream: str, streams: int) -> str:
    """The projection_position row of `stream`: the projection's own name when it follows one stream (so a
    one-shard file is the file of before), "<name>@<stream>" for each of several (a sharded venue)."""
    return name if streams == 1 else f"{name}@{stream}"


def stream_positions(con: sqlite3.Connection, name: str = READ_MODEL) -> dict[str, int]:
    """Every stream's position {stream: last seq}, in stream-name order: one row for one shard, one per shard else."""
    rows = con.execute(
        "SELECT stream, last_seq FROM projection_position WHERE name = ? OR name LIKE ? ESCAPE '\\'"
        " ORDER BY length(stream), stream",
        (name, name.replace("_", "\\_") + "@%"),
    ).fetchall()
    return {str(stream): int(seq) for stream, seq in rows}


def set_position(con: sqlite3.Connection, seq: int, name: str = READ_MODEL, stream: str = EVT_STREAM) -> None:
    """Inside the caller's transaction, with the rows that bring the model to `seq`."""
    con.execute(
        "INSERT INTO projection_position VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET last_seq = excluded.last_seq",
        (name, stream, seq),
    )


@contextmanager
def reading(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every query inside sees the same commit. Inside a caller's transaction, that one."""
    if con.in_transaction:
        yield con
        return
    con.execute("BEGIN")
    try:
        yield con
    finally:
        con.execute("COMMIT")  # nothing was written: ends the read snapshot


@dataclass(frozen=True, slots=True)
class At(Generic[T]):
    """An answer and the JB_EVT position it reflects."""

    at_seq: int
    value: T


def at(con: sqlite3.Connection, read: Callable[[sqlite3.Connection], T], name: str = READ_MODEL) -> At[T]:
    """`read(con)` and the position, from the same commit: `at(con, lambda c: orders(c, "ETH-USDC"))`."""
    with reading(con):
        seq = position(con, name)
        return At(seq, read(con))


def _rows(con: sqlite3.Connection, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    """Rows as dicts keyed by the SELECT's column names, in its order (what each TypedDict below declares)."""
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _in(values: Collection[str]) -> str:
    return ", ".join("?" * len(values))


# --- markets --------------------------------------------------------------------------------------


class Runner(TypedDict):
    runner_id: str
    label: str


class Market(TypedDict):
    market_id: str
    kind: str  # pair | odds
    base: str
    quote: str
    state: str
    phase: str
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int
    min_price: int
    max_price: int
    band_bps: int
    book_type: str  # multi_runner | two_runner (odds; pairs say multi_runner)
    last_trade_id: int  # 0: no trade yet
    last_price: int | None
    volume: int
    created_seq: int
    state_seq: int | None
    settled_winner: str | None
    settled_price: int | None
    runners: list[Runner]  # by the event that added them, then by id (the table keeps no finer order); [] in pairs


_MARKET = (
    "SELECT market_id, kind, base, quote, state, phase, tick_size, lot_size, min_qty, max_qty, min_price, max_price,"
    " band_bps, book_type, last_trade_id, last_price, volume, created_seq, state_seq, settled_winner, settled_price"
    " FROM markets"
)


def markets(con: sqlite3.Connection) -> list[Market]:
    runners: dict[str, list[Runner]] = {}
    for m, r, label in con.execute(
        "SELECT market_id, runner_id, label FROM runners ORDER BY market_id, added_seq, runner_id"
    ).fetchall():
        runners.setdefault(m, []).append(Runner(runner_id=r, label=label))
    rows = _rows(con, _MARKET + " ORDER BY market_id")
    return [cast(Market, {**row, "runners": runners.get(row["market_id"], [])}) for row in rows]


def market(con: sqlite3.Connection, market_id: str) -> Market | None:
    rows = _rows(con, _MARKET + " WHERE market_id = ? ORDER BY market_id", (market_id,))
    if not rows:
        return None
    runners = [
        Runner(runner_id=r, label=label)
        for r, label in con.execute(
            "SELECT runner_id, label FROM runners WHERE market_id = ? ORDER BY added_seq, runner_id", (market_id,)
        ).fetchall()
    ]
    return cast(Market, {**rows[0], "runners": runners})


# --- the book -------------------------------------------------------------------------------------


class Top(TypedDict):
    """Best bid and ask of one book; for odds the bid is the best lay and the ask the best back. None: empty side."""

    market_id: str
    runner: str  # '' in pair markets
    bid_price: int | None
    bid_qty: int | None
    ask_price: int | None
    ask_qty: int | None


def top_of_book(con: sqlite3.Connection, market_id: str | None = None) -> list[Top]:
    """Every book's best prices (one per pair market, one per runner of an odds market)."""
    sql = (
        "SELECT market_id, runner, bid_price, bid_qty, ask_price, ask_qty FROM top_of_book"
        " WHERE (:market IS NULL OR market_id = :market) ORDER BY market_id, runner"
    )
    return cast(list[Top], _rows(con, sql, {"market": market_id}))


class Level(TypedDict):
    price: int
    qty: int  # resting quantity at this price (direct: orders on this book)
    orders: int
    # two_runner markets only (every level there has it, 0 if none): whole units the other runner's orders
    # offer here through the implied price, shown at the quoting rule's tick (protocol/odds.py)
    implied_qty: NotRequired[int]


class Ladder(TypedDict):
    """One book, best price first on each side."""

    runner: str  # '' in pair markets
    label: str
    bid_side: str  # buy | lay
    ask_side: str  # sell | back
    bids: list[Level]
    asks: list[Level]


def _sides(kind: str) -> tuple[str, str]:
    return ("buy", "sell") if kind == "pair" else ("lay", "back")


def _ladder(con: sqlite3.Connection, market_id: str, runner: str, label: str, kind: str, depth: int) -> Ladder:
    bid_side, ask_side = _sides(kind)
    q = (
        "SELECT price, qty, orders FROM book_levels WHERE market_id = ? AND runner = ? AND side = ?"
        " ORDER BY price {} LIMIT ?"
    )
    asks = _rows(con, q.format("ASC"), (market_id, runner, ask_side, depth))
    bids = _rows(con, q.format("DESC"), (market_id, runner, bid_side, depth))
    return Ladder(
        runner=runner, label=label, bid_side=bid_side, ask_side=ask_side,
        bids=cast(list[Level], bids), asks=cast(list[Level], asks),
    )  # fmt: skip


def book(con: sqlite3.Connection, market_id: str, depth: int = 10, runner: str | None = None) -> list[Ladder]:
    """The ladder of each book of a market, `depth` levels a side (negative: all); [] for no such market.

    `runner` picks one runner of an odds market; a pair market has one book and ignores it.
    """
    m = market(con, market_id)
    return [] if m is None else _ladders(con, m, depth, runner)


def _ladders(con: sqlite3.Connection, m: Market, depth: int, runner: str | None) -> list[Ladder]:
    if m["kind"] == "pair":
        return [_ladder(con, m["market_id"], "", "", m["kind"], depth)]
    ladders = [
        _ladder(con, m["market_id"], r["runner_id"], r["label"], m["kind"], depth)
        for r in m["runners"]
        if runner is None or r["runner_id"] == runner
    ]
    if m["book_type"] == "two_runner" and len(m["runners"]) == 2:
        ids = [r["runner_id"] for r in m["runners"]]
        for lad in ladders:
            other = ids[1 - ids.index(lad["runner"])]
            lad["bids"] = _with_implied(con, m["market_id"], other, "back", lad["bids"], depth)  # its backs: lays here
            lad["asks"] = _with_implied(con, m["market_id"], other, "lay", lad["asks"], depth)  # its lays: backs here
    return ladders


def _with_implied(
    con: sqlite3.Connection, market_id: str, other: str, other_side: str, direct: list[Level], depth: int
) -> list[Level]:
    """`direct` (this runner's best `depth` levels of one side) merged with the other runner's `other_side` shown
    here as `implied_qty`, best first, `depth` levels.

    The best `depth` direct levels are enough: a direct level past them has `depth` better ones. The other
    runner's levels are read best first (its best back is the best implied lay here: the conversion keeps the
    order), until `depth` implied prices are complete; several of its prices can round to one tick here.
    """
    merged = {lv["price"]: Level(price=lv["price"], qty=lv["qty"], orders=lv["orders"], implied_qty=0) for lv in direct}
    order = "ASC" if other_side == "back" else "DESC"
    rows = con.execute(
        f"SELECT price, qty FROM book_levels WHERE market_id = ? AND runner = ? AND side = ? ORDER BY price {order}",
        (market_id, other, other_side),
    )
    implied: dict[int, int] = {}  # protocol.odds.implied_levels, cut short
    for price, qty in rows:
        p, q = implied_price(other_side, price), implied_qty(price, qty)
        if p is None or q <= 0:
            continue
        if p not in implied and len(implied) == depth:
            break  # the first price past the `depth`-th: the rest are worse
        implied[p] = implied.get(p, 0) + q
    for price, qty in implied.items():
        merged.setdefault(price, Level(price=price, qty=0, orders=0, implied_qty=0))["implied_qty"] = qty
    best_first = IMPLIED_SIDE[other_side] == "lay"  # bids: the highest price first
    levels = sorted(merged.values(), key=lambda lv: -lv["price"] if best_first else lv["price"])
    return levels if depth < 0 else levels[:depth]


class Snapshot(TypedDict):
    """A market as a screen shows it: its state, phase, runners and last trade, and a ladder per book."""

    market: Market
    ladders: list[Ladder]


def snapshot(con: sqlite3.Connection, market_id: str, depth: int = 10, runner: str | None = None) -> Snapshot | None:
    m = market(con, market_id)
    return None if m is None else Snapshot(market=m, ladders=_ladders(con, m, depth, runner))


class BookLevel(TypedDict):
    market_id: str
    runner: str
    side: str
    price: int
    qty: int
    orders: int


def book_levels(con: sqlite3.Connection, market_id: str | None = None) -> list[BookLevel]:
    """Every resting level as stored (a check against another fold of the same log)."""
    sql = (
        "SELECT market_id, runner, side, price, qty, orders FROM book_levels"
        " WHERE (:market IS NULL OR market_id = :market) ORDER BY market_id, runner, side, price"
    )
    return cast(list[BookLevel], _rows(con, sql, {"market": market_id}))


# --- orders ---------------------------------------------------------------------------------------


class Order(TypedDict):
    market_id: str
    order_id: int
    account_id: str
    client_order_id: str
    runner: str  # '' in pair markets
    side: str
    order_type: str
    price: int | None  # the newest limit price; None: a market order without protection
    qty: int  # original, plus what amends added
    filled_qty: int
    cancelled_qty: int
    open_qty: int
    status: str  # open | partially_filled | filled | cancelled
    tif: str
    stp: str
    persistence: str
    amends: int
    created_seq: int
    created_ts: int
    updated_seq: int


_ORDER = (
    "SELECT market_id, order_id, account_id, client_order_id, runner, side, order_type, price, qty, filled_qty,"
    " cancelled_qty, open_qty, status, tif, stp, persistence, amends, created_seq, created_ts, updated_seq FROM orders"
)


def _order_filter(
    market_id: str | None, account_id: str | None, status: Collection[str] | None
) -> tuple[str, list[Any]]:
    where, params = ["1"], []
    if market_id is not None:
        where.append("market_id = ?")
        params.append(market_id)
    if account_id is not None:
        where.append("account_id = ?")
        params.append(account_id)
    if status is not None:
        status = sorted(status)
        where.append(f"status IN ({_in(status)})")
        params += status
    return " WHERE " + " AND ".join(where), params


def orders(
    con: sqlite3.Connection,
    market_id: str | None = None,
    *,
    account_id: str | None = None,
    status: Collection[str] | None = OPEN,
    limit: int = -1,
) -> list[Order]:
    """Orders by market and order id; open ones unless `status` says otherwise (None: every status)."""
    where, params = _order_filter(market_id, account_id, status)
    return cast(list[Order], _rows(con, f"{_ORDER}{where} ORDER BY market_id, order_id LIMIT ?", [*params, limit]))


def order_count(
    con: sqlite3.Connection,
    market_id: str | None = None,
    *,
    account_id: str | None = None,
    status: Collection[str] | None = OPEN,
) -> int:
    where, params = _order_filter(market_id, account_id, status)
    (n,) = con.execute(f"SELECT COUNT(*) FROM orders{where}", params).fetchone()
    return int(n)


def order(
    con: sqlite3.Connection,
    market_id: str,
    *,
    order_id: int | None = None,
    account_id: str | None = None,
    client_order_id: str | None = None,
) -> Order | None:
    """One order, by its id, or by its account's client_order_id (unique in a market for the market's life)."""
    if order_id is not None:
        sql, params = f"{_ORDER} WHERE market_id = ? AND order_id = ?", [market_id, order_id]
    elif account_id is not None and client_order_id is not None:
        sql = f"{_ORDER} WHERE market_id = ? AND account_id = ? AND client_order_id = ?"
        params = [market_id, account_id, client_order_id]
    else:
        raise ValueError("order: give order_id, or account_id and client_order_id")
    rows = _rows(con, sql + " ORDER BY order_id LIMIT 1", params)
    return cast(Order, rows[0]) if rows else None


def completed_orders(
    con: sqlite3.Connection, market_id: str, account_id: str | None = None, limit: int = 100
) -> list[Order]:
    """Filled and cancelled orders, the most recently completed first."""
    where, params = _order_filter(market_id, account_id, COMPLETED)
    sql = f"{_ORDER}{where} ORDER BY updated_seq DESC, order_id DESC LIMIT ?"
    return cast(list[Order], _rows(con, sql, [*params, limit]))


# --- fills ----------------------------------------------------------------------------------------


class Trade(TypedDict):
    market_id: str
    trade_id: int
    runner: str
    price: int
    qty: int
    taker_side: str
    maker_order_id: int
    taker_order_id: int
    maker_account: str
    taker_account: str
    maker_client_order_id: str
    taker_client_order_id: str
    seq: int  # JB_EVT sequence of the fill event
    cmd_seq: int
    ts: int
    # two_runner implied fills (PROTOCOL 11.1); on a direct fill False and None. `runner` is the taker's,
    # `price` the maker's odds on maker_runner; maker_qty what the maker's order gave up; stakes in hundredths.
    implied: bool
    maker_runner: str | None
    maker_qty: int | None
    maker_stake: int | None
    taker_stake: int | None


_TRADE = (
    "SELECT market_id, trade_id, runner, price, qty, taker_side, maker_order_id, taker_order_id, maker_account,"
    " taker_account, maker_client_order_id, taker_client_order_id, seq, cmd_seq, ts, implied, maker_runner,"
    " maker_qty, maker_stake, taker_stake FROM trades"
)


def fills(
    con: sqlite3.Connection, market_id: str, *, account_id: str | None = None, from_seq: int = 0, limit: int = -1
) -> list[Trade]:
    """A market's trades from JB_EVT `from_seq` on (inclusive), oldest first; with `account_id`, its side of either."""
    sql = f"{_TRADE} WHERE market_id = ? AND seq >= ?"
    params: list[Any] = [market_id, from_seq]
    if account_id is not None:
        sql += " AND (maker_account = ? OR taker_account = ?)"
        params += [account_id, account_id]
    rows = _rows(con, sql + " ORDER BY seq, trade_id LIMIT ?", [*params, limit])
    for row in rows:
        row["implied"] = bool(row["implied"])  # stored 0/1: SQLite has no boolean
    return cast(list[Trade], rows)


# --- positions and risk ---------------------------------------------------------------------------


class Position(TypedDict):
    """Pairs (runner ''): net quantity and cash (price x qty). Odds, per runner: P&L x100 if it wins / loses."""

    market_id: str
    account_id: str
    runner: str
    net_qty: int
    cash: int
    if_win: int
    if_lose: int


def positions(con: sqlite3.Connection, market_id: str | None = None, account_id: str | None = None) -> list[Position]:
    sql = (
        "SELECT market_id, account_id, runner, net_qty, cash, if_win, if_lose FROM positions"
        " WHERE (:market IS NULL OR market_id = :market) AND (:account IS NULL OR account_id = :account)"
        " ORDER BY market_id, account_id, runner"
    )
    return cast(list[Position], _rows(con, sql, {"market": market_id, "account": account_id}))


class RunnerPnl(TypedDict):
    runner: str
    pnl: int  # hundredths of a stake, if this runner wins


class Risk(TypedDict):
    """One account in one market: what it holds, what it has open, what it made, and its limits (None: none)."""

    market_id: str
    account_id: str
    net_qty: int  # pairs; 0 in odds markets
    cash: int  # pairs; 0 in odds markets
    open_orders: int
    open_exposure: int  # the engine's measure: notional for pairs; a back's stake, a lay's liability x100 for odds
    realised_pnl: int | None  # from market_settled; None until the market settles
    if_wins: list[RunnerPnl]  # odds: P&L if each runner wins, in runner order; [] in pairs
    max_order_qty: int | None
    max_open_orders: int | None
    max_open_exposure: int | None


def risk(con: sqlite3.Connection, market_id: str, account_id: str | None = None) -> list[Risk]:
    """Each account with a position, an open order, a settlement or a limit in the market, by account."""
    m = market(con, market_id)
    if m is None:
        return []
    acct = {"market": market_id, "account": account_id}
    mine = "market_id = :market AND (:account IS NULL OR account_id = :account)"
    exposure = "price * open_qty" if m["kind"] == "pair" else (
        "CASE side WHEN 'back' THEN open_qty * 100 ELSE open_qty * (price - 100) END"
    )  # fmt: skip
    open_by = _open_by(con, exposure, mine, acct)
    held: dict[str, list[Position]] = {}
    for p in positions(con, market_id, account_id):
        held.setdefault(p["account_id"], []).append(p)
    settled = dict(
        con.execute(f"SELECT account_id, pnl FROM settlements WHERE {mine} ORDER BY account_id", acct).fetchall()
    )
    limits = {
        row[0]: row[1:]
        for row in con.execute(
            f"SELECT account_id, max_order_qty, max_open_orders, max_open_exposure FROM risk_limits WHERE {mine}"
            " ORDER BY account_id",
            acct,
        ).fetchall()
    }
    pair = m["kind"] == "pair"
    out: list[Risk] = []
    for a in sorted(held.keys() | open_by.keys() | settled.keys() | limits.keys()):
        pos = held.get(a, [])  # one row per runner
        n, x = open_by.get(a, (0, 0))
        if_wins = [
            RunnerPnl(
                runner=r["runner_id"], pnl=sum(p["if_win" if p["runner"] == r["runner_id"] else "if_lose"] for p in pos)
            )
            for r in m["runners"]
        ]
        mx = limits.get(a, (None, None, None))
        out.append(Risk(
            market_id=market_id, account_id=a,
            net_qty=sum(p["net_qty"] for p in pos) if pair else 0, cash=sum(p["cash"] for p in pos) if pair else 0,
            open_orders=n, open_exposure=x, realised_pnl=settled.get(a), if_wins=if_wins,
            max_order_qty=mx[0], max_open_orders=mx[1], max_open_exposure=mx[2],
        ))  # fmt: skip
    return out


def _open_by(con: sqlite3.Connection, exposure: str, mine: str, acct: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """account -> (open orders, open exposure)."""
    rows = con.execute(
        f"SELECT account_id, COUNT(*), COALESCE(SUM({exposure}), 0) FROM orders WHERE {mine}"
        " AND status IN ('open', 'partially_filled') GROUP BY account_id ORDER BY account_id",
        acct,
    ).fetchall()
    return {a: (int(n), int(x)) for a, n, x in rows}


# --- counts ---------------------------------------------------------------------------------------


class Counts(TypedDict):
    """How many rows each table holds (a debug view, and the benchmark's check against its own fold)."""

    markets: int
    runners: int
    orders: int
    open_orders: int
    cancelled_orders: int
    trades: int
    book_levels: int
    positions: int
    rejections: int


def counts(con: sqlite3.Connection) -> Counts:
    (row,) = _rows(
        con,
        "SELECT (SELECT COUNT(*) FROM markets) AS markets, (SELECT COUNT(*) FROM runners) AS runners,"
        " (SELECT COUNT(*) FROM orders) AS orders,"
        " (SELECT COUNT(*) FROM orders WHERE status IN ('open', 'partially_filled')) AS open_orders,"
        " (SELECT COUNT(*) FROM orders WHERE status = 'cancelled') AS cancelled_orders,"
        " (SELECT COUNT(*) FROM trades) AS trades, (SELECT COUNT(*) FROM book_levels) AS book_levels,"
        " (SELECT COUNT(*) FROM positions) AS positions, (SELECT COUNT(*) FROM rejections)"
        " + (SELECT COUNT(*) FROM shard_rejections) AS rejections",
    )
    return cast(Counts, row)
