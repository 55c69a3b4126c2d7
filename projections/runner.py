"""Keep a read model current: read JB_EVT after its stored position, fold a batch in, repeat.

Killed at any instant, the worker loses nothing and duplicates nothing: the
position is written in the same SQLite transaction as the rows, and reading
restarts right after it.

`jetbook replay rebuild` swaps a new file in under the worker's path (a
symlink to a new generation file, see replay/rebuild.py). The worker notices
that the path now names another file (its inode changed) before every batch
and whenever it is idle, and then reopens the path and reads on from the new
file's own position. A batch it was writing at that instant goes to the
old file, which nobody reads any more (SQLite refuses the write: the file
moved), and is read again for the new one.

The runner keeps any projection in the machinery's shape
(framework.app.SqliteProjection) of any application's event stream: `app`'s
first projection (the exchange's: the read model), or `projection`. The
application is the caller's to give (engine.exchange.APP for the exchange):
it is composed above this layer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from events.logged import LogCheck, decode_logged
from events.stream_readers import ResumableReader
from framework.app import App, SqliteProjection
from projections import queries
from projections.live import Live, open_live
from projections.metrics import ProjectionMetrics
from protocol.errors import CorruptLog
from protocol.shards import evt_stream_name
from protocol.subjects import EVT_STREAM

log = logging.getLogger("jetbook.projection")


def _plan_or_corrupt(
    projection: SqliteProjection, batch: list[tuple[int, Any]], subjects: dict[int, str], stream: str = EVT_STREAM
) -> None:
    """After a batch failed to fold: the event that does not fold on its own, as CorruptLog (naming its stream)."""
    what = projection.NAME.replace("_", " ")  # "the read model"
    for seq, event in batch:
        try:
            projection.plan([(seq, event)])
        except Exception as err:
            raise CorruptLog(
                seq,
                subjects.get(seq, ""),
                f"does not fold into the {what} ({type(err).__name__}: {err})",
                stream=stream,
            ) from err


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino  # follows the symlink a rebuild puts there
    except FileNotFoundError:
        return 0


def _client(js: Any) -> Any:
    """The connection under a JetStream context (nats-py keeps it as `_nc`)."""
    return js._nc


def default_projection(app: App) -> SqliteProjection:
    """The application's projection when it has one; its first otherwise (the exchange: the read model)."""
    if not app.projections:
        raise ValueError(f"application {app.name} has no projection")
    return next(iter(app.projections.values()))


def shard_streams(app: App, shards: int) -> list[str]:
    """The event streams a reader of `app` follows: its own, or every shard's for the sharded exchange."""
    if shards == 1:
        return [app.streams.evt]
    if app.streams.evt != EVT_STREAM:  # only the exchange is sharded (engine.exchange.shard_app)
        raise ValueError(f"application {app.name} has no shards")
    return [evt_stream_name(k, shards) for k in range(shards)]


