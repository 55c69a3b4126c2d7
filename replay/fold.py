"""The writing half of a rebuild, in its own process: decode, plan and write chunks of events into a new file.

    python -m replay.fold PROJECTION PATH FIRST_SEQ < frames

Why a process: decoding, planning and the SQL of one event cost about 10 µs
of Python, reading it from NATS about 3 µs more, and Python runs one thread
at a time. A writer thread in the reading process got no overlap at all (it
needs the GIL back after every row), so the two halves run in two processes
and the rebuild uses both cores. A third process (plan here, SQL in another,
the planned writes pickled between them) was measured ~5% faster on a quiet
machine and slower on a busy one, for ~20% more CPU in all (pickling, one
more interpreter): with two cores, CPU is the limit.

Frames on stdin: a 4-byte big-endian length, then msgpack `[seqs, subjects,
payloads]` (one chunk of consecutive JB_EVT messages); a zero length ends the
input. Exit status 0 once the file is finished (indexes built, WAL mode,
closed, fsynced); otherwise the error on stderr and status 1 (3 for a message
that is not a jetbook event).
"""

from __future__ import annotations

import gc
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgpack

from events.model import EVENT_TYPES, Event, decode
from events.reader import LogCheck, subject_text
from projections.read_model import ReadModel
from protocol.errors import CorruptLog


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


class Messages(Protocol):
    """Consecutive JB_EVT messages as parallel lists (events.reader.Chunk, or a Frame)."""

    @property
    def seqs(self) -> list[int]: ...

    @property
    def subjects(self) -> list[bytes]: ...

    @property
    def data(self) -> list[bytes]: ...


@dataclass(slots=True)
class Frame:
    seqs: list[int]
    subjects: list[bytes]
    data: list[bytes]


def _wire_layouts() -> dict[str, tuple[type[Event], tuple[str, ...]]]:
    return {kind: (cls, ("type", *(f.name for f in fields(cls)))) for kind, cls in EVENT_TYPES.items()}


_LAYOUTS = _wire_layouts()


def decode_fast(data: bytes, unpackb: Callable[..., Any] = msgpack.unpackb) -> Event:
    """`events.model.decode`, about 20% cheaper for a payload in exactly the layout `encode` writes.

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


def decode_chunk(chunk: Messages, check: LogCheck | None = None) -> list[tuple[int, Event]]:
    """The chunk's events; CorruptLog for one that does not decode, or (with `check`) is out of command order."""
    try:
        out = [(seq, decode_fast(data)) for seq, data in zip(chunk.seqs, chunk.data, strict=True)]
    except Exception:
        for seq, subject, data in zip(chunk.seqs, chunk.subjects, chunk.data, strict=True):
            try:
                decode(data)
            except Exception as err:
                raise CorruptLog(seq, subject_text(subject), err) from err
        raise
    if check is not None:
        for (seq, event), subject in zip(out, chunk.subjects, strict=True):
            _check(check, seq, subject, event.cmd_seq)
    return out


def _check(check: LogCheck, seq: int, subject: bytes, cmd_seq: object) -> None:
    """`check.check` without building the subject's text in the common case (this runs for every event)."""
    last = check.last
    if type(cmd_seq) is int and cmd_seq >= 1 and (last is None or 0 <= cmd_seq - last <= 1):
        check.last = cmd_seq
    else:
        check.check(seq, subject_text(subject), cmd_seq)


def plan_checked(projection: SqliteProjection, batch: list[tuple[int, Event]], subjects: Iterable[bytes]) -> Any:
    """`projection.plan`, or CorruptLog naming the event that does not fold (a fill of an unknown side, ...)."""
    try:
        return projection.plan(batch)
    except Exception:
        for (seq, event), subject in zip(batch, subjects, strict=True):
            try:
                projection.plan([(seq, event)])
            except Exception as err:
                raise CorruptLog(
                    seq, subject_text(subject), f"does not fold into {projection.NAME} ({type(err).__name__}: {err})"
                ) from err
        raise


def open_new(path: Path, projection: SqliteProjection, first_seq: int) -> sqlite3.Connection:
    """A fresh file set up for bulk writing: no journal, no fsync, secondary indexes off until `finish`."""
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(projection.SCHEMA)
    con.execute("PRAGMA journal_mode = OFF")
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -262144")  # 256 MiB: the whole working set of a large model
    con.execute("PRAGMA temp_store = MEMORY")
    # Inserting into the tables alone and building each index once at the end is cheaper than
    # keeping the indexes up to date row by row. `finish` runs the schema again, which puts them back.
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall():
        con.execute(f'DROP INDEX "{name}"')
    # From N, a model that has folded nothing yet still says where it starts.
    con.execute(
        "INSERT INTO projection_position VALUES (?, 'JB_EVT', ?)"
        " ON CONFLICT DO UPDATE SET last_seq = excluded.last_seq",
        (projection.NAME, first_seq - 1),
    )
    return con


def fold(con: sqlite3.Connection, projection: SqliteProjection, chunk: Messages, check: LogCheck | None = None) -> None:
    writes = plan_checked(projection, decode_chunk(chunk, check), chunk.subjects)
    con.execute("BEGIN")
    projection.write(con, writes, projection.NAME)
    con.execute("COMMIT")


def finish(con: sqlite3.Connection, path: Path, projection: SqliteProjection) -> None:
    """Indexes back, WAL mode as the live worker keeps it, closed (so -wal and -shm go) and fsynced."""
    try:
        con.executescript(projection.SCHEMA)
    finally:
        con.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def frames(stream: BinaryIO) -> Iterator[Frame]:
    while True:
        head = stream.read(4)
        if len(head) < 4:
            raise EOFError("input ended without its end frame")
        size = int.from_bytes(head, "big")
        if size == 0:
            return
        body = stream.read(size)
        if len(body) < size:
            raise EOFError("input ended inside a frame")
        seqs, subjects, data = msgpack.unpackb(body, use_list=True)
        yield Frame(seqs, subjects, data)


def prefetched(stream: BinaryIO) -> Iterator[Frame]:
    """`frames`, read one or two ahead on a thread: reading a pipe releases the GIL, so the next chunk
    arrives while this one is folded instead of after it."""
    ahead: queue.Queue[Frame | BaseException | None] = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for frame in frames(stream):
                ahead.put(frame)
            ahead.put(None)
        except BaseException as err:
            ahead.put(err)

    threading.Thread(target=pump, name="fold-input", daemon=True).start()
    while (item := ahead.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def encode_frame(chunk: Messages) -> bytes:
    body: bytes = msgpack.packb([chunk.seqs, chunk.subjects, chunk.data], use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


END_FRAME = (0).to_bytes(4, "big")


def main(argv: list[str]) -> int:
    name, path_text, first_text = argv
    projection = PROJECTIONS[name]
    path = Path(path_text)
    gc.disable()  # every decoded event lives until its chunk is written: the collector would only rescan them
    first_seq = int(first_text)
    con = open_new(path, projection, first_seq)
    check = LogCheck(0 if first_seq <= 1 else None)  # from the start, the first event must be of command 1
    try:
        for chunk in prefetched(sys.stdin.buffer):
            fold(con, projection, chunk, check)
    except CorruptLog as err:
        con.close()
        print(f"CorruptLog {err.seq}: {err}", file=sys.stderr)
        return 3
    except BaseException:
        con.close()
        raise
    finish(con, path, projection)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
