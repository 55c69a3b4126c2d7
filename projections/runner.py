"""Keep a read model current: read JB_EVT after its stored position, fold, commit, repeat.

Killed at any instant, the worker loses nothing and duplicates nothing: the
position is committed in the same SQLite transaction as the rows, and reading
restarts right after it.

`jetbook replay rebuild` swaps a new file in under the worker's path (a
symlink to a new generation file, see replay/rebuild.py). The worker notices
that the path now names another file (its inode changed) before every batch
and whenever it is idle, and then reopens the path and reads on from the new
file's own position. A batch it was committing at that instant goes to the
old file, which nobody reads any more (SQLite refuses the write: the file
moved), and is read again for the new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from commands.subjects import EVT_STREAM
from events.model import Event, decode
from events.reader import RawMsg, ResumableReader
from jetbook.errors import CorruptLog
from projections.read_model import ReadModel

log = logging.getLogger("jetbook.projection")


def _decode(m: RawMsg) -> Event:
    try:
        return decode(m.data)
    except Exception as err:
        raise CorruptLog(m.seq, m.subject, err) from err


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino  # follows the symlink a rebuild puts there
    except FileNotFoundError:
        return 0


def _client(js: Any) -> Any:
    """The connection under a JetStream context (nats-py keeps it as `_nc`)."""
    return js._nc


class ProjectionRunner:
    def __init__(self, js: Any, db_path: Path | str, *, from_seq: int | None = None, batch: int = 5000) -> None:
        self.js = js
        self.db_path = Path(db_path)
        self.from_seq = from_seq
        self.batch = batch
        self.position = 0
        self.reopened = 0  # how many times a swapped-in file was picked up

    async def run(self, stop: asyncio.Event, until_seq: int | None = None) -> int:
        """Fold until `stop` is set, or until the position reaches `until_seq`. Returns the position."""
        inode = _inode(self.db_path)  # before opening: a swap in between is then seen at the first check
        model = await ReadModel.open(self.db_path)
        inode = inode or _inode(self.db_path)  # a new file
        reader = ResumableReader(_client(self.js), EVT_STREAM)
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
            log.info("projection %s at %d; reading JB_EVT from %d", self.db_path, self.position, start)
            # After a reconnect (a restarted server) the reader starts again from our position at once,
            # instead of waiting ~10 s for nats-py to notice its consumer is gone.
            while not stop.is_set() and (until_seq is None or self.position < until_seq):
                if _inode(self.db_path) != inode:
                    model, inode = await self._reopen(model, reader)
                    start = self.position + 1
                    continue
                msgs = await reader.next_batch(max(start, self.position + 1), self.batch, 0.25)
                if not msgs:
                    continue
                try:
                    self.position = await model.apply([(m.seq, _decode(m)) for m in msgs])
                except sqlite3.Error:
                    if _inode(self.db_path) == inode:
                        raise
                    log.info("projection %s: the file was swapped during a batch", self.db_path)
        finally:
            await reader.stop()
            await model.close()
        return self.position

    async def _reopen(self, model: ReadModel, reader: ResumableReader) -> tuple[ReadModel, int]:
        """Drop the old file and its reader; carry on from the position of the file now at the path."""
        await reader.stop()
        await model.close()
        inode = _inode(self.db_path)
        model = await ReadModel.open(self.db_path)
        self.position = await model.position()
        self.reopened += 1
        log.info("projection %s was replaced (a rebuild); reopened at %d", self.db_path, self.position)
        return model, inode
