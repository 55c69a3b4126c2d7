"""Projection workers: killed at any moment they resume exactly; a rebuild from 0 gives the same content."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.exchange import APP as EXCHANGE
from events.stream_readers import last_seq
from jetbook.server import EmbeddedServer
from projections.runner import ProjectionRunner
from protocol.subjects import EVT_STREAM
from replay.hashing import db_content_hash
from tests.conftest import wait_until
from tests.integration.harness import projection_position as position
from tests.integration.harness import publish_all, running_engine, wait_for_command, workload


async def rebuild(js: Any, db: Path, until: int) -> None:
    await ProjectionRunner(EXCHANGE, js, db, from_seq=0).run(asyncio.Event(), until_seq=until)


def _project_proc(url: str, db: Path, *extra: str) -> subprocess.Popen[bytes]:
    # Its log goes beside the db (read it when a test fails): a pipe nobody reads can fill and block the child.
    with db.with_suffix(".log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "jetbook", "project", "--nats-url", url, "--db", str(db), *extra],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


async def test_kill_9_mid_batch_loses_and_duplicates_nothing(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    last_cmd = await publish_all(js, workload(12_000, seed=3))
    async with running_engine(nc):
        await wait_for_command(js, last_cmd, timeout=120)
    end = await last_seq(js, EVT_STREAM)
    db = tmp_path / "live.db"
    positions = []
    for fraction in (0.15, 0.4, 0.7):
        proc = _project_proc(nats_server.url, db)

        async def past(f: float = fraction) -> bool:
            return position(db) >= int(end * f)

        await wait_until(past, 60, f"projection past {fraction:.0%}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        positions.append(position(db))
    assert positions == sorted(positions) and positions[-1] < end  # killed before the end, never went back
    proc = _project_proc(nats_server.url, db)
    try:

        async def at_end() -> bool:
            return position(db) == end

        await wait_until(at_end, 60, "projection to reach the end")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0

    fresh = tmp_path / "rebuilt.db"
    await rebuild(js, fresh, end)
    assert db_content_hash(db) == db_content_hash(fresh)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM trades").fetchone()[0] > 100


async def test_cli_rebuild_from_zero_matches_the_live_model(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    live_db = tmp_path / "live.db"
    last_cmd = await publish_all(js, workload(1500, seed=5))
    async with running_engine(nc):
        await wait_for_command(js, last_cmd)
        end = await last_seq(js, EVT_STREAM)
        live = ProjectionRunner(EXCHANGE, js, live_db)
        await live.run(asyncio.Event(), until_seq=end)
    rebuilt = tmp_path / "rebuilt.db"
    proc = _project_proc(nats_server.url, rebuilt, "--from-seq", "0")
    try:

        async def done() -> bool:
            return position(rebuilt) == end

        await wait_until(done, 60, "CLI rebuild to reach the end")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    assert db_content_hash(rebuilt) == db_content_hash(live_db)


async def test_from_seq_past_the_position_is_refused(js: Any, tmp_path: Path) -> None:
    db = tmp_path / "rm.db"
    from projections.read_model import ReadModel
    from tests.unit.helpers import Session

    model = await ReadModel.open(db)
    await model.apply(list(enumerate(Session(market=None).create("X"), 1)))
    await model.close()
    with pytest.raises(ValueError, match="gap"):
        await ProjectionRunner(EXCHANGE, js, db, from_seq=10).run(asyncio.Event(), until_seq=1)
