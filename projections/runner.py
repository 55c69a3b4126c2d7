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
(framework.app.SqliteProjection) of any application's event stream: the
exchange's read model by default, or `projection` of `app`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.exchange import APP as EXCHANGE
from events.logged import LogCheck, decode_logged
from events.stream_readers import ResumableReader
from framework.app import App, SqliteProjection
from projections.live import Live, open_live
from projections.metrics import ProjectionMetrics
from protocol.errors import CorruptLog

log = logging.getLogger("jetbook.projection")


def _plan_or_corrupt(projection: SqliteProjection, batch: list[tuple[int, Any]], subjects: dict[int, str]) -> None:
    """After a batch failed to fold: the event that does not fold on its own, as CorruptLog."""
    what = projection.NAME.replace("_", " ")  # "the read model"
    for seq, event in batch:
        try:
            projection.plan([(seq, event)])
        except Exception as err:
            raise CorruptLog(
                seq, subjects.get(seq, ""), f"does not fold into the {what} ({type(err).__name__}: {err})"
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


class ProjectionRunner:
    def __init__(
        self,
        js: Any,
        db_path: Path | str,
        *,
        from_seq: int | None = None,
        batch: int = 5000,
        app: App = EXCHANGE,
        projection: SqliteProjection | None = None,
        metrics: ProjectionMetrics | None = None,
    ) -> None:
        """Keeps `projection` (default: the application's first) of `app`'s event stream current in `db_path`."""
        self.app = app
        self.projection = projection if projection is not None else default_projection(app)
        self.stream = app.streams.evt
        self.js = js
        self.db_path = Path(db_path)
        self.from_seq = from_seq
        self.batch = batch
        self.position = 0
        self.reopened = 0  # how many times a swapped-in file was picked up
        self.metrics = metrics if metrics is not None else ProjectionMetrics()
        self.metrics.attach(self)

    async def run(self, stop: asyncio.Event, until_seq: int | None = None) -> int:
        """Fold until `stop` is set, or until the position reaches `until_seq`. Returns the position."""
        inode = _inode(self.db_path)  # before opening: a swap in between is then seen at the first check
        model = await open_live(self.db_path, self.projection)
        inode = inode or _inode(self.db_path)  # a new file
        reader = ResumableReader(_client(self.js), self.stream)
        try:
            self.position = await model.position()
            start = self.position + 1
            if self.from_seq is not None:
                if self.position and self.from_seq > self.position + 1:
                    raise ValueError(
                        f"{self.db_path} is at {self.position}; starting at {self.from_seq} would leave a gap"
                    )
                if not self.position:
                    start = max(self.from_seq, 1)
            log.info("projection %s at %d; reading %s from %d", self.db_path, self.position, self.stream, start)
            # From the start of JB_EVT the first event must be of command 1; after a resume the command
            # before is not stored, so the check starts with the first event read (docs/GUARANTEES.md).
            check = LogCheck(0 if start == 1 else None)
            # After a reconnect (a restarted server) the reader starts again from our position at once,
            # instead of waiting ~10 s for nats-py to notice its consumer is gone.
            while not stop.is_set() and (until_seq is None or self.position < until_seq):
                if _inode(self.db_path) != inode:
                    model, inode = await self._reopen(model, reader)
                    start = self.position + 1
                    check = LogCheck(0 if start == 1 else None)
                    continue
                msgs = await reader.next_batch(max(start, self.position + 1), self.batch, 0.25)
                if not msgs:
                    continue
                started = time.perf_counter()
                decider = self.app.decider
                batch = [
                    (m.seq, decode_logged(m.seq, m.subject, m.data, check, decode=decider.decode,
                                          unknown=decider.unknown_event))
                    for m in msgs
                ]  # fmt: skip
                try:
                    self.position = await model.apply(batch)
                    last = msgs[-1]
                    self.metrics.batch_folded(len(msgs), last.seq, last.ts, last.pending,
                                              time.perf_counter() - started)  # fmt: skip
                except sqlite3.Error:
                    if _inode(self.db_path) == inode:
                        raise
                    log.info("projection %s: the file was swapped during a batch", self.db_path)
                    check = LogCheck(None)
                except Exception:
                    _plan_or_corrupt(self.projection, batch, {m.seq: m.subject for m in msgs})
                    raise
        finally:
            await reader.stop()
            await model.close()
        return self.position

    async def _reopen(self, model: Live, reader: ResumableReader) -> tuple[Live, int]:
        """Drop the old file and its reader; carry on from the position of the file now at the path."""
        await reader.stop()
        await model.close()
        inode = _inode(self.db_path)
        model = await open_live(self.db_path, self.projection)
        self.position = await model.position()
        self.reopened += 1
        log.info("projection %s was replaced (a rebuild); reopened at %d", self.db_path, self.position)
        return model, inode
