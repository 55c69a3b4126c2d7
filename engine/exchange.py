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

import functools
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
import protocol.shards
import protocol.subjects
import protocol.vocab
from engine.core import CHECKPOINT_EVERY, MAX_EVENTS_PER_COMMAND, Diverged, Engine, State, restore, snapshot, state_hash
from engine.lease import LEASE_BUCKET, LEASE_KEY
from events.logged import decode_fast
from events.model import Checkpoint, UnknownEvent, encode
from framework.app import App, Streams
from projections.read_model import ReadModel
from protocol.shards import check_shards, cmd_stream_name, evt_stream_name, shard_root, wal_prefix
from protocol.streams import ensure_one_shard_streams
from protocol.subjects import CMD_STREAM, CMD_SUBJECTS, EVT_PREFIX, EVT_STREAM, SNAP_BUCKET, WAL_PREFIX

# Every module whose source decides what a state is or what events a command gives: the engine's parts,
# the command parser, the event models and the vocabularies they share. A snapshot made by any other
# version of any of them is not trusted on its digest alone.
CORE_MODULES: Final = (
    engine.core, engine.state, engine.decide, engine.evolve, engine.book, commands.model, events.model,
    protocol.reasons, protocol.vocab, protocol.subjects, protocol.shards, protocol.odds,
)  # fmt: skip


def core_fingerprint() -> str:
    """Changes whenever the code that defines the state, the rules or the encoding changes."""
    digest = hashlib.sha256()
    for module in CORE_MODULES:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


CORE: Final = core_fingerprint()


class ExchangeDecider:
    """`framework.app.Decider` over engine.core: the names the engine service used to import, in one object.

    One per shard: its cores publish under that shard's wal prefix and refuse the other shards' markets.
    """

    def __init__(self, shard: int = 0, shards: int = 1) -> None:
        self.shard = shard
        self.shards = shards

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

    def core(self, state: Any = None, *, checkpoint_every: int | None = None) -> Engine:
        return Engine(
            state, checkpoint_every=checkpoint_every or CHECKPOINT_EVERY, shard=self.shard, shards=self.shards
        )

    @staticmethod
    def checkpoint_covers(event: Any) -> int | None:
        return event.covers_seq if type(event) is Checkpoint else None


DECIDER: Final = ExchangeDecider()


async def ensure_checked_streams(js: Any, replicas: int = 1) -> None:
    """JB_CMD and JB_EVT, refusing a venue made with shards (protocol.streams.ShardsMismatch): the one-shard engine."""
    await ensure_one_shard_streams(js, 0, 1, replicas)


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
    ensure_streams=ensure_checked_streams,
)


def shard_app(shard: int, shards: int) -> App:
    """Shard k of n: its own streams, snapshot bucket, lease key and decider; one shard is `APP` itself.

    The same object for the same arguments, so that `app is APP` and identity checks keep working.
    Its `ref` is "engine.exchange:<k>/<n>", which `framework.app.load_app` resolves through `app_for`.
    """
    check_shards(shards)
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be 0..{shards - 1}, not {shard}")
    return APP if shards == 1 else _shard_app(shard, shards)


@functools.cache
def _shard_app(shard: int, shards: int) -> App:
    root = shard_root(shard)

    async def ensure(js: Any, replicas: int = 1) -> None:
        await ensure_one_shard_streams(js, shard, shards, replicas)

    streams = Streams(
        cmd=cmd_stream_name(shard, shards),
        evt=evt_stream_name(shard, shards),
        cmd_subjects=(f"{root}.cmd.>", f"{root}.ctl.>"),
        wal_prefix=wal_prefix(shard, shards),
        evt_prefix=EVT_PREFIX,
        snapshot_bucket=f"{SNAP_BUCKET}_{shard}",
        lease_bucket=LEASE_BUCKET,
        lease_key=f"{LEASE_KEY}-{shard}",
    )
    return App(
        name=f"exchange shard {shard} of {shards}",
        ref=f"{APP.ref}:{shard}/{shards}",
        streams=streams,
        decider=ExchangeDecider(shard, shards),
        projections=APP.projections,
        ensure_streams=ensure,
    )


def app_for(spec: str) -> App:
    """The app a ref "engine.exchange:<k>/<n>" names (framework.app.load_app)."""
    try:
        shard, shards = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"engine.exchange:{spec}: expected engine.exchange:<shard>/<shards>") from None
    return shard_app(shard, shards)
