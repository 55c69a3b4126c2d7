"""Helpers for integration tests: run roles in-process, read whole streams, re-decide the command log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from engine.core import CHECKPOINT_EVERY, Engine, state_hash
from engine.exchange import APP as EXCHANGE
from engine.service import EngineService
from events.model import encode
from events.stream_readers import RawMsg, StreamReader, last_seq, read_to_end
from projections.runner import ProjectionRunner
from protocol.barrier import barrier
from protocol.subjects import CMD_STREAM, EVT_STREAM
from tests.conftest import wait_until


@contextlib.asynccontextmanager
async def running_engine(nc: Any, **options: Any) -> AsyncIterator[EngineService]:
    service = EngineService(nc, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def running_projection(js: Any, db: Path) -> AsyncIterator[ProjectionRunner]:
    runner = ProjectionRunner(EXCHANGE, js, db)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def read_all(js: Any, stream: str) -> list[RawMsg]:
    if not await last_seq(js, stream):
        return []
    async with StreamReader(js, stream, 1) as reader:
        return [m for batch in await read_to_end(reader) for m in batch]


async def wait_for_command(js: Any, cmd_seq: int, timeout: float = 20.0) -> None:
    """Until JB_EVT holds the events of command `cmd_seq` (every command has at least one)."""
    from events.model import decode

    async def done() -> bool:
        try:
            seq = await last_seq(js, EVT_STREAM)
            if not seq:
                return False
            msg = await js.get_msg(EVT_STREAM, seq)
        except (nats.errors.Error, TimeoutError):  # the server may be restarting: ask again
            return False
        return decode(msg.data).cmd_seq >= cmd_seq

    await wait_until(done, timeout, f"events of command {cmd_seq}")


async def crash_free(js: Any, checkpoint_every: int = CHECKPOINT_EVERY) -> tuple[list[bytes], str]:
    """What a run without any crash makes of the same JB_CMD: every event's bytes, and the final state hash."""
    engine = Engine(checkpoint_every=checkpoint_every)
    out: list[bytes] = []
    for m in await read_all(js, CMD_STREAM):
        out += [encode(e) for e in engine.handle(m.seq, m.ts, m.subject, m.data)]
    return out, state_hash(engine.state)


async def redecide(js: Any, checkpoint_every: int = CHECKPOINT_EVERY) -> list[bytes]:
    """Every command of JB_CMD through a fresh core: the event bytes JB_EVT must hold."""
    return (await crash_free(js, checkpoint_every))[0]


async def assert_log_is_exact(js: Any, checkpoint_every: int = CHECKPOINT_EVERY) -> list[RawMsg]:
    """JB_EVT equals the re-decided command log byte for byte: nothing missing, nothing twice."""
    events = await read_all(js, EVT_STREAM)
    assert [m.data for m in events] == await redecide(js, checkpoint_every)
    return events


async def read_model_of(events: list[bytes], db: Path) -> str:
    """The content hash of a read model built from these events (JB_EVT sequences 1..n), in batches."""
    from events.model import decode
    from projections.read_model import ReadModel
    from replay.hashing import db_content_hash

    model = await ReadModel.open(db)
    try:
        for i in range(0, len(events), 5000):
            await model.apply([(seq, decode(b)) for seq, b in enumerate(events[i : i + 5000], i + 1)])
    finally:
        await model.close()
    return db_content_hash(db)


async def assert_matches_crash_free(
    js: Any, nc: Any, *, live_db: Path | None = None, checkpoint_every: int = CHECKPOINT_EVERY
) -> list[bytes]:
    """The fault tests' verdict: the same events, state and read model as a run of the same JB_CMD without crashes.

    - JB_EVT holds exactly the bytes a fresh core gives for JB_CMD (nothing lost, nothing twice, no fork);
    - an engine recovering now (newest snapshot + tail, checkpoints verified) has the crash-free state hash;
    - the live projection's file has the content of a read model built from the crash-free events.
    """
    from replay.hashing import db_content_hash

    expected, expected_hash = await crash_free(js, checkpoint_every)
    stored = [m.data for m in await read_all(js, EVT_STREAM)]
    assert len(stored) == len(expected), f"JB_EVT has {len(stored)} events, a crash-free run {len(expected)}"
    assert stored == expected
    fresh = EngineService(nc, checkpoint_every=checkpoint_every, snapshot_every=0)
    await fresh.recover()
    assert state_hash(fresh.engine.state) == expected_hash
    if live_db is not None:
        reference = live_db.with_name(live_db.stem + "-crash-free.db")
        assert db_content_hash(live_db) == await read_model_of(expected, reference)
    return expected


def workload(n: int, seed: int = 1, markets: tuple[str, ...] = ("M1", "M2")) -> list[tuple[str, bytes]]:
    """A seeded command log: markets first, then places around a mid and cancels of earlier ids."""
    import random

    import msgpack

    rng = random.Random(seed)
    out = [(f"jb.ctl.{m}", msgpack.packb({"type": "create_market", "market_id": m, "base": "B", "quote": "Q"}))
           for m in markets]  # fmt: skip
    placed: dict[str, int] = dict.fromkeys(markets, 0)
    for i in range(n):
        m = rng.choice(markets)
        account = rng.choice(["a", "b", "c", "d"])
        if placed[m] and rng.random() < 0.25:
            body = {"type": "cancel_order", "order_id": rng.randint(1, placed[m])}
        else:
            placed[m] += 1
            body = {"type": "place_order", "client_order_id": f"w{i}", "side": rng.choice(["buy", "sell"]),
                    "price": rng.randint(990, 1010), "qty": rng.randint(1, 20)}  # fmt: skip
        out.append((f"jb.cmd.{m}.{account}", msgpack.packb(body)))
    return out


async def publish_all(js: Any, commands: list[tuple[str, bytes]]) -> int:
    """Publish in order with acks pipelined; returns the last command's sequence."""
    for subject, data in commands:
        await js.publish_async(subject, data)
    await js.publish_async_completed()
    return await last_seq(js, CMD_STREAM)


def jetbook_proc(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`python -m jetbook <args>` with its log in a file (read it when a test fails; a full pipe would block it)."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "jetbook", *args], stdout=out, stderr=subprocess.STDOUT)


def log_has(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


def stop_proc(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM, then SIGKILL if it does not stop in time; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def projection_position(db: Path) -> int:
    """The position a projection's SQLite file has committed (0 before its first commit)."""
    import sqlite3

    from projections import queries

    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return queries.position(con)
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        con.close()


async def scatter(nc: Any, subject: str, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The JSON answers to one request that every instance answers (a micro status), once `want` have come, or
    those that came in `timeout`: fewer than wanted is an answer too, which the caller judges."""
    inbox = nc.new_inbox()
    got: list[dict[str, Any]] = []

    async def keep(msg: Any) -> None:
        got.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=keep)
    await barrier(nc)
    await nc.publish(subject, b"", reply=inbox)

    async def enough() -> bool:
        return len(got) >= want

    with contextlib.suppress(pytest.fail.Exception):
        await wait_until(enough, timeout=timeout, what=f"{want} answers on {subject}")
    await sub.unsubscribe()
    return got


STATUS_WAIT = "0.5"  # `jetbook status`'s collection window: the roles here answer within milliseconds


async def jetbook_status(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`jetbook status` as a user runs it, in a child process (the roles under test share this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetbook", "status", "--nats-url", url, "--wait", STATUS_WAIT, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def status_json(url: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    code, out, err = await jetbook_status(url, "--json", env=env)
    assert code in (0, 1), err
    doc: dict[str, Any] = json.loads(out)
    return code, doc
