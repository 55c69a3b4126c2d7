"""The writing half of a rebuild, in its own process: decode, plan and write chunks of events into a new file.

    python -m replay.fold PROJECTION PATH FIRST_SEQ [APP] < frames

(APP: the module of another application's `APP`, framework/app.py; the exchange when absent.)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from engine.exchange import APP as EXCHANGE
from events.logged import LogCheck, Messages, decode_chunk, decode_fast
from events.stream_readers import subject_text
from framework.app import App, SqliteProjection, create_schema, load_app
from projections import queries
from protocol.errors import CorruptLog

__all__ = ["PROJECTIONS", "SqliteProjection", "fold", "main", "open_new"]

# The exchange's projections, by name. Each owns one SQLite file, and its `write` stores the position with the rows.
# Another application's are in its `App.projections` (framework/app.py).
PROJECTIONS: dict[str, SqliteProjection] = dict(EXCHANGE.projections)


@dataclass(slots=True)
class Frame:
    seqs: list[int]
    subjects: list[bytes]
    data: list[bytes]


def plan_checked(projection: SqliteProjection, batch: list[tuple[int, Any]], subjects: Iterable[bytes]) -> Any:
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


def open_new(path: Path, projection: SqliteProjection, first_seq: int, stream: str = "") -> sqlite3.Connection:
    """A fresh file set up for bulk writing: no journal, no fsync, secondary indexes off until `finish`."""
    con = sqlite3.connect(path, isolation_level=None)
    create_schema(con, projection.SCHEMA, journal="OFF")
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -262144")  # 256 MiB: the whole working set of a large model
    con.execute("PRAGMA temp_store = MEMORY")
    # Inserting into the tables alone and building each index once at the end is cheaper than
    # keeping the indexes up to date row by row. `finish` runs the schema again, which puts them back.
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall():
        con.execute(f'DROP INDEX "{name}"')
    # From N, a model that has folded nothing yet still says where it starts.
    queries.set_position(con, first_seq - 1, projection.NAME)
    if stream:  # another application's event stream (set_position names JB_EVT)
        con.execute("UPDATE projection_position SET stream = ? WHERE name = ?", (stream, projection.NAME))
    return con


def fold(
    con: sqlite3.Connection,
    projection: SqliteProjection,
    chunk: Messages,
    check: LogCheck | None = None,
    decode_event: Callable[[bytes], Any] = decode_fast,
) -> None:
    writes = plan_checked(projection, decode_chunk(chunk, check, decode_event), chunk.subjects)
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
    name, path_text, first_text, *rest = argv
    app: App = load_app(rest[0]) if rest else EXCHANGE
    projection = app.projections[name]
    decode_event = app.decider.decode
    stream = app.streams.evt if app is not EXCHANGE else ""
    path = Path(path_text)
    gc.disable()  # every decoded event lives until its chunk is written: the collector would only rescan them
    first_seq = int(first_text)
    con = open_new(path, projection, first_seq, stream)
    check = LogCheck(0 if first_seq <= 1 else None)  # from the start, the first event must be of command 1
    try:
        for chunk in prefetched(sys.stdin.buffer):
            fold(con, projection, chunk, check, decode_event)
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
