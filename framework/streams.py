"""An application's two streams, with the settings the exchange's have (protocol/streams.py), names changed.

File storage, everything kept, no delete or purge (readers rely on no gaps),
direct gets; the command stream drops repeated `Nats-Msg-Id`s for 120 s; the
event stream accepts ADR-50 atomic batches on <wal_prefix>.> and stores and
republishes them as <evt_prefix>.>, so whatever anyone sees there is committed.
"""

from __future__ import annotations

from typing import Any

from nats.js.api import StreamConfig

from framework.app import App
from protocol.streams import cmd_stream, ensure_stream_configs, evt_stream


def stream_configs(app: App, replicas: int = 1) -> list[StreamConfig]:
    s = app.streams
    return [
        cmd_stream(replicas, name=s.cmd, subjects=s.cmd_subjects, description=f"{app.name} commands, in arrival order"),
        evt_stream(
            replicas, name=s.evt, wal_prefix=s.wal_prefix, evt_prefix=s.evt_prefix,
            description=f"{app.name} events: the write-ahead log",
        ),
    ]  # fmt: skip


async def ensure_app_streams(js: Any, app: App, replicas: int = 1) -> None:
    """Create the application's streams, or bring them up to date; the exchange keeps its own function."""
    if app.ensure_streams is not None:
        await app.ensure_streams(js, replicas)
    else:
        await ensure_stream_configs(js, stream_configs(app, replicas), replicas)
