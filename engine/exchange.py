"""The exchange as one application of the machinery: its decider, its read model, its stream names.

The machinery (engine/service.py, engine/commit.py, engine/lease.py,
engine/snapshots.py, projections/runner.py, replay/rebuild.py, replay/fold.py,
replay/verify.py) takes an `App`; this is the one it defaults to, so every
caller that does not name an application gets the exchange, as before. The
exchange's core (`engine.core.Engine`) predates `framework.pure.PureDecider`
and does the same job by hand: generated encoders, a fast decode of logged
events, its own live read-model connection (`ReadModel.open`).
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Final

import commands.model
import engine.book
import engine.core
import engine.decide
import engine.evolve
import engine.state
import events.model
import protocol.odds
import protocol.reasons
import protocol.subjects
import protocol.vocab
from engine.core import CHECKPOINT_EVERY, MAX_EVENTS_PER_COMMAND, Diverged, Engine, State, restore, snapshot, state_hash
from engine.lease import LEASE_BUCKET, LEASE_KEY
from events.logged import decode_fast
from events.model import Checkpoint, UnknownEvent, encode
from framework.app import App, Streams
from projections.read_model import ReadModel
from protocol.streams import ensure_streams
from protocol.subjects import CMD_STREAM, CMD_SUBJECTS, EVT_PREFIX, EVT_STREAM, SNAP_BUCKET, WAL_PREFIX

# Every module whose source decides what a state is or what events a command gives: the engine's parts,
# the command parser, the event models and the vocabularies they share. A snapshot made by any other
# version of any of them is not trusted on its digest alone.
CORE_MODULES: Final = (
    engine.core, engine.state, engine.decide, engine.evolve, engine.book, commands.model, events.model,
    protocol.reasons, protocol.vocab, protocol.subjects, protocol.odds,
)  # fmt: skip


def core_fingerprint() -> str:
    """Changes whenever the code that defines the state, the rules or the encoding changes."""
    digest = hashlib.sha256()
    for module in CORE_MODULES:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


CORE: Final = core_fingerprint()


class ExchangeDecider:
    """`framework.app.Decider` over engine.core: the names the engine service used to import, in one object."""

    name: Final = "exchange"
    checkpoint_every: Final = CHECKPOINT_EVERY
    max_events_per_command: Final = MAX_EVENTS_PER_COMMAND
    fingerprint: Final = CORE
    unknown_event: Final = UnknownEvent
    diverged: Final = Diverged

    # The functions themselves, not wrappers: the engine and replay call these once per event.
    decode = staticmethod(decode_fast)
    encode = staticmethod(encode)
    snapshot = staticmethod(snapshot)
    restore = staticmethod(restore)
    state_hash = staticmethod(state_hash)

    @staticmethod
    def initial_state() -> State:
        return State()

    @staticmethod
    def core(state: Any = None, *, checkpoint_every: int | None = None) -> Engine:
        return Engine(state, checkpoint_every=checkpoint_every or CHECKPOINT_EVERY)

    @staticmethod
    def checkpoint_covers(event: Any) -> int | None:
        return event.covers_seq if type(event) is Checkpoint else None


DECIDER: Final = ExchangeDecider()

STREAMS: Final = Streams(
    cmd=CMD_STREAM,
    evt=EVT_STREAM,
    cmd_subjects=CMD_SUBJECTS,
    wal_prefix=WAL_PREFIX,
    evt_prefix=EVT_PREFIX,
    snapshot_bucket=SNAP_BUCKET,
    lease_bucket=LEASE_BUCKET,
    lease_key=LEASE_KEY,
)

APP: Final = App(
    name="exchange",
    ref="engine.exchange",
    streams=STREAMS,
    decider=DECIDER,
    projections={ReadModel.NAME: ReadModel},
    ensure_streams=ensure_streams,
)
