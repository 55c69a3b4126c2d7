"""The two streams: JB_CMD (what was asked) and JB_EVT (what happened: the write-ahead log).

Subject names live in `commands/subjects.py`; these are the stream settings.
Both use file storage and keep everything (no age, size or count limits).
JB_EVT cannot have messages deleted or the stream purged, and accepts ADR-50
atomic batches; it listens on jb.wal.> and stores and republishes as jb.evt.>. In a cluster, `replicas=3` makes both R3.
"""

from __future__ import annotations

from typing import Any

from nats.js.api import DiscardPolicy, RePublish, RetentionPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import BadRequestError

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


async def ensure_streams(js: Any, replicas: int = 1) -> None:
    """Create both streams, or bring an existing one's settings up to date. Safe to call from every process."""
    for config in (cmd_stream(replicas), evt_stream(replicas)):
        try:
            await js.add_stream(config)
        except BadRequestError as err:
            if err.err_code != ERR_STREAM_NAME_IN_USE:
                raise
            await js.update_stream(config)
