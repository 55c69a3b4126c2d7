"""`jetbook replay` on a real nats-server and real SQLite files: rebuild and swap, verify, time travel."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from commands.client import CommandClient
from engine.core import Engine
from engine.exchange import APP as EXCHANGE
from events.model import Checkpoint, Event, decode, encode
from events.stream_readers import last_seq
from jetbook.server import EmbeddedServer
from projections.read_model import ReadModel
from projections.runner import ProjectionRunner
from protocol.subjects import CMD_STREAM, EVT_STREAM, wal_subject
from replay.at import query, state_at
from replay.hashing import db_content_hash
from replay.rebuild import RebuildError, rebuild
from replay.verify import verify
from tests.conftest import wait_until
from tests.integration.harness import projection_position as position
from tests.integration.harness import publish_all, read_all, running_engine, wait_for_command, workload

SAMPLE_EVERY_S = 0.01  # how often a reader opens the path while a rebuild swaps it


def jetbook(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JETBOOK_NATS_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "jetbook", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


async def fold_exactly(js: Any, db: Path, start: int, end: int) -> None:
    """A read model of exactly JB_EVT start..end, folded by the live worker's code in one batch.

    One batch, because from start > 1 the content depends on batch boundaries: fills and cancels of
    orders placed before `start` are deltas to book levels the model never saw (DECISIONS.md, Replay).
    """
    msgs = [m for m in await read_all(js, EVT_STREAM) if start <= m.seq <= end]
    model = await ReadModel.open(db)
    try:
        await model.apply([(m.seq, decode(m.data)) for m in msgs])
    finally:
        await model.close()


async def generated_log(nc: Any, js: Any, n: int, seed: int) -> int:
    last_cmd = await publish_all(js, workload(n, seed=seed))
    async with running_engine(nc):
        await wait_for_command(js, last_cmd, timeout=60)
    return await last_seq(js, EVT_STREAM)


async def test_rebuild_from_zero_equals_the_live_model_and_from_to_is_exactly_that_range(
    nc: Any, js: Any, tmp_path: Path
) -> None:
    end = await generated_log(nc, js, 1500, seed=21)
    live = tmp_path / "live.db"
    await ProjectionRunner(EXCHANGE, js, live).run(asyncio.Event(), until_seq=end)
    assert position(live) == end

    result = await rebuild(js, tmp_path / "rb" / "rm.db", chunk=700)  # chunks that do not divide the log
    assert (result.from_seq, result.position, result.events) == (1, end, end)
    assert db_content_hash(tmp_path / "rb" / "rm.db") == db_content_hash(live)

    n, m = 400, end - 300
    ranged = tmp_path / "ranged" / "rm.db"
    result = await rebuild(js, ranged, from_seq=n, to_seq=m)
    assert (result.position, result.events) == (m, m - n + 1)
    expected = tmp_path / "expected.db"
    await fold_exactly(js, expected, n, m)
    assert db_content_hash(ranged) == db_content_hash(expected)
    con = sqlite3.connect(ranged)
    assert con.execute("SELECT MIN(created_seq) >= ?, MAX(created_seq) <= ? FROM orders", (n, m)).fetchone() == (1, 1)
    assert con.execute("SELECT last_seq FROM projection_position").fetchone() == (m,)


async def test_rebuild_at_positions_per_shard_is_refused_on_a_one_shard_venue(
    nats_server: EmbeddedServer, js: Any, tmp_path: Path
) -> None:
    target = tmp_path / "rm.db"
    args = ("replay", "rebuild", "--db", str(target), "--at", "JB_EVT=1")
    done = await asyncio.to_thread(jetbook, nats_server.url, *args)
    assert done.returncode == 2 and "a one-shard venue takes --to-seq" in done.stderr, done.stderr
    assert not target.exists()


async def test_the_swap_is_atomic_and_a_running_worker_reopens_the_new_file(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    commands = workload(2400, seed=22)
    target = tmp_path / "data" / "read_model.db"
    target.parent.mkdir()
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "jetbook", "project", "--nats-url", nats_server.url, "--db", str(target)],
            stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    try:
        async with running_engine(nc):
            first = await publish_all(js, commands[:1200])
            await wait_for_command(js, first)
            end1 = await last_seq(js, EVT_STREAM)

            async def worker_at_end1() -> bool:
                return position(target) == end1

            await wait_until(worker_at_end1, 30, "the worker to fold the first part")
            assert not target.is_symlink()

            # Readers opening the path during the rebuild always find a whole database.
            seen: list[int] = []
            reading = True

            async def read_all_along() -> None:
                while reading:
                    seen.append(position(target))
                    # The sleep is the event itself: the sampling interval. This task opens the path over
                    # and over while the rebuild runs, and the assertion is on what it saw; nothing waits on it.
                    await asyncio.sleep(SAMPLE_EVERY_S)

            reader = asyncio.create_task(read_all_along())
            done = await asyncio.to_thread(jetbook, nats_server.url, "replay", "rebuild", "--db", str(target))
            reading = False
            await reader
            assert done.returncode == 0, done.stderr
            assert "swapped in" in done.stdout
            assert target.is_symlink() and target.resolve().name.startswith("read_model.db.gen-")
            assert seen and min(seen) >= end1

            last = await publish_all(js, commands[1200:])
            await wait_for_command(js, last)
            end2 = await last_seq(js, EVT_STREAM)

            async def worker_at_end2() -> bool:
                return position(target) == end2

            await wait_until(worker_at_end2, 30, "the worker to carry on in the swapped-in file")
        assert worker.poll() is None, log.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, log.read_text()
    assert "reopened" in log.read_text()
    fresh = tmp_path / "fresh" / "rm.db"
    await rebuild(js, fresh)
    assert db_content_hash(target) == db_content_hash(fresh)
    # No sidecar but the current generation's (left by read-only readers, as SQLite does).
    sidecars = {p.name for p in target.parent.iterdir() if p.name.endswith(("-wal", "-shm"))}
    assert sidecars <= {f"{target.resolve().name}-wal", f"{target.resolve().name}-shm"}, sidecars


async def test_verify_says_identical_on_a_generated_log(nats_server: EmbeddedServer, nc: Any, js: Any) -> None:
    end = await generated_log(nc, js, 900, seed=23)
    result = await verify(js)
    assert result.identical and result.events == end and result.pending == 0
    digest = hashlib.sha256()
    for m in await read_all(js, EVT_STREAM):
        digest.update(len(m.data).to_bytes(4, "big") + m.data)
    assert result.digest == digest.hexdigest()

    later = await verify(js, from_seq=500)
    assert later.identical and later.folded > 0 and later.folded + later.events == end
    assert decode((await js.get_msg(EVT_STREAM, later.first_seq)).data).cmd_seq == 500

    done = await asyncio.to_thread(jetbook, nats_server.url, "replay", "verify")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "identical" and result.digest in done.stdout


async def _hand_made_log(
    js: Any, commands: list[tuple[str, bytes]], checkpoint_every: int, drop_last: int = 0
) -> list[Event]:
    """JB_CMD holds `commands`, JB_EVT what a core with this checkpoint interval makes of them (as an engine
    would write them), less the last `drop_last` events. Returns every event the core made."""
    await publish_all(js, commands)
    engine = Engine(checkpoint_every=checkpoint_every)
    events = [e for m in await read_all(js, CMD_STREAM) for e in engine.handle(m.seq, m.ts, m.subject, m.data)]
    for e in events[: len(events) - drop_last]:
        await js.publish(wal_subject(e.market_id, e.type), encode(e))
    return events


async def test_verify_uses_the_engines_checkpoint_interval(js: Any) -> None:
    total = len(await _hand_made_log(js, workload(400, seed=24), checkpoint_every=50))
    logged = [decode(m.data) for m in await read_all(js, EVT_STREAM)]
    first_checkpoint = next(i for i, e in enumerate(logged, 1) if isinstance(e, Checkpoint))

    result = await verify(js, checkpoint_every=50)
    assert result.identical and result.events == total
    later = await verify(js, from_seq=300, checkpoint_every=50)  # the fold checks the checkpoints before 300
    assert later.identical and later.folded > first_checkpoint

    wrong = await verify(js)  # the default interval makes no checkpoint where the log has one
    assert wrong.divergence is not None
    assert (wrong.divergence.kind, wrong.divergence.evt_seq) == ("differs", first_checkpoint)
    assert wrong.events == first_checkpoint - 1


async def test_verify_reports_an_event_the_commands_do_not_produce(
    nats_server: EmbeddedServer, nc: Any, js: Any
) -> None:
    end = await generated_log(nc, js, 300, seed=25)
    # No engine runs now. Anyone allowed to publish on jb.wal.> can append to the log.
    fill = next(decode(m.data) for m in reversed(await read_all(js, EVT_STREAM)) if m.subject.endswith(".fill"))
    forged = msgpack.unpackb(encode(fill))
    forged["qty"] += 1
    ack = await js.publish(wal_subject(fill.market_id, "fill"), msgpack.packb(forged))
    assert ack.seq == end + 1

    result = await verify(js)
    assert result.divergence is not None
    assert (result.divergence.kind, result.divergence.evt_seq) == ("extra", end + 1)
    assert result.events == end

    done = await asyncio.to_thread(jetbook, nats_server.url, "replay", "verify")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"DIVERGED at JB_EVT seq {end + 1}")
    assert f'"qty": {forged["qty"]}' in done.stdout


def _order(coid: str, side: str, price: int, qty: int) -> bytes:
    return msgpack.packb({"type": "place_order", "client_order_id": coid, "side": side, "price": price, "qty": qty})


async def test_verify_tells_events_the_log_lacks_from_commands_not_decided_yet(js: Any) -> None:
    commands = [
        ("jb.ctl.X", msgpack.packb({"type": "create_market", "market_id": "X", "base": "B", "quote": "Q"})),
        ("jb.cmd.X.a", _order("s", "sell", 100, 5)),
        ("jb.cmd.X.b", _order("b", "buy", 100, 5)),  # accepted, then a fill
    ]
    events = await _hand_made_log(js, commands, checkpoint_every=1000, drop_last=1)
    result = await verify(js)  # the log stops half-way through command 3
    assert result.divergence is not None
    assert (result.divergence.kind, result.divergence.evt_seq, result.divergence.cmd_seq) == (
        "missing", len(events), 3,
    )  # fmt: skip
    assert result.divergence.redecided == encode(events[-1])

    await js.publish(wal_subject("X", "fill"), encode(events[-1]))
    await js.publish("jb.cmd.X.c", _order("c", "buy", 90, 1))  # in JB_CMD, not decided yet
    result = await verify(js)  # behind is not wrong
    assert result.identical and result.events == len(events) and result.pending == 1


async def test_at_answers_as_the_live_model_at_the_tail_and_as_it_was_before(
    nats_server: EmbeddedServer, nc: Any, js: Any, tmp_path: Path
) -> None:
    client = CommandClient(js)
    m = "ETH-USDC"
    await client.create_market(m, "ETH", "USDC")
    await client.place(m, "alice", "a1", "sell", 300_000, 10)
    await client.place(m, "alice", "a2", "sell", 301_000, 5)
    await client.place(m, "bob", "b1", "buy", 299_000, 8)
    last = await client.place(m, "bob", "b2", "buy", 300_500, 15)  # takes 10 from alice at 300000
    async with running_engine(nc):
        await wait_for_command(js, last)
    end = await last_seq(js, EVT_STREAM)
    live = tmp_path / "live.db"
    await ProjectionRunner(EXCHANGE, js, live).run(asyncio.Event(), until_seq=end)

    now = await state_at(js, end)
    assert now == query(sqlite3.connect(live), end)  # the same answers as the live model's file
    assert [(t["bid_qty"], t["bid_price"], t["ask_qty"], t["ask_price"]) for t in now.top] == [(5, 300_500, 5, 301_000)]
    assert [(p["account_id"], p["net_qty"], p["cash"]) for p in now.positions] == [
        ("alice", -10, 3_000_000), ("bob", 10, -3_000_000),
    ]  # fmt: skip
    assert [(o["account_id"], o["open_qty"]) for o in now.open_orders] == [("alice", 5), ("bob", 8), ("bob", 5)]

    # Right after event 4 (bob's first order accepted): no trade yet, all of alice's first order still there.
    before = await state_at(js, 4, market=m)
    assert [(t["bid_qty"], t["bid_price"], t["ask_qty"], t["ask_price"]) for t in before.top] == [
        (8, 299_000, 10, 300_000)
    ]
    assert before.positions == []
    assert [(o["order_id"], o["open_qty"]) for o in before.open_orders] == [(1, 10), (2, 5), (3, 8)]

    done = await asyncio.to_thread(jetbook, nats_server.url, "replay", "at", "--seq", "4", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == before.as_json()


async def test_a_rebuild_that_meets_a_foreign_message_fails_and_leaves_the_target_alone(
    nc: Any, js: Any, tmp_path: Path
) -> None:
    end = await generated_log(nc, js, 200, seed=26)
    target = tmp_path / "rm.db"
    await rebuild(js, target)
    before = db_content_hash(target)
    await js.publish(wal_subject("M1", "fill"), b"\xc1 not msgpack")  # no engine: JB_EVT takes anything on jb.wal.>
    with pytest.raises(RebuildError, match=f"CorruptLog {end + 1}"):
        await rebuild(js, target)
    assert db_content_hash(target) == before
    generations = [p.name for p in tmp_path.iterdir() if ".gen-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert generations == [target.resolve().name]  # the failed one's file is gone
