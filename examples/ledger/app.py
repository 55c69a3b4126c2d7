"""The ledger as an application of the machinery: its streams, its decider, its projection (FRAMEWORK.md, step 9)."""

from __future__ import annotations

from typing import Final

from examples.ledger.decider import DECIDER
from examples.ledger.domain import CMD_PREFIX, EVT_PREFIX, WAL_PREFIX
from examples.ledger.projection import Balances
from framework.app import App, Streams

STREAMS: Final = Streams(
    cmd="LEDGER_CMD",
    evt="LEDGER_EVT",
    cmd_subjects=(f"{CMD_PREFIX}.>",),
    wal_prefix=WAL_PREFIX,
    evt_prefix=EVT_PREFIX,
    snapshot_bucket="LEDGER_SNAP",
    lease_bucket="LEDGER_LEASE",
)

APP: Final = App(
    name="ledger",
    ref="examples.ledger.app",
    streams=STREAMS,
    decider=DECIDER,
    projections={Balances.NAME: Balances},
)
