"""Faults under load, on real processes and a real nats-server, each judged against a crash-free run.

The verdict (`harness.assert_matches_crash_free`): JB_EVT holds exactly the
bytes a fresh core gives for JB_CMD, an engine recovering from the newest
snapshot and the log has the crash-free state hash, and the live projection's
SQLite file has the content of a read model built from the crash-free events.

Small snapshot and checkpoint intervals make every restart load a snapshot
and verify checkpoints on the way. `JETBOOK_FAULT_SCALE=N` multiplies the
workload (a longer soak); the default keeps the suite fast.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from events.stream_readers import last_seq
from jetbook.server import EmbeddedServer
from protocol.subjects import CMD_STREAM, EVT_STREAM, HDR_MSG_ID
from tests.conftest import wait_until
from tests.integration.harness import (
    assert_matches_crash_free,
    jetbook_proc,
    log_has,
    projection_position,
    stop_proc,
    wait_for_command,
    workload,
)  # fmt: skip

# Both are long fault runs: marked, so that `JETBOOK_FAULT_SCALE=10 pytest -m slow` runs them (CI runs them at 1).
pytestmark = pytest.mark.slow
SCALE = max(1, int(os.environ.get("JETBOOK_FAULT_SCALE", "1")))
CHECKPOINTS = 700
ENGINE_OPTS = ("--snapshot-every", "500", "--checkpoint-every", str(CHECKPOINTS), "--lease-ttl", "1.0")


def _engine(url: str, log: Path) -> Any:
    return jetbook_proc(log, "engine", "--nats-url", url, *ENGINE_OPTS)


def _projection(url: str, db: Path) -> Any:
    return jetbook_proc(db.with_suffix(".log"), "project", "--nats-url", url, "--db", str(db))


_UNANSWERED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError,
               nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError)  # fmt: skip


async def _publish(js: Any, commands: list[tuple[str, bytes]], rng: random.Random) -> int:
    """In windows of 50, each command with its own Nats-Msg-Id, retried until acknowledged (the broker drops repeats).

    A short random pause between windows lets faults land while commands are still arriving.
    """

    async def one(i: int) -> None:
        subject, data = commands[i]

        async def acknowledged() -> bool:  # unanswered while the server restarts: asked again
            try:
                await js.publish(subject, data, headers={HDR_MSG_ID: f"fault-{i}"}, timeout=2)
            except _UNANSWERED:
                return False
            return True

        await wait_until(acknowledged, 60, f"command {i} to be acknowledged")

    for start in range(0, len(commands), 50):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 50, len(commands)))))
        # The sleep is the event itself: the load's pace. Spreading the windows out in time is what lets a
        # fault land while commands are still arriving; nothing waits on this pause.
        await asyncio.sleep(rng.uniform(0, 0.01))
    return await last_seq(js, CMD_STREAM)


async def _all_decided_and_projected(js: Any, publisher: asyncio.Task[int], db: Path) -> None:
    """Every command published has its events, and the projection has folded all of them."""
    await wait_for_command(js, await publisher, timeout=120)
    end = await last_seq(js, EVT_STREAM)

    async def projected() -> bool:
        return projection_position(db) == end

    await wait_until(projected, 60, "the projection to reach the end")


_ENGINE_AT_WORK = "active: deciding from command"  # engine.service, once per engine that takes the lease
_PROJECTION_AT_WORK = "; reading "  # projections.runner: "projection <db> at <n>; reading <stream> from <n>"


def _size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


async def _started(log: Path, line: str, offset: int) -> None:
    """The role's log (shared by its incarnations) holds `line` after `offset`, where the newest one began."""

    async def logged() -> bool:
        return line in log.read_bytes()[offset:].decode(errors="replace")

    await wait_until(logged, 60, f"{line!r} in {log.name} after byte {offset}")


async def _at_least(js: Any, seq: int) -> bool:
    try:
        return await last_seq(js, EVT_STREAM) >= seq
    except (nats.errors.Error, TimeoutError):
        return False


async def test_kill_9_engine_and_projection_at_random_points_under_load(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    rng = random.Random(41)
    url, db, engine_log = nats_server.url, tmp_path / "live.db", tmp_path / "engine.log"
    commands = workload(4000 * SCALE, seed=41)
    publisher = asyncio.create_task(_publish(js, commands, rng))
    engine_from, projection_from = _size(engine_log), _size(db.with_suffix(".log"))  # where each one's log begins
    engine, projection = _engine(url, engine_log), _projection(url, db)
    kills = {"engine": 0, "projection": 0}
    try:
        for threshold in sorted(rng.sample(range(300, 4000 * SCALE), 6)):

            async def past(t: int = threshold) -> bool:
                return await _at_least(js, t)

            await wait_until(past, 60, f"JB_EVT past {threshold}")
            if rng.random() < 0.5 or kills["projection"] >= 3:
                engine.send_signal(signal.SIGKILL)
                engine.wait()
                kills["engine"] += 1
                engine_from, engine = _size(engine_log), _engine(url, engine_log)
            else:
                before = projection_position(db)

                async def moved(b: int = before) -> bool:
                    return projection_position(db) > b

                await wait_until(moved, 60, "the projection to commit something")
                projection.send_signal(signal.SIGKILL)
                projection.wait()
                kills["projection"] += 1
                projection_from, projection = _size(db.with_suffix(".log")), _projection(url, db)
        await _all_decided_and_projected(js, publisher, db)
        # The status asserted below is a running role's clean stop. A role restarted just before the end may
        # still be importing (it has no SIGTERM handler yet, so the signal's default would end it): wait until
        # the newest incarnation of each has said it is at work.
        await _started(engine_log, _ENGINE_AT_WORK, engine_from)
        await _started(db.with_suffix(".log"), _PROJECTION_AT_WORK, projection_from)
    finally:
        publisher.cancel()
        engine_status, projection_status = stop_proc(engine), stop_proc(projection)
    assert engine_status == 0 and projection_status == 0
    assert kills["engine"] >= 1 and kills["projection"] >= 1, kills
    assert log_has(engine_log, "snapshot engine-")  # the verdict's recovery starts from one of them
    assert (await js.stream_info(CMD_STREAM)).state.messages == len(commands)
    await assert_matches_crash_free(js, nc, live_db=db, checkpoint_every=CHECKPOINTS)


async def test_nats_server_restart_under_load_loses_nothing(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    url, db, engine_log = nats_server.url, tmp_path / "live.db", tmp_path / "engine.log"
    port = int(url.rsplit(":", 1)[1])
    commands = workload(3000 * SCALE, seed=42)
    engine, projection = _engine(url, engine_log), _projection(url, db)
    publisher = asyncio.create_task(_publish(js, commands, random.Random(42)))
    server = nats_server
    try:

        async def busy() -> bool:
            return await _at_least(js, 1500 * SCALE)

        await wait_until(busy, 60, "the engine to be under load")
        server.kill()  # SIGKILL: no shutdown; the store is recovered from its files
        server = EmbeddedServer(nats_server.data_dir, port=port)  # same store, same port
        server.start()
        await _all_decided_and_projected(js, publisher, db)
        assert engine.poll() is None and projection.poll() is None  # reconnected, never restarted
        engine_status, projection_status = stop_proc(engine), stop_proc(projection)
        assert engine_status == 0 and projection_status == 0
        assert (await js.stream_info(CMD_STREAM)).state.messages == len(commands)
        await assert_matches_crash_free(js, nc, live_db=db, checkpoint_every=CHECKPOINTS)
    finally:
        publisher.cancel()
        stop_proc(engine), stop_proc(projection)
        if server is not nats_server:
            server.stop()
