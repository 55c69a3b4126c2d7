"""Rebuild a projection from JB_EVT into a new SQLite file, then swap it in under the live path.

How it is fast (bench/replay.py measures it): two processes, so that both
cores work. This one reads JB_EVT with events.stream_readers.BulkReader (raw
deliveries, no nats-py message objects) and pipes chunks of 10,000 raw
messages to a child, `python -m replay.fold`, which decodes them in bulk,
plans them with the projection's own `plan` and writes them with its own
`write`, one transaction per chunk, into a fresh file with `journal_mode=OFF`,
`synchronous=OFF` and the secondary indexes dropped until the end. (A writer
thread in one process got no overlap: Python runs one thread at a time.) The
rows are exactly the live worker's, and the read model's content does not
depend on batch boundaries.

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
import logging
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.exchange import APP as EXCHANGE
from events.stream_readers import Chunk, read_range
from events.stream_readers import last_seq as stream_last_seq
from framework.app import App
from protocol.errors import JetbookError
from replay.fold import END_FRAME, PROJECTIONS, SqliteProjection, encode_frame

__all__ = ["PROJECTIONS", "RebuildError", "RebuildResult", "SqliteProjection", "rebuild"]

log = logging.getLogger("jetbook.replay")


CHUNK = 10_000  # events decoded, planned and written together (one SQLite transaction)
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


class _Folder:
    """The writing half (replay/fold.py) as a child process, fed chunks of raw messages through a pipe."""

    def __init__(self, path: Path, projection: str, first_seq: int, app_ref: str | None = None) -> None:
        self.path = path
        self.projection = projection
        self.first_seq = first_seq
        self.app_ref = app_ref  # another application's module (framework.app.load_app); None: the exchange
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr = tempfile.TemporaryFile()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "replay.fold", self.projection, str(self.path), str(self.first_seq),
            *([self.app_ref] if self.app_ref else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=self._stderr,
        )  # fmt: skip
        pipe = self.proc.stdin.get_extra_info("pipe") if self.proc.stdin is not None else None
        if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # a bigger pipe (Linux): fewer wake-ups per chunk
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)

    def _failure(self, rc: int | None) -> RebuildError:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return RebuildError(f"writing {self.path.name} failed (status {rc}): {text[-2000:] or 'no message'}")

    async def _send(self, frame: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(frame)
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as err:
            raise self._failure(await self.proc.wait()) from err

    async def put(self, chunk: Chunk) -> None:
        await self._send(encode_frame(chunk))

    async def finish(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        await self._send(END_FRAME)
        self.proc.stdin.close()
        rc = await self.proc.wait()
        if rc != 0:
            raise self._failure(rc)
        self._stderr.close()

    async def abandon(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._stderr.close()


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
    projection: str | None = None,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    chunk: int = CHUNK,
    swap: bool = True,
    app: App = EXCHANGE,
) -> RebuildResult:
    """Fold JB_EVT from `from_seq` to `to_seq` (default: the tail, then whatever arrived meanwhile) into a new file.

    With `swap`, the new file then replaces `target` atomically (see the module docstring). `projection` is
    one of `app`'s (framework/app.py), by name: by default its first (the exchange: the read model).
    """
    known = app.projections
    if projection is None:
        projection = next(iter(known), "")
    if projection not in known:
        raise RebuildError(f"unknown projection {projection!r}; known: {', '.join(sorted(known))}")
    stream = app.streams.evt
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = max(from_seq, 1)
    tail = await stream_last_seq(js, stream)
    if to_seq is not None and to_seq > tail:
        raise RebuildError(f"--to-seq {to_seq} is past the end of {stream} ({tail})")
    if to_seq is not None and to_seq < start - 1:
        raise RebuildError(f"--to-seq {to_seq} is before --from-seq {start}")
    end = tail if to_seq is None else to_seq
    with _rebuild_lock(target):
        generation = generation_path(target)
        started = time.perf_counter()
        writer = _Folder(generation, projection, start, None if app is EXCHANGE else app.ref)
        done = 0
        position = start - 1
        try:
            await writer.start()
            rounds = 0
            while True:
                async for part in read_range(js, stream, position + 1, end, chunk=chunk):
                    await writer.put(part)
                    done += len(part)
                    position = part.seqs[-1]
                    if on_progress is not None:
                        on_progress(Progress(done, end - start + 1, position))
                if to_seq is not None or rounds >= REMAINDER_ROUNDS:
                    break
                newest = await stream_last_seq(js, stream)
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
        if position != end:
            raise RebuildError(f"read {stream} to {position}, expected {end}")
        if swap:
            swap_in(generation, target)
        seconds = time.perf_counter() - started
    log.info("rebuilt %s from %d to %d: %d events in %.2fs", target, start, position, done, seconds)
    return RebuildResult(target, generation, projection, start, position, done, seconds)


async def rebuild_shards(
    js: Any, target: Path | str, shards: int, *, swap: bool = True, until: dict[str, int] | None = None
) -> RebuildResult:
    """A sharded venue's read model, from every JB_EVT_k's start to its tail now (or to `until`'s position for each
    shard stream: the venue as it was then), into a new file swapped in.

    Folded by the live worker's own code (projections.runner, one reader per shard, a position per shard
    stream) into the new generation, not the two-process bulk fold: slower, and the same rows and positions as
    the live file by construction. `position` is the sum of the shards' (per-shard positions: the file's).
    """
    from projections.runner import ProjectionRunner, shard_streams

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    streams = shard_streams(EXCHANGE, shards)
    with _rebuild_lock(target):
        generation = generation_path(target)
        started = time.perf_counter()
        ends = {s: await stream_last_seq(js, s) for s in streams}
        if until is not None:
            if set(until) != set(streams):
                raise RebuildError(f"a position for each of {', '.join(streams)} is needed, not {sorted(until)}")
            beyond = [f"{s} {until[s]} (its tail is {ends[s]})" for s in streams if until[s] > ends[s]]
            if beyond:
                raise RebuildError(f"past the end of the log: {', '.join(beyond)}")
            ends = {s: until[s] for s in streams}
        try:
            runner = ProjectionRunner(EXCHANGE, js, generation, shards=shards, batch=CHUNK)
            await runner.run(asyncio.Event(), until=ends)
            con = sqlite3.connect(generation)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
        except BaseException:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{generation}{suffix}").unlink()
            raise
        if swap:
            swap_in(generation, target)
        seconds = time.perf_counter() - started
    done = sum(ends.values())
    log.info("rebuilt %s from %d shards: %s in %.2fs", target, shards, ends, seconds)
    return RebuildResult(target, generation, "read_model", 1, done, done, seconds)
