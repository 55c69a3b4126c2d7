"""The two streams: JB_CMD (what was asked) and JB_EVT (what happened: the write-ahead log).

Subject names live in `commands/subjects.py`; these are the stream settings.
Both use file storage, keep everything (no age, size or count limits) and
deny deleting messages or purging, so neither ever has a gap. JB_EVT accepts
ADR-50 atomic batches; it listens on jb.wal.> and stores and republishes as
jb.evt.>. In a cluster, `replicas=3` makes both R3.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js.api import DiscardPolicy, RePublish, RetentionPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import BadRequestError, NotFoundError

from commands.subjects import CMD_STREAM, CMD_SUBJECTS, EVT_PREFIX, EVT_STREAM, WAL_PREFIX, WAL_SUBJECTS

DUPLICATE_WINDOW_S = 120.0  # how long the broker drops a repeated Nats-Msg-Id
MAX_COMMAND_BYTES = 64 * 1024
ERR_STREAM_NAME_IN_USE = 10058  # exists with another config


def cmd_stream(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=CMD_STREAM,
        description="jetbook commands, in arrival order; kept for audit and re-deciding",
        subjects=list(CMD_SUBJECTS),
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


def evt_stream(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=EVT_STREAM,
        description="jetbook events: the write-ahead log, the only source of truth",
        # The engine publishes on jb.wal.>; stored and republished as jb.evt.> (see commands/subjects.py).
        subjects=list(WAL_SUBJECTS),
        subject_transform=SubjectTransform(src=f"{WAL_PREFIX}.>", dest=f"{EVT_PREFIX}.>"),
        republish=RePublish(src=f"{EVT_PREFIX}.>", dest=f"{EVT_PREFIX}.>"),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_atomic=True,
        allow_direct=True,
    )


log = logging.getLogger("jetbook.streams")


async def ensure_streams(js: Any, replicas: int = 1) -> None:
    """Create both streams, or bring an existing one's settings up to date. Called by the writers (engine, up).

    Never lowers the replica count: a process started with the default of 1
    against an R3 cluster must not quietly make the log R1.
    """
    for config in (cmd_stream(replicas), evt_stream(replicas)):
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
