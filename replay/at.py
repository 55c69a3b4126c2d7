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
from typing import Any, TypedDict

from events.logged import LogCheck, decode_chunk
from events.stream_readers import last_seq as stream_last_seq
from events.stream_readers import read_range
from projections import queries
from projections.read_model import ReadModel
from protocol.subjects import EVT_STREAM
from replay.fold import plan_checked
from replay.rebuild import RebuildError


class OpenOrder(TypedDict):
    """The columns `replay at` shows of an open order (its JSON keys, in this order)."""

    market_id: str
    runner: str
    order_id: int
    account_id: str
    client_order_id: str
    side: str
    price: int | None
    qty: int
    filled_qty: int
    open_qty: int
    status: str
    created_seq: int


def _open(o: queries.Order) -> OpenOrder:
    return OpenOrder(
        market_id=o["market_id"], runner=o["runner"], order_id=o["order_id"], account_id=o["account_id"],
        client_order_id=o["client_order_id"], side=o["side"], price=o["price"], qty=o["qty"],
        filled_qty=o["filled_qty"], open_qty=o["open_qty"], status=o["status"], created_seq=o["created_seq"],
    )  # fmt: skip


@dataclass(slots=True)
class View:
    """The read model's answers at one position; the same queries work on the live file."""

    seq: int
    top: list[queries.Top] = field(default_factory=list)
    open_orders: list[OpenOrder] = field(default_factory=list)
    positions: list[queries.Position] = field(default_factory=list)
    at: dict[str, int] | None = None  # a sharded venue: the position of every shard stream (seq is then 0)

    def as_json(self) -> dict[str, Any]:
        out = {"seq": self.seq, "top": self.top, "open_orders": self.open_orders, "positions": self.positions}
        return out if self.at is None else {**out, "at": self.at}


def query(con: sqlite3.Connection, seq: int, market: str | None = None) -> View:
    with queries.reading(con):
        return View(
            seq,
            queries.top_of_book(con, market),
            [_open(o) for o in queries.orders(con, market)],
            queries.positions(con, market),
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


async def fold_shards_to(js: Any, at: dict[str, int]) -> sqlite3.Connection:
    """An in-memory read model of a sharded venue with each shard stream JB_EVT_k folded to `at[JB_EVT_k]`.

    Each shard is folded on its own (its own LogCheck, its own position row), like the live worker does.
    """
    con = sqlite3.connect(":memory:", isolation_level=None)
    con.executescript(ReadModel.SCHEMA)
    for stream, seq in at.items():
        tail = await stream_last_seq(js, stream)
        if seq < 0 or seq > tail:
            raise RebuildError(f"{stream}={seq} is outside {stream} (1..{tail})")
        check = LogCheck(0)
        name = queries.position_name(ReadModel.NAME, stream, len(at))
        async for chunk in read_range(js, stream, 1, seq):
            writes = plan_checked(ReadModel, decode_chunk(chunk, check), chunk.subjects)
            writes.stream = stream
            con.execute("BEGIN")
            ReadModel.write(con, writes, name)
            con.execute("COMMIT")
    return con


async def state_at(js: Any, seq: int, market: str | None = None, at: dict[str, int] | None = None) -> View:
    """As of JB_EVT `seq`; with shards, as of every shard stream's position in `at` (every shard named)."""
    con = await (fold_to(js, seq) if at is None else fold_shards_to(js, at))
    try:
        view = query(con, seq if at is None else 0, market)
        view.at = at
        return view
    finally:
        con.close()


def parse_at(text: str, streams: list[str]) -> dict[str, int]:
    """`--at JB_EVT_0=120,JB_EVT_1=88` (every shard stream, once each) as {stream: seq}."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        stream, _, seq = item.partition("=")
        # ASCII digits only: str.isdigit also takes superscripts and other scripts' digits, which int() refuses
        if stream not in streams or not (seq.isascii() and seq.isdigit()) or stream in out:
            raise ValueError(f"--at: {item!r} is not <stream>=<seq> for one of {', '.join(streams)}")
        out[stream] = int(seq)
    if set(out) != set(streams):
        raise ValueError(f"--at needs every shard stream: {', '.join(streams)}")
    return {s: out[s] for s in streams}


def render(view: View) -> list[str]:
    """The plain-text answer of `jetbook replay at`."""
    where = f"JB_EVT seq {view.seq}" if view.at is None else ", ".join(f"{s} seq {q}" for s, q in view.at.items())
    lines = [f"as of {where}", "", "top of book:"]
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
