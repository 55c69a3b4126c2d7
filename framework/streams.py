"""An application's two streams, with the settings the exchange's have (protocol/streams.py), names changed.

File storage, everything kept, no delete or purge (readers rely on no gaps),
direct gets; the command stream drops repeated `Nats-Msg-Id`s for 120 s; the
event stream accepts ADR-50 atomic batches on <wal_prefix>.> and stores and
republishes them as <evt_prefix>.>, so whatever anyone sees there is committed.
"""

from __future__ import annotations

from typing import Any

from nats.js.api import DiscardPolicy, RePublish, RetentionPolicy, StorageType, StreamConfig, SubjectTransform

from framework.app import App
from protocol.streams import DUPLICATE_WINDOW_S, MAX_COMMAND_BYTES, ensure_stream_configs


def stream_configs(app: App, replicas: int = 1) -> list[StreamConfig]:
    s = app.streams
    cmd = StreamConfig(
        name=s.cmd,
        description=f"{app.name} commands, in arrival order",
        subjects=list(s.cmd_subjects),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=MAX_COMMAND_BYTES,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_direct=True,
    )
    evt = StreamConfig(
        name=s.evt,
        description=f"{app.name} events: the write-ahead log",
        subjects=[f"{s.wal_prefix}.>"],
        subject_transform=SubjectTransform(src=f"{s.wal_prefix}.>", dest=f"{s.evt_prefix}.>"),
        republish=RePublish(src=f"{s.evt_prefix}.>", dest=f"{s.evt_prefix}.>"),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_atomic=True,
        allow_direct=True,
    )
    return [cmd, evt]


async def ensure_app_streams(js: Any, app: App, replicas: int = 1) -> None:
    """Create the application's streams, or bring them up to date; the exchange keeps its own function."""
    if app.ensure_streams is not None:
        await app.ensure_streams(js, replicas)
    else:
        await ensure_stream_configs(js, stream_configs(app, replicas), replicas)
