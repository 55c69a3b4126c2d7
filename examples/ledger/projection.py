"""The ledger's read model: balances, transfers and rejections in SQLite, folded from LEDGER_EVT.

A projection in the machinery's shape (docs/FRAMEWORK.md): a `SCHEMA`, a
`plan` that turns a batch of (sequence, event) into row changes without
touching the database, and a `write` that runs them, and the new position, in
the caller's transaction. The live worker and `replay rebuild` both call these
two, so a rebuilt file holds exactly the rows the live one does; and no row
depends on where batches were cut, so neither does a hash of the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from examples.ledger.domain import AccountOpened, Checkpoint, Deposited, Event, Rejected, Transferred

NAME: Final = "ledger_balances"
EVT_STREAM: Final = "LEDGER_EVT"

SCHEMA: Final = """

CREATE TABLE IF NOT EXISTS projection_position (
    name      TEXT PRIMARY KEY,
    stream    TEXT NOT NULL,
    last_seq  INTEGER NOT NULL   -- the last LEDGER_EVT sequence folded in, written with the rows
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS accounts (
    account          TEXT PRIMARY KEY,
    overdraft_limit  INTEGER NOT NULL,
    balance          INTEGER NOT NULL DEFAULT 0,
    opened_seq       INTEGER NOT NULL,
    updated_seq      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS transfers (
    transfer_id  TEXT PRIMARY KEY,
    payer        TEXT NOT NULL,
    payee        TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    ts           INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rejections (
    seq      INTEGER PRIMARY KEY,
    cmd_seq  INTEGER NOT NULL,
    account  TEXT NOT NULL,
    command  TEXT NOT NULL,
    reason   TEXT NOT NULL,
    detail   TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS transfers_by_payer ON transfers (payer, seq);
"""


@dataclass(slots=True)
class Writes:
    """One batch's row changes, planned in memory."""

    opened: list[tuple[str, int, int, int]] = field(default_factory=list)  # account, limit, seq, seq
    balances: dict[str, tuple[int, int]] = field(default_factory=dict)  # account -> (balance, seq), last wins
    transfers: list[tuple[str, str, str, int, int, int]] = field(default_factory=list)
    rejections: list[tuple[int, int, str, str, str, str]] = field(default_factory=list)
    last_seq: int = 0


def plan(batch: Iterable[tuple[int, Event]]) -> Writes:
    w = Writes()
    for seq, e in batch:
        if isinstance(e, AccountOpened):
            w.opened.append((e.account, e.overdraft_limit, seq, seq))
        elif isinstance(e, Deposited):
            w.balances[e.account] = (e.balance, seq)
        elif isinstance(e, Transferred):
            w.balances[e.payer] = (e.payer_balance, seq)
            w.balances[e.payee] = (e.payee_balance, seq)
            w.transfers.append((e.transfer_id, e.payer, e.payee, e.amount, seq, e.ts))
        elif isinstance(e, Rejected):
            w.rejections.append((seq, e.cmd_seq, e.account, e.command, e.reason, e.detail))
        elif not isinstance(e, Checkpoint):
            raise TypeError(f"{NAME} cannot fold {type(e).__name__}")
        w.last_seq = seq
    return w


def write(con: sqlite3.Connection, w: Writes, name: str = NAME) -> None:
    """The batch's rows and its new position, inside the caller's transaction."""
    if w.opened:
        con.executemany(
            "INSERT INTO accounts (account, overdraft_limit, opened_seq, updated_seq) VALUES (?,?,?,?)", w.opened
        )
    if w.balances:
        cur = con.executemany(
            "UPDATE accounts SET balance = ?, updated_seq = ? WHERE account = ?",
            [(balance, seq, account) for account, (balance, seq) in w.balances.items()],
        )
        if cur.rowcount != len(w.balances):
            raise ValueError("a balance of an account this model never saw opened (a rebuild --from-seq?)")
    if w.transfers:
        con.executemany("INSERT INTO transfers VALUES (?,?,?,?,?,?)", w.transfers)
    if w.rejections:
        con.executemany("INSERT INTO rejections VALUES (?,?,?,?,?,?)", w.rejections)
    con.execute(
        "INSERT INTO projection_position VALUES (?, ?, ?)"
        " ON CONFLICT DO UPDATE SET stream = excluded.stream, last_seq = excluded.last_seq",
        (name, EVT_STREAM, w.last_seq),
    )


class Balances:
    """The projection as the machinery takes it (replay/fold.py's SqliteProjection)."""

    NAME = NAME
    SCHEMA = SCHEMA
    plan = staticmethod(plan)
    write = staticmethod(write)


# --- reads ----------------------------------------------------------------------------------------


def balances(con: sqlite3.Connection) -> dict[str, int]:
    return {a: b for a, b in con.execute("SELECT account, balance FROM accounts ORDER BY account")}


def transfers(con: sqlite3.Connection) -> list[tuple[str, str, str, int]]:
    rows = con.execute("SELECT transfer_id, payer, payee, amount FROM transfers ORDER BY seq").fetchall()
    return [(str(t), str(p), str(q), int(a)) for t, p, q, a in rows]


def position(con: sqlite3.Connection, name: str = NAME) -> int:
    row = con.execute("SELECT last_seq FROM projection_position WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0
