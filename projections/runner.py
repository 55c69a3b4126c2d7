"""Keep a read model current: read JB_EVT after its stored position, fold, commit, repeat.

Killed at any instant, the worker loses nothing and duplicates nothing: the
position is committed in the same SQLite transaction as the rows, and reading
restarts right after it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from commands.subjects import EVT_STREAM
from events.model import Event, decode
from events.reader import RawMsg, StreamReader
from jetbook.errors import CorruptLog
from projections.read_model import ReadModel

log = logging.getLogger("jetbook.projection")


def _decode(m: RawMsg) -> Event:
    try:
        return decode(m.data)
    except Exception as err:
        raise CorruptLog(m.seq, m.subject, err) from err


class ProjectionRunner:
    def __init__(self, js: Any, db_path: Path | str, *, from_seq: int | None = None, batch: int = 5000) -> None:
        self.js = js
        self.db_path = Path(db_path)
        self.from_seq = from_seq
        self.batch = batch
        self.position = 0

    async def run(self, stop: asyncio.Event, until_seq: int | None = None) -> int:
        """Fold until `stop` is set, or until the position reaches `until_seq`. Returns the position."""
        model = await ReadModel.open(self.db_path)
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
            async with StreamReader(self.js, EVT_STREAM, start) as reader:
                while not stop.is_set() and (until_seq is None or self.position < until_seq):
                    msgs = await reader.next_batch(self.batch, timeout=0.25)
                    if msgs:
                        self.position = await model.apply([(m.seq, _decode(m)) for m in msgs])
        finally:
            await model.close()
        return self.position
