"""The two streams: JB_CMD (what was asked) and JB_EVT (what happened: the write-ahead log).

Subject names live in `protocol/subjects.py`; these are the stream settings.
Both use file storage, keep everything (no age, size or count limits) and
deny deleting messages or purging, so neither ever has a gap. JB_EVT accepts
ADR-50 atomic batches; it listens on jb.wal.> and stores and republishes as
jb.evt.>. In a cluster, `replicas=3` makes both R3.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js.api import (
    DiscardPolicy,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, NotFoundError

from protocol.errors import JetbookError
from protocol.shards import (
    all_markets_shard,
    check_shards,
    cmd_stream_name,
    evt_stream_name,
    partition,
    shard_root,
    wal_prefix,
)
from protocol.subjects import (
    ACCT_STREAM,
    ACCT_SUBJECTS,
    ALL_MARKETS,
    CMD_PREFIX,
    CMD_STREAM,
    CMD_SUBJECTS,
    EVT_PREFIX,
    EVT_STREAM,
    TAPE_STREAM,
    TAPE_SUBJECTS,
    WAL_PREFIX,
)

SHARDS_METADATA = "jetbook_shards"  # on every shard stream (shards > 1): the count the venue was created with
DUPLICATE_WINDOW_S = 120.0  # how long the broker drops a repeated Nats-Msg-Id
MAX_COMMAND_BYTES = 64 * 1024
ERR_STREAM_NAME_IN_USE = 10058  # exists with another config


def cmd_stream(
    replicas: int = 1,
    *,
    name: str = CMD_STREAM,
    subjects: tuple[str, ...] = CMD_SUBJECTS,
    description: str = "jetbook commands, in arrival order; kept for audit and re-deciding",
) -> StreamConfig:
    """The command stream; another application of the machinery passes its own names (framework/streams.py)."""
    return StreamConfig(
        name=name,
        description=description,
        subjects=list(subjects),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_COMMAND_BYTES,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,  # the audit record; and readers rely on it having no gaps
        allow_direct=True,
    )


def evt_stream(
    replicas: int = 1,
    *,
    name: str = EVT_STREAM,
    wal_prefix: str = WAL_PREFIX,
    evt_prefix: str = EVT_PREFIX,
    description: str = "jetbook events: the write-ahead log, the only source of truth",
) -> StreamConfig:
    """The event stream; another application of the machinery passes its own names (framework/streams.py)."""
    return StreamConfig(
        name=name,
        description=description,
        # The engine publishes on jb.wal.>; stored and republished as jb.evt.> (see protocol/subjects.py).
        subjects=[f"{wal_prefix}.>"],
        subject_transform=SubjectTransform(src=f"{wal_prefix}.>", dest=f"{evt_prefix}.>"),
        republish=RePublish(src=f"{evt_prefix}.>", dest=f"{evt_prefix}.>"),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_atomic=True,
        allow_direct=True,
    )


def shard_cmd_stream(shard: int, shards: int, replicas: int = 1) -> StreamConfig:
    """Shard k's command stream: what the account mappings route to jbs.<k>, stored back as jb.> (protocol/shards.py).

    Every shard but the one `_all` hashes to sources the `_all` commands from that one, so a cancel_all over
    every market reaches each shard as one command of its own.
    """
    if shards == 1:
        return cmd_stream(replicas)
    root = shard_root(shard)
    config = cmd_stream(replicas, name=cmd_stream_name(shard, shards), subjects=(f"{root}.cmd.>", f"{root}.ctl.>"))
    config.subject_transform = SubjectTransform(src=f"{root}.>", dest="jb.>")
    home = all_markets_shard(shards)
    if shard != home:
        config.sources = [
            StreamSource(name=cmd_stream_name(home, shards), filter_subject=f"{CMD_PREFIX}.{ALL_MARKETS}.*")
        ]
    config.metadata = {SHARDS_METADATA: str(shards)}
    return config


def shard_evt_stream(shard: int, shards: int, replicas: int = 1) -> StreamConfig:
    """Shard k's event stream: its engine publishes on jbs.<k>.wal.>, stored and republished as jb.evt.>."""
    if shards == 1:
        return evt_stream(replicas)
    config = evt_stream(replicas, name=evt_stream_name(shard, shards), wal_prefix=wal_prefix(shard, shards))
    config.metadata = {SHARDS_METADATA: str(shards)}
    return config


class ShardsMismatch(JetbookError):
    """The venue's streams were made for another number of shards: resharding is a migration (docs/DEPLOY.md)."""

    def __init__(self, existing: int, asked: int) -> None:
        super().__init__(
            f"this venue's streams were created with {existing} shard(s), not {asked}: the number of shards is "
            f"fixed when the streams are created (run with --shards {existing}; resharding: docs/DEPLOY.md)"
        )
        self.existing = existing
        self.asked = asked


async def venue_shards(js: Any) -> int | None:
    """How many shards the venue's streams were created with; None if there is no venue yet.

    1 if JB_CMD exists (a venue made before shards existed is a one-shard venue), else the count
    JB_CMD_0 carries in its metadata (every shard's streams carry it; shard 0 always exists).
    """
    return await _shards_of(js, CMD_STREAM, cmd_stream_name(0, 2))


