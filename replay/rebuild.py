"""Rebuild a projection from JB_EVT into a new SQLite file, then swap it in under the live path.

How it is fast (bench/replay.py measures it): JB_EVT is read with
events.reader.BulkReader (raw deliveries, no nats-py message objects), events
are decoded and planned in chunks of 10,000 on the event loop, and a writer
thread runs the SQL in one transaction per chunk on a fresh file with
`journal_mode=OFF`, `synchronous=OFF` and the secondary indexes dropped until
the end. sqlite3 releases the GIL while it steps, so the writer overlaps with
reading and decoding. The rows are exactly the live worker's: the same
`plan` and `write`, and the read model's content does not depend on batch
boundaries.

The new file is not crash-safe while it is built (no journal), and it need not
be: until the swap nothing points at it, and a failed rebuild deletes it. When
it has caught up it is finished in WAL mode (as the live worker uses it) and
closed, which checkpoints and removes its -wal and -shm, so it is one
self-contained file; then it is fsynced.

The swap. A WAL database must never be replaced by renaming another file over
its path while anyone has it open: its `-wal` and `-shm` sidecars are found by
path, so the old file's sidecars would be paired with the new file. So the
path (`--db`, default .jetbook/read_model.db) becomes a symlink to a generation
file beside it (`read_model.db.gen-<time>-<pid>`), and a swap is
`os.replace` of that symlink: atomic, and each generation has its own
sidecars (SQLite resolves the link before naming them). Readers that had the
old generation open keep a consistent (old) view until they reopen; the live
worker (projections/runner.py) notices the path now names another file and
reopens it, reading on from the new file's position. The previous generation
is unlinked; SQLite removes its sidecars when its last reader closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import msgpack

from commands.subjects import EVT_STREAM
from events.model import EVENT_TYPES, Event, decode
from events.reader import Chunk, read_range
from events.reader import last_seq as stream_last_seq
from jetbook.errors import CorruptLog, JetbookError
from projections.read_model import ReadModel

log = logging.getLogger("jetbook.replay")


class SqliteProjection(Protocol):
    """What a projection offers so that it can be rebuilt: its schema, and its fold split in plan and write."""

    @property
    def NAME(self) -> str: ...

    @property
    def SCHEMA(self) -> str: ...

    def plan(self, batch: Iterable[tuple[int, Event]], /) -> Any: ...

    def write(self, con: sqlite3.Connection, writes: Any, name: str, /) -> None: ...


# Name -> projection. Each owns one SQLite file, and its `write` stores the position with the rows.
PROJECTIONS: dict[str, SqliteProjection] = {ReadModel.NAME: ReadModel}

CHUNK = 10_000  # events decoded, planned and committed together
REMAINDER_ROUNDS = 3  # after the tail seen at start, read what arrived meanwhile this many times at most
GEN_MARK = ".gen-"


class RebuildError(JetbookError):
    pass


@dataclass(frozen=True, slots=True)
class Progress:
    done: int  # events folded so far
    total: int  # events to fold, as known now (grows if the log grows during the rebuild)
    seq: int  # JB_EVT sequence of the newest event folded


@dataclass(frozen=True, slots=True)
class RebuildResult:
    target: Path
    generation: Path
    projection: str
    from_seq: int
    position: int  # the new file's last JB_EVT sequence
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _wire_layouts() -> dict[str, tuple[type[Event], tuple[str, ...]]]:
    return {kind: (cls, ("type", *(f.name for f in fields(cls)))) for kind, cls in EVENT_TYPES.items()}


_LAYOUTS = _wire_layouts()


def decode_fast(data: bytes, unpackb: Callable[..., Any] = msgpack.unpackb) -> Event:
    """`events.model.decode`, about 40% cheaper for a payload in exactly the layout `encode` writes.

    `encode` writes "type" and then every field in declaration order, so for
    such a payload the values are the constructor's positional arguments, and
    building the keyword dict that `from_wire` needs is skipped. Anything else
    (fields missing, extra, reordered, an unknown type) goes through `decode`.
    tests/unit/test_replay_decode.py holds the two equal for every event type.
    """
    body = unpackb(data)
    layout = _LAYOUTS.get(body.get("type", "")) if type(body) is dict else None
    if layout is not None and tuple(body) == layout[1]:
        values = list(body.values())
        return layout[0](*values[1:])
    return decode(data)


def decode_chunk(chunk: Chunk) -> list[tuple[int, Event]]:
    try:
        return [(seq, decode_fast(data)) for seq, data in zip(chunk.seqs, chunk.data, strict=True)]
    except Exception:
        for seq, subject, data in zip(chunk.seqs, chunk.subjects, chunk.data, strict=True):
            try:
                decode(data)
            except Exception as err:
                raise CorruptLog(seq, subject.decode(errors="replace"), err) from err
        raise


_END = object()


class _Writer:
    """The SQLite side of a rebuild, on its own thread: a fresh file, no journal, large transactions."""

    def __init__(self, path: Path, projection: SqliteProjection, first_seq: int) -> None:
        self.path = path
        self.projection = projection
        self.first_seq = first_seq
        self.error: BaseException | None = None
        self._q: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rebuild-{projection.NAME}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        p = self.projection
        try:
            con = sqlite3.connect(self.path, isolation_level=None)
            try:
                con.executescript(p.SCHEMA)
                con.execute("PRAGMA journal_mode = OFF")
                con.execute("PRAGMA synchronous = OFF")
                con.execute("PRAGMA cache_size = -262144")  # 256 MiB: the whole working set of a large model
                con.execute("PRAGMA temp_store = MEMORY")
                # Inserting into the tables alone and building each index once at the end is cheaper
                # than keeping the indexes up to date row by row. The schema puts them back.
                indexes = con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
                for (name,) in indexes.fetchall():
                    con.execute(f'DROP INDEX "{name}"')
                # From N, a model that has folded nothing yet still says where it starts.
                con.execute("BEGIN")
                con.execute(
                    "INSERT INTO projection_position VALUES (?, 'JB_EVT', ?)"
                    " ON CONFLICT DO UPDATE SET last_seq = excluded.last_seq",
                    (p.NAME, self.first_seq - 1),
                )
                con.execute("COMMIT")
                self._ready.set()
                while (writes := self._q.get()) is not _END:
                    con.execute("BEGIN")
                    p.write(con, writes, p.NAME)
                    con.execute("COMMIT")
                con.executescript(p.SCHEMA)  # indexes back, journal_mode = WAL as the live worker keeps it
            finally:
                con.close()  # the last connection: checkpoints the WAL and deletes -wal and -shm
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as err:
            self.error = err
            self._ready.set()
            with contextlib.suppress(queue.Empty):
                while True:  # unblock a producer waiting on a full queue
                    self._q.get_nowait()

    def _put_blocking(self, item: Any) -> None:
        while self.error is None:
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise self.error

    async def put(self, writes: Any) -> None:
        if self.error is not None:
            raise self.error
        try:
            self._q.put_nowait(writes)
        except queue.Full:
            await asyncio.to_thread(self._put_blocking, writes)

    async def finish(self) -> None:
        await self.put(_END)
        await asyncio.to_thread(self._thread.join)
        if self.error is not None:
            raise self.error

    async def abandon(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(BaseException):
                await self.put(_END)
            await asyncio.to_thread(self._thread.join, 30)


@contextlib.contextmanager
def _rebuild_lock(target: Path) -> Iterator[None]:
    """One rebuild per target at a time: it owns the generation files beside the target."""
    lock_path = target.with_name(f".{target.name}.rebuild.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise RebuildError(f"another rebuild of {target} is running") from err
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generation_path(target: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return target.with_name(f"{target.name}{GEN_MARK}{stamp}-{os.getpid()}-{time.monotonic_ns() % 1_000_000:06d}")


def swap_in(generation: Path, target: Path) -> None:
    """Point `target` at `generation` atomically; unlink the generation it pointed at before, if ours."""
    old: Path | None = None
    was_file = target.exists() and not target.is_symlink()
    if target.is_symlink():
        old = target.resolve()
    link = target.with_name(f".{target.name}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    os.symlink(generation.name, link)  # relative: the pair can be moved together
    os.replace(link, target)
    _fsync_dir(target.parent)
    if was_file:
        # The replaced file's sidecars are named after the path, not after the generation the path now
        # resolves to, so no one opens them again, unless the link is someday replaced by a plain file:
        # then SQLite would replay a stale WAL into it. Its old readers hold them open and do not care.
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{target}{suffix}").unlink()
    if old is not None and old != generation.resolve() and _is_generation(old, target):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    _remove_leftovers(target, keep={generation.name, old.name if old else ""})


def _is_generation(path: Path, target: Path) -> bool:
    return path.parent == target.parent.resolve() and path.name.startswith(target.name + GEN_MARK)


def _remove_leftovers(target: Path, keep: set[str]) -> None:
    """Generations of failed or killed rebuilds, and sidecars whose database is gone (their readers are too)."""
    prefix = target.name + GEN_MARK
    for path in target.parent.iterdir():
        name = path.name
        if not name.startswith(prefix) or name in keep:
            continue
        base = name.removesuffix("-wal").removesuffix("-shm").removesuffix("-journal")
        if base in keep:
            continue
        if base == name or not (target.parent / base).exists():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def rebuild(
    js: Any,
    target: Path | str,
    projection: str = ReadModel.NAME,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    chunk: int = CHUNK,
    swap: bool = True,
) -> RebuildResult:
    """Fold JB_EVT from `from_seq` to `to_seq` (default: the tail, then whatever arrived meanwhile) into a new file.

    With `swap`, the new file then replaces `target` atomically (see the module docstring).
    """
    spec = PROJECTIONS.get(projection)
    if spec is None:
        raise RebuildError(f"unknown projection {projection!r}; known: {', '.join(sorted(PROJECTIONS))}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = max(from_seq, 1)
    tail = await stream_last_seq(js, EVT_STREAM)
    if to_seq is not None and to_seq > tail:
        raise RebuildError(f"--to-seq {to_seq} is past the end of JB_EVT ({tail})")
    if to_seq is not None and to_seq < start - 1:
        raise RebuildError(f"--to-seq {to_seq} is before --from-seq {start}")
    end = tail if to_seq is None else to_seq
    with _rebuild_lock(target):
        generation = generation_path(target)
        started = time.perf_counter()
        writer = _Writer(generation, spec, start)
        done = 0
        position = start - 1
        # Decoding makes many small objects that all live until their chunk is written: the collector
        # would scan them again and again for nothing. Suspended for the rebuild, then run once.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            rounds = 0
            while True:
                async for part in read_range(js, EVT_STREAM, position + 1, end, chunk=chunk):
                    await writer.put(spec.plan(decode_chunk(part)))
                    done += len(part)
                    position = part.seqs[-1]
                    if on_progress is not None:
                        on_progress(Progress(done, end - start + 1, position))
                if to_seq is not None or rounds >= REMAINDER_ROUNDS:
                    break
                newest = await stream_last_seq(js, EVT_STREAM)
                if newest <= end:
                    break
                end, rounds = newest, rounds + 1
            await writer.finish()
        except BaseException:
            await writer.abandon()
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{generation}{suffix}").unlink()
            raise
        finally:
            if gc_was_enabled:
                gc.enable()
        gc.collect()
        if position != end:
            raise RebuildError(f"read JB_EVT to {position}, expected {end}")
        if swap:
            swap_in(generation, target)
        seconds = time.perf_counter() - started
    log.info("rebuilt %s from %d to %d: %d events in %.2fs", target, start, position, done, seconds)
    return RebuildResult(target, generation, projection, start, position, done, seconds)