class ProjectionRunner:
    def __init__(
        self,
        app: App,
        js: Any,
        db_path: Path | str,
        *,
        from_seq: int | None = None,
        batch: int = 5000,
        projection: SqliteProjection | None = None,
        metrics: ProjectionMetrics | None = None,
        shards: int = 1,
    ) -> None:
        """Keeps `projection` (default: the application's first) of `app`'s event stream(s) current in `db_path`.

        With `shards` > 1 it follows every shard's JB_EVT_k into the one file: one ordered reader and one
        LogCheck per stream, each batch committed with that stream's own position row.
        """
        self.app = app
        self.projection = projection if projection is not None else default_projection(app)
        self.streams = shard_streams(app, shards)
        self.stream = self.streams[0]
        if from_seq is not None and len(self.streams) > 1:
            raise ValueError("--from-seq names one stream's sequence: it applies to a one-shard venue only")
        self.names = {s: queries.position_name(self.projection.NAME, s, len(self.streams)) for s in self.streams}
        self.js = js
        self.db_path = Path(db_path)
        self.from_seq = from_seq
        self.batch = batch
        self.positions = dict.fromkeys(self.streams, 0)
        self.reopened = 0  # how many times a swapped-in file was picked up
        self.metrics = metrics if metrics is not None else ProjectionMetrics()
        self.metrics.attach(self)

    @property
    def position(self) -> int:
        """The one stream's position; with shards, the sum of theirs (a count that only grows, for progress)."""
        return sum(self.positions.values())

    async def run(
        self, stop: asyncio.Event, until_seq: int | None = None, *, until: dict[str, int] | None = None
    ) -> int:
        """Fold until `stop` is set, or until the position is `until_seq` (one stream) or every stream is at its
        `until` position (exactly: nothing past it is folded). Returns the position."""
        targets: dict[str, int | None] = dict.fromkeys(self.streams, until_seq)
        if until is not None:
            targets = {s: until.get(s, 0) for s in self.streams}
        while True:
            inode = _inode(self.db_path)  # before opening: a swap in between is then seen at the first check
            model = await open_live(self.db_path, self.projection)
            inode = inode or _inode(self.db_path)  # a new file
            swapped = asyncio.Event()
            try:
                for s in self.streams:
                    self.positions[s] = await self._position(model, s)
                await asyncio.gather(*(self._follow(model, s, inode, stop, swapped, targets[s]) for s in self.streams))
            finally:
                await model.close()
            if not swapped.is_set():
                return self.position
            self.reopened += 1
            log.info("projection %s was replaced (a rebuild); reopened at %s", self.db_path, self.positions)

    async def _position(self, model: Live, stream: str) -> int:
        return await model.position(self.names[stream])

    async def _apply(self, model: Live, stream: str, batch: list[tuple[int, Any]]) -> int:
        """One stream: the file of before (no stream given); several: each batch knows its shard's stream."""
        return await model.apply(batch, self.names[stream], stream if len(self.streams) > 1 else None)

    async def _follow(
        self, model: Live, stream: str, inode: int, stop: asyncio.Event, swapped: asyncio.Event, until: int | None
    ) -> None:
        """One stream into the shared file, until stop, its target, or a swapped file (which `swapped` tells
        the other streams' loops, so that all reopen the new file together)."""
        reader = ResumableReader(_client(self.js), stream)
        position = self.positions[stream]
        start = position + 1
        if self.from_seq is not None:
            if position and self.from_seq > position + 1:
                raise ValueError(f"{self.db_path} is at {position}; starting at {self.from_seq} would leave a gap")
            if not position:
                start = max(self.from_seq, 1)
        log.info("projection %s at %d; reading %s from %d", self.db_path, position, stream, start)
        # From the start of the stream the first event must be of command 1; after a resume the command
        # before is not stored, so the check starts with the first event read (docs/GUARANTEES.md).
        check = LogCheck(0 if start == 1 else None)
        decider = self.app.decider
        try:
            # After a reconnect (a restarted server) the reader starts again from our position at once,
            # instead of waiting ~10 s for nats-py to notice its consumer is gone.
            while not stop.is_set() and not swapped.is_set() and (until is None or self.positions[stream] < until):
                if _inode(self.db_path) != inode:
                    swapped.set()
                    return
                msgs = await reader.next_batch(max(start, self.positions[stream] + 1), self.batch, 0.25)
                if until is not None:
                    msgs = [m for m in msgs if m.seq <= until]  # a target is where the file stops, not a minimum
                if not msgs or swapped.is_set():
                    continue
                started = time.perf_counter()
                try:
                    batch = [
                        (m.seq, decode_logged(m.seq, m.subject, m.data, check, decode=decider.decode,
                                              unknown=decider.unknown_event))
                        for m in msgs
                    ]  # fmt: skip
                except CorruptLog as err:
                    raise err.in_stream(stream) from err
                try:
                    self.positions[stream] = await self._apply(model, stream, batch)
                    last = msgs[-1]
                    self.metrics.batch_folded(len(msgs), last.seq, last.ts, last.pending,
                                              time.perf_counter() - started, stream=stream)  # fmt: skip
                except sqlite3.Error:
                    if _inode(self.db_path) == inode:
                        raise
                    log.info("projection %s: the file was swapped during a batch", self.db_path)
                    swapped.set()
                    return
                except Exception:
                    _plan_or_corrupt(self.projection, batch, {m.seq: m.subject for m in msgs}, stream)
                    raise
        finally:
            await reader.stop()