async def venue_shards_from_events(js: Any) -> int | None:
    """venue_shards as a reader may ask it: from the event streams (JB_EVT, JB_EVT_0), which every reader may read."""
    return await _shards_of(js, EVT_STREAM, evt_stream_name(0, 2))


async def _shards_of(js: Any, one_shard: str, shard_0: str) -> int | None:
    try:
        await js.stream_info(one_shard)
        return 1
    except NotFoundError:
        pass
    try:
        info = await js.stream_info(shard_0)
    except NotFoundError:
        return None
    value = (info.config.metadata or {}).get(SHARDS_METADATA)
    if value is None or not value.isdigit():
        raise JetbookError(f"stream {info.config.name} has no valid {SHARDS_METADATA} metadata ({value!r})")
    return int(value)


async def market_evt_stream(js: Any, market: str) -> str:
    """The event stream that holds `market`'s events (and its commands' sequences are that shard's)."""
    shards = await venue_shards(js) or 1
    return evt_stream_name(partition(market, shards), shards)


async def check_venue_shards(js: Any, shards: int) -> None:
    """Raise ShardsMismatch unless the venue is absent or was created with `shards` shards."""
    check_shards(shards)
    existing = await venue_shards(js)
    if existing is not None and existing != shards:
        raise ShardsMismatch(existing, shards)


async def ensure_shard_streams(js: Any, shards: int, replicas: int = 1) -> None:
    """Every shard's two streams (JB_CMD and JB_EVT for one shard), refusing a venue made with another count.

    The home shard of `_all` first: the others source its commands, and a source that exists from the
    start is simplest to reason about.
    """
    await check_venue_shards(js, shards)
    home = all_markets_shard(shards)
    order = [home, *(k for k in range(shards) if k != home)]
    configs = [c for k in order for c in (shard_cmd_stream(k, shards, replicas), shard_evt_stream(k, shards, replicas))]
    await ensure_stream_configs(js, configs, replicas)


async def ensure_one_shard_streams(js: Any, shard: int, shards: int, replicas: int = 1) -> None:
    """Shard k's two streams only: what shard k's engine creates (the engine of shard 0 of 1 is today's engine)."""
    await check_venue_shards(js, shards)
    configs = [shard_cmd_stream(shard, shards, replicas), shard_evt_stream(shard, shards, replicas)]
    await ensure_stream_configs(js, configs, replicas)


log = logging.getLogger("jetbook.streams")


async def ensure_streams(js: Any, replicas: int = 1) -> None:
    """Create both streams, or bring an existing one's settings up to date. Called by the writers (engine, up).

    Never lowers the replica count: a process started with the default of 1
    against an R3 cluster must not quietly make the log R1.
    """
    await ensure_stream_configs(js, [cmd_stream(replicas), evt_stream(replicas)], replicas)


async def wait_for_stream(js: Any, name: str, stop: asyncio.Event) -> bool:
    """For readers, which need not be allowed to create streams: wait until `name` exists. False if stopped first."""
    announced = False
    while not stop.is_set():
        try:
            await js.stream_info(name)
            return True
        except NotFoundError:
            if not announced:
                log.info("waiting for stream %s (start the engine or `jetbook up`)", name)
                announced = True
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass
    return False


# --- JB_ACCT and JB_TAPE: the fan-out worker's output (projections/fanout.py) ---------------------------


def acct_stream(replicas: int = 1) -> StreamConfig:
    """Every event that concerns an account, under jb.acct.<account>.>: what a trader may read of the log.

    No direct get: its request subject cannot be bound to one account, so a trader reads only through a
    consumer filtered to its own subjects (see events/private.py).
    """
    return StreamConfig(
        name=ACCT_STREAM,
        description="jetbook per-account events, copied from JB_EVT by the fan-out worker",
        subjects=list(ACCT_SUBJECTS),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_direct=False,
    )


def tape_stream(replicas: int = 1) -> StreamConfig:
    """Every trade, without accounts or order ids, under jb.tape.<market>: public."""
    return StreamConfig(
        name=TAPE_STREAM,
        description="jetbook public trades, copied from JB_EVT fills by the fan-out worker",
        subjects=list(TAPE_SUBJECTS),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )


async def ensure_stream_configs(js: Any, configs: list[StreamConfig], replicas: int = 1) -> None:
    """Create each stream, or bring an existing one up to date, never lowering its replica count."""
    for config in configs:
        try:
            existing = await js.stream_info(config.name)
        except NotFoundError:
            existing = None
        if existing is not None and int(existing.config.num_replicas or 1) > replicas:
            log.info("%s keeps %d replicas (asked for %d)", config.name, existing.config.num_replicas, replicas)
            config.num_replicas = existing.config.num_replicas
        try:
            await js.add_stream(config)
        except BadRequestError as err:
            if err.err_code != ERR_STREAM_NAME_IN_USE:
                raise
            await js.update_stream(config)


async def ensure_fanout_streams(js: Any, replicas: int = 1) -> None:
    """JB_ACCT and JB_TAPE; called by the fan-out worker, their only writer."""
    await ensure_stream_configs(js, [acct_stream(replicas), tape_stream(replicas)], replicas)
