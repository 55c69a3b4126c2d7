"""Implied matching on a real nats-server: a two_runner market's log re-decides to its bytes, and folds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from events.model import Fill, decode
from events.stream_readers import last_seq
from projections import queries
from protocol.subjects import EVT_STREAM
from tests.conftest import wait_until
from tests.integration.harness import (
    assert_log_is_exact,
    projection_position,
    publish_all,
    running_engine,
    running_projection,
    wait_for_command,
)


def _cmd(subject: str, body: dict[str, Any]) -> tuple[str, bytes]:
    return subject, bytes(msgpack.packb(body))


async def test_an_implied_fill_is_logged_re_decided_and_folded(nc: Any, js: Any, tmp_path: Path) -> None:
    runners = [{"runner_id": "A", "label": "Player 1"}, {"runner_id": "B", "label": "Player 2"}]
    commands = [
        _cmd("jb.ctl.T", {"type": "create_market", "market_id": "T", "kind": "odds", "quote": "GBP",
                          "runners": runners, "book_type": "two_runner"}),
        # a back on B at 2.50 is a lay on A at 2.50/1.50 = 1.666...: a back on A at 1.60 (asking less) crosses it
        _cmd("jb.cmd.T.maker", {"type": "place_order", "client_order_id": "m", "runner": "B", "side": "back",
                                "price": 250, "qty": 10}),
        _cmd("jb.cmd.T.taker", {"type": "place_order", "client_order_id": "t", "runner": "A", "side": "back",
                                "price": 160, "qty": 10}),
    ]  # fmt: skip
    db = tmp_path / "rm.db"
    last = await publish_all(js, commands)
    async with running_engine(nc), running_projection(js, db):
        await wait_for_command(js, last)
        end = await last_seq(js, EVT_STREAM)
        await wait_until(lambda: _at(db, end), what="the projection to fold the implied fill")
    stored = await assert_log_is_exact(js)  # JB_CMD re-decided gives JB_EVT, byte for byte
    fills = [e for e in (decode(m.data) for m in stored) if isinstance(e, Fill)]
    assert fills and all(f.implied and f.maker_runner == "B" for f in fills), [decode(m.data) for m in stored]
    import sqlite3

    con = sqlite3.connect(db)
    answer = queries.at(con, lambda c: queries.risk(c, "T", None))
    con.close()
    accounts = {row["account_id"] for row in answer.value}
    assert {"maker", "taker"} <= accounts, answer.value


async def _at(db: Path, end: int) -> bool:
    return projection_position(db) == end
