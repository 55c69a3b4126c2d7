"""Time travel: the book, open orders and positions as they were right after JB_EVT event N.

Events 1..N are folded into an in-memory SQLite copy of the read model (the
same `plan` and `write` as the live worker, so the answer is what the live
model said when its position was N), then queried. Positions are the read
model's: on a pair market, net quantity and cash per account from the trades
(a buy adds qty and pays price x qty, a sell the opposite, taker and maker
alike); on an odds market, P&L per runner if it wins or loses.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

from events.reader import LogCheck, read_range
from events.reader import last_seq as stream_last_seq
from projections.read_model import ReadModel
from protocol.subjects import EVT_STREAM
from replay.fold import decode_chunk, plan_checked
from replay.rebuild import RebuildError

POSITIONS_SQL = """
SELECT market_id, account_id, runner, net_qty, cash, if_win, if_lose FROM positions
WHERE (:market IS NULL OR market_id = :market) ORDER BY market_id, account_id, runner
"""

TOP_SQL = """
SELECT market_id, runner, bid_price, bid_qty, ask_price, ask_qty FROM top_of_book
WHERE (:market IS NULL OR market_id = :market) ORDER BY market_id, runner
"""

OPEN_ORDERS_SQL = """
SELECT market_id, runner, order_id, account_id, client_order_id, side, price, qty, filled_qty, open_qty, status,
       created_seq
FROM orders WHERE status IN ('open', 'partially_filled') AND (:market IS NULL OR market_id = :market)
ORDER BY market_id, order_id
"""


@dataclass(slots=True)
class View:
    """The read model's answers at one position; the same queries work on the live file."""

    seq: int
    top: list[dict[str, Any]] = field(default_factory=list)
    open_orders: list[dict[str, Any]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "top": self.top, "open_orders": self.open_orders, "positions": self.positions}


def _rows(con: sqlite3.Connection, sql: str, market: str | None) -> list[dict[str, Any]]:
    cur = con.execute(sql, {"market": market})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def query(con: sqlite3.Connection, seq: int, market: str | None = None) -> View:
    return View(
        seq,
        _rows(con, TOP_SQL, market),
        _rows(con, OPEN_ORDERS_SQL, market),
        _rows(con, POSITIONS_SQL, market),
    )


async def fold_to(js: Any, seq: int) -> sqlite3.Connection:
    """An in-memory read model at JB_EVT position `seq`."""
    tail = await stream_last_seq(js, EVT_STREAM)
    if seq < 0 or seq > tail:
        raise RebuildError(f"--seq {seq} is outside JB_EVT (1..{tail})")
    con = sqlite3.connect(":memory:", isolation_level=None)
    con.executescript(ReadModel.SCHEMA)
    check = LogCheck(0)
    async for chunk in read_range(js, EVT_STREAM, 1, seq):
        con.execute("BEGIN")
        ReadModel.write(con, plan_checked(ReadModel, decode_chunk(chunk, check), chunk.subjects), ReadModel.NAME)
        con.execute("COMMIT")
    return con


async def state_at(js: Any, seq: int, market: str | None = None) -> View:
    con = await fold_to(js, seq)
    try:
        return query(con, seq, market)
    finally:
        con.close()


def render(view: View) -> list[str]:
    """The plain-text answer of `jetbook replay at`."""
    lines = [f"as of JB_EVT seq {view.seq}", "", "top of book:"]
    for t in view.top:
        bid = f"{t['bid_qty']} @ {t['bid_price']}" if t["bid_price"] is not None else "-"
        ask = f"{t['ask_qty']} @ {t['ask_price']}" if t["ask_price"] is not None else "-"
        book = t["market_id"] + (f"/{t['runner']}" if t["runner"] else "")
        lines.append(f"  {book:<24} bid {bid:<24} ask {ask}")
    if not view.top:
        lines.append("  (no markets)")
    lines += ["", f"open orders ({len(view.open_orders)}):"]
    for o in view.open_orders:
        lines.append(
            f"  {o['market_id']:<16} #{o['order_id']:<6} {o['account_id']:<10} {o['side']:<4} "
            f"{o['open_qty']} of {o['qty']} @ {o['price']}  ({o['status']})"
        )
    lines += ["", "positions (pairs: net qty and cash; odds: P&L x100 if the runner wins / loses):"]
    for p in view.positions:
        if p["runner"]:
            what = f"{p['runner']:<10} if wins {p['if_win']:>10}  if loses {p['if_lose']:>10}"
        else:
            what = f"net {p['net_qty']:>8}  cash {p['cash']:>14}"
        lines.append(f"  {p['market_id']:<16} {p['account_id']:<10} {what}")
    if not view.positions:
        lines.append("  (no trades)")
    return lines
