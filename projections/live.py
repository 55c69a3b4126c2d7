"""A projection's live SQLite file, for any projection in the machinery's shape (framework.app.SqliteProjection).

The exchange's read model has its own (`ReadModel`, which also checks the
file's layout version); a projection without an `open` of its own gets this
one. The same design: one connection on its own thread, one transaction per
batch (plan, then every statement, then the position, one hop to the thread),
WAL with synchronous=NORMAL, so a crash can lose the newest transactions but
never tear one, and the position inside each transaction says what was lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from framework.app import SqliteProjection, create_schema
from projections import queries

T = TypeVar("T")


class Live(Protocol):
    """What the projection runner needs of an open live file."""

    async def position(self, name: str = ...) -> int: ...

    async def apply(self, batch: list[tuple[int, Any]], name: str = ..., stream: str | None = None) -> int: ...

    async def close(self) -> None: ...


def _connect(path: Path, projection: SqliteProjection) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Used only from the model's own thread; check_same_thread is off because that thread is not this one.
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    create_schema(con, projection.SCHEMA)
    con.execute("PRAGMA synchronous = NORMAL")
    return con


class LiveModel:
    def __init__(
        self, con: sqlite3.Connection, path: Path, projection: SqliteProjection, executor: ThreadPoolExecutor
    ) -> None:
        self.con = con
        self.path = path
        self.projection = projection
        self._executor = executor

    @classmethod
    async def open(cls, path: Path | str, projection: SqliteProjection) -> LiveModel:
        path = Path(path)
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"projection-{projection.NAME}")
        try:
            con = await asyncio.get_running_loop().run_in_executor(executor, _connect, path, projection)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(con, path, projection, executor)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def position(self, name: str = "") -> int:
        return await self._run(queries.position, self.con, name or self.projection.NAME)

    def _write(self, batch: list[tuple[int, Any]], name: str) -> int:
        writes = self.projection.plan(batch)
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            self.projection.write(con, writes, name)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return batch[-1][0] if batch else 0

    async def apply(self, batch: list[tuple[int, Any]], name: str = "", stream: str | None = None) -> int:
        """Fold a batch into the file in one transaction; returns the new position (row `name`, default its own).

        `stream` is the exchange read model's business (its shard rejections); a generic projection follows one.
        """
        return await self._run(self._write, batch, name or self.projection.NAME)

    async def close(self) -> None:
        try:
            await self._run(self.con.close)
        finally:
            self._executor.shutdown(wait=False)


async def open_live(path: Path | str, projection: SqliteProjection) -> Live:
    """The projection's own live model if it has one (`open(path)`, like the exchange's ReadModel), else LiveModel."""
    own = getattr(projection, "open", None)
    if own is not None:
        model: Live = await own(path)
        return model
    return await LiveModel.open(path, projection)
