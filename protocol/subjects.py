"""Every subject, header and stream name jetbook uses, in one place.

The account a trading command acts for is the last subject token, not a payload
field, so that NATS permissions (`deploy/accounts.conf`) can bind a user to the
subjects of its own account and nothing else.

The engine publishes events on `jb.wal.<market>.<kind>`; JB_EVT takes them in,
stores them as `jb.evt.<market>.<kind>` (a stream subject transform) and, once
stored, republishes them on that subject. So everything anyone sees on
`jb.evt.>` (a JetStream consumer or a plain subscription) is committed to the
log, never a message of a refused or abandoned batch, and a stray publish to
`jb.evt.>` is not stored.
"""

from __future__ import annotations

import re
from typing import Final

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

CMD_STREAM: Final = "JB_CMD"
SNAP_BUCKET: Final = "JB_SNAP"  # object store of engine snapshots
EVT_STREAM: Final = "JB_EVT"

CMD_PREFIX: Final = "jb.cmd"
CTL_PREFIX: Final = "jb.ctl"
EVT_PREFIX: Final = "jb.evt"
WAL_PREFIX: Final = "jb.wal"  # the engine's publish side of JB_EVT; only the engine may publish here

CMD_SUBJECTS: Final = (f"{CMD_PREFIX}.>", f"{CTL_PREFIX}.>")
WAL_SUBJECTS: Final = (f"{WAL_PREFIX}.>",)  # what JB_EVT listens on
EVT_SUBJECTS: Final = (f"{EVT_PREFIX}.>",)  # what JB_EVT stores and republishes as

# A command whose subject cannot be parsed has no market to be filed under; its
# rejection goes to this reserved market token. Market ids starting with "_"
# are reserved for the system and cannot be created.
UNROUTABLE_MARKET: Final = "_invalid"
# `cancel_all` on jb.cmd._all.<account> cancels the account's orders in every market.
ALL_MARKETS: Final = "_all"

HDR_MSG_ID: Final = "Nats-Msg-Id"
HDR_EXPECTED_LAST_SEQ: Final = "Nats-Expected-Last-Sequence"
HDR_BATCH_ID: Final = "Nats-Batch-Id"
HDR_BATCH_SEQ: Final = "Nats-Batch-Sequence"
HDR_BATCH_COMMIT: Final = "Nats-Batch-Commit"
# A write of one event is a plain fenced publish, not an atomic batch (engine/commit.py); this header names it,
# as Nats-Batch-Id names a batch, so that an ambiguous write can be recognised in the log.
HDR_WRITE_ID: Final = "Jb-Write-Id"


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def cmd_subject(market_id: str, account_id: str) -> str:
    return f"{CMD_PREFIX}.{market_id}.{account_id}"


def ctl_subject(market_id: str) -> str:
    return f"{CTL_PREFIX}.{market_id}"


def evt_subject(market_id: str, kind: str) -> str:
    return f"{EVT_PREFIX}.{market_id}.{kind}"


def wal_subject(market_id: str, kind: str) -> str:
    """Where the engine publishes an event that will be stored as evt_subject(market_id, kind)."""
    return f"{WAL_PREFIX}.{market_id}.{kind}"


def evt_filter(market_id: str | None = None, kind: str | None = None) -> str:
    """A subscription filter over JB_EVT; None means every market or kind."""
    return f"{EVT_PREFIX}.{market_id or '*'}.{kind or '*'}"


# --- private and public feeds (projections/fanout.py writes them; see docs/PROTOCOL.md) --------------------
#
# JB_EVT names accounts and client order ids, so only services read it. The fan-out worker copies what
# concerns an account to jb.acct.<account>.<market>.<kind> (stream JB_ACCT; a trader may read only its own
# account's subjects) and every fill, without accounts or order ids, to jb.tape.<market> (stream JB_TAPE,
# public). Each copy carries the JB_EVT sequence it came from in HDR_EVT_SEQ.

ACCT_STREAM: Final = "JB_ACCT"
TAPE_STREAM: Final = "JB_TAPE"
ACCT_PREFIX: Final = "jb.acct"
TAPE_PREFIX: Final = "jb.tape"
ACCT_SUBJECTS: Final = (f"{ACCT_PREFIX}.>",)
TAPE_SUBJECTS: Final = (f"{TAPE_PREFIX}.>",)
HDR_EVT_SEQ: Final = "Jb-Evt-Seq"  # the JB_EVT sequence a JB_ACCT or JB_TAPE message was made from


def acct_subject(account_id: str, market_id: str, kind: str) -> str:
    return f"{ACCT_PREFIX}.{account_id}.{market_id}.{kind}"


def acct_filter(account_id: str, market_id: str | None = None) -> str:
    """What a trader's reader of JB_ACCT filters on: its own account, one market or all (`jb.acct.<account>.>`)."""
    return f"{ACCT_PREFIX}.{account_id}.{market_id}.*" if market_id else f"{ACCT_PREFIX}.{account_id}.>"


def tape_subject(market_id: str) -> str:
    return f"{TAPE_PREFIX}.{market_id}"


def tape_filter(market_id: str | None = None) -> str:
    return tape_subject(market_id) if market_id else f"{TAPE_PREFIX}.>"


# nats.micro services and their status endpoints (engine/metrics.py, projections/metrics.py: the engine, the
# projection and the fan-out), and the queries' prefix (projections/query_service.py). `nats micro ls` finds
# the services by name.
ENGINE_SERVICE: Final = "jetbook-engine"
ENGINE_STATUS_SUBJECT: Final = "jb.svc.engine.status"
PROJECTION_SERVICE: Final = "jetbook-projection"
PROJECTION_STATUS_SUBJECT: Final = "jb.svc.projection.status"
FANOUT_SERVICE: Final = "jetbook-fanout"
FANOUT_STATUS_SUBJECT: Final = "jb.svc.fanout.status"
QUERY_SERVICE: Final = "jetbook-query"  # no status endpoint of its own: one endpoint per query, and micro's PING
