"""The ledger on the exchange's machinery, on a real nats-server: the same engine service, projection runner,
`replay rebuild` and `replay verify`, given the ledger's `App` and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from engine.lease import Lease
from engine.service import EngineService
from events.stream_readers import StreamReader, last_seq, read_to_end
from examples.ledger import domain, projection
from examples.ledger.app import APP
from examples.ledger.decider import DECIDER
from examples.ledger.domain import Deposit, OpenAccount, Transfer, encode_command
from framework.streams import ensure_app_streams
from jetbook.server import EmbeddedServer
from projections.runner import ProjectionRunner
from replay.rebuild import rebuild
from replay.verify import describe, verify
from tests.conftest import wait_until

CMD, EVT = APP.streams.cmd, APP.streams.evt


@contextlib.asynccontextmanager
async def running(role: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(role.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def send(js: Any, *commands: domain.Command) -> int:
    seq = 0
    for command in commands:
        subject, data = encode_command(command)
        seq = (await js.publish(subject, data, stream=CMD)).seq
    return seq


async def read(js: Any, stream: str) -> list[Any]:
    if not await last_seq(js, stream):
        return []
    async with StreamReader(js, stream, 1) as reader:
        return [m for batch in await read_to_end(reader) for m in batch]


async def decided(js: Any, cmd_seq: int) -> None:
    """Until LEDGER_EVT holds the events of command `cmd_seq` (every command has one)."""

    async def done() -> bool:
        tail = await last_seq(js, EVT)
        return bool(tail) and domain.decode((await js.get_msg(EVT, tail)).data).cmd_seq >= cmd_seq

    await wait_until(done, what=f"events of command {cmd_seq}")


async def redecided(js: Any, checkpoint_every: int) -> list[bytes]:
    """What one engine that never stopped makes of LEDGER_CMD, event by event."""
    core = DECIDER.core(checkpoint_every=checkpoint_every)
    out: list[bytes] = []
    for m in await read(js, CMD):
        core.handle(m.seq, m.ts, m.subject, m.data)
        out += [payload for _, payload in core.payloads]
    return out


SCENARIO: tuple[domain.Command, ...] = (
    OpenAccount("alice", 50),
    OpenAccount("bob", 0),
    Deposit("alice", 100),
    Transfer("alice", "t1", "bob", 120),  # 100 - 120 = -20, inside alice's overdraft of 50
    Transfer("alice", "t2", "bob", 40),  # -60: overdraft
    Deposit("carol", 5),  # unknown_account
    Transfer("bob", "t1", "alice", 1),  # the id is used: duplicate
    OpenAccount("bob", 9),  # duplicate
    Transfer("bob", "t3", "alice", 20),
)


@pytest.fixture
async def ledger_js(nc: Any) -> Any:
    js = nc.jetstream()
    await ensure_app_streams(js, APP)
    return js


async def test_commands_in_events_out_and_balances_in_the_projection(nc: Any, ledger_js: Any, tmp_path: Path) -> None:
    js = ledger_js
    async with running(EngineService(nc, app=APP)):
        last = await send(js, *SCENARIO)
        await decided(js, last)
    logged = await read(js, EVT)
    events = [domain.decode(m.data) for m in logged]
    assert [e.type for e in events] == [
        "account_opened", "account_opened", "deposited", "transferred", "rejected", "rejected", "rejected",
        "rejected", "transferred",
    ]  # fmt: skip
    assert [e.reason for e in events if isinstance(e, domain.Rejected)] == [
        "overdraft", "unknown_account", "duplicate", "duplicate",
    ]  # fmt: skip
    assert [e.cmd_seq for e in events] == list(range(1, len(SCENARIO) + 1))
    # Stored as ledger.evt.<account>.<type> (the stream's transform of the engine's ledger.wal.>).
    assert logged[3].subject == "ledger.evt.alice.transferred"
    # Its own streams: the exchange's were never created.
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info("JB_EVT")

    db = tmp_path / "ledger.db"
    runner = ProjectionRunner(APP, js, db)
    assert await runner.run(asyncio.Event(), until_seq=len(logged)) == len(logged)
    con = sqlite3.connect(db)
    try:
        assert projection.balances(con) == {"alice": 0, "bob": 100}
        assert projection.transfers(con) == [("t1", "alice", "bob", 120), ("t3", "bob", "alice", 20)]
        assert projection.position(con) == len(logged)
    finally:
        con.close()


async def test_verify_is_identical_and_a_rebuild_equals_the_live_file(
    nc: Any, ledger_js: Any, tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    js = ledger_js
    commands = [OpenAccount(f"a{i}", i) for i in range(5)] + [
        Transfer(f"a{i % 5}", f"t{i}", f"a{(i + 1) % 5}", 1 + i % 4) for i in range(40)
    ]
    live = tmp_path / "live.db"
    async with running(EngineService(nc, app=APP, checkpoint_every=10)), running(ProjectionRunner(APP, js, live)):
        last = await send(js, Deposit("a0", 3), *commands)
        await decided(js, last)
        tail = await last_seq(js, EVT)
        await wait_until(lambda: _at(live, tail), what="the live projection at the tail")

    assert sum(1 for m in await read(js, EVT) if domain.decode(m.data).type == "checkpoint") >= 4
    result = await verify(js, checkpoint_every=10, app=APP)
    assert result.identical, describe(result)
    assert result.events == tail and result.commands == last
    assert describe(result)[0] == "identical"
    # From the middle: the state before command 20 is folded from the log, its checkpoints checked.
    middle = await verify(js, 20, checkpoint_every=10, app=APP)
    assert middle.identical and middle.folded > 0 and middle.digest != result.digest

    rebuilt = tmp_path / "rebuilt.db"
    done = await rebuild(js, rebuilt, app=APP)
    assert (done.projection, done.position, done.events) == (projection.NAME, tail, tail)
    assert _dump(rebuilt) == _dump(live)

    # The ledger's command line is as thin: the same verify, for the same APP.
    out = subprocess.run(
        [sys.executable, "-m", "examples.ledger", "verify", "--nats-url", nats_server.url, "--checkpoint-every", "10"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.splitlines()[:3] == describe(result), out.stdout + out.stderr
    # With another interval than the log was written with, the re-decided checkpoints differ.
    out = subprocess.run(
        [sys.executable, "-m", "examples.ledger", "verify", "--nats-url", nats_server.url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "DIVERGED at LEDGER_EVT seq" in out.stdout, out.stdout + out.stderr


async def test_a_log_forged_after_the_fact_is_caught_by_verify(nc: Any, ledger_js: Any) -> None:
    js = ledger_js
    async with running(EngineService(nc, app=APP)):
        await send(js, OpenAccount("alice", 0), Deposit("alice", 10))
        await decided(js, 2)
    # Someone appends an event no command made, behind the engine's back.
    forged = domain.Deposited(cmd_seq=2, ts=0, account="alice", amount=1_000_000, balance=1_000_010)
    await js.publish(domain.subject_of(forged), domain.encode(forged), stream=EVT)
    result = await verify(js, app=APP)
    assert result.divergence is not None and result.divergence.kind == "extra"
    assert describe(result)[0].startswith("DIVERGED at LEDGER_EVT seq 3")


async def test_an_engine_restart_resumes_from_its_snapshot_without_duplicates(nc: Any, ledger_js: Any) -> None:
    js = ledger_js
    first = [OpenAccount("a", 100), OpenAccount("b", 0)] + [Transfer("a", f"x{i}", "b", 1) for i in range(30)]
    options: dict[str, Any] = {"app": APP, "checkpoint_every": 7, "snapshot_every": 10, "fork_snapshots": False}
    service = EngineService(nc, **options)
    async with running(service):
        last = await send(js, *first)
        await decided(js, last)
        await wait_until(lambda: _true(service.snapshots_written > 0), what="a snapshot in LEDGER_SNAP")
    stopped_at = await last_seq(js, EVT)
    # Commands arrive while no engine runs; a new one starts from the snapshot and the log's tail.
    more = [Transfer("b", f"y{i}", "a", 2) for i in range(12)] + [Transfer("a", "x0", "b", 1)]
    last = await send(js, *more)
    again = EngineService(nc, **options)
    async with running(again):
        await decided(js, last)
    assert again.recovered_from is not None and again.recovered_from.seq >= 10
    assert again.recovery_folded == stopped_at - again.recovered_from.seq  # only the tail after the snapshot

    logged = await read(js, EVT)
    assert [m.data for m in logged] == await redecided(js, 7)  # exactly one engine's worth, nothing twice
    plain = [domain.decode(m.data) for m in logged if domain.decode(m.data).type != "checkpoint"]
    assert [e.cmd_seq for e in plain] == list(range(1, last + 1))
    assert plain[-1].type == "rejected"  # x0 again: a duplicate, known from the snapshot's state
    assert (await verify(js, checkpoint_every=7, app=APP)).identical
    tags = await again.snapshots.tags() if again.snapshots else []
    assert tags and all(t.core == DECIDER.fingerprint for t in tags)


def _lease(url: str) -> Lease:
    streams = APP.streams
    connect = lambda: nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)  # noqa: E731
    return Lease(connect, ttl=0.5, key=streams.lease_key, bucket=streams.lease_bucket)


async def test_a_hot_standby_takes_over_on_the_ledgers_own_lease(
    nc: Any, ledger_js: Any, nats_server: EmbeddedServer
) -> None:
    js = ledger_js
    other = await nats.connect(nats_server.url)
    try:
        a = EngineService(nc, app=APP, lease=_lease(nats_server.url))
        b = EngineService(other, app=APP, lease=_lease(nats_server.url))
        stop_a = asyncio.Event()
        task_a = asyncio.create_task(a.run(stop_a))
        await wait_until(lambda: _true(a.role == "active"), what="a to lead")
        async with running(b):
            await wait_until(lambda: _true(b.role == "standby"), what="b to stand by")
            await decided(js, await send(js, OpenAccount("a", 0), OpenAccount("b", 0), Deposit("a", 9)))
            await wait_until(lambda: _true(b.engine.state.event_count == 3), what="b to follow the log")
            stop_a.set()  # a stops and releases the lease; b takes it
            await asyncio.wait_for(task_a, 15)
            await wait_until(lambda: _true(b.role == "active"), what="b to take over")
            last = await send(js, Transfer("a", "t", "b", 4), Transfer("a", "t", "b", 4))
            await decided(js, last)
        assert b.takeovers == 1
        events = [domain.decode(m.data) for m in await read(js, EVT)]
        assert [e.cmd_seq for e in events] == [1, 2, 3, 4, 5]
        assert [e.type for e in events[-2:]] == ["transferred", "rejected"]
        assert (await verify(js, app=APP)).identical
        await js.key_value(APP.streams.lease_bucket)  # the ledger's lease, not the exchange's
        with pytest.raises(nats.js.errors.BucketNotFoundError):
            await js.key_value("JB_LEASE")
    finally:
        await other.close()


async def _true(value: bool) -> bool:
    return value


async def _at(db: Path, seq: int) -> bool:
    if not db.exists():
        return False
    con = sqlite3.connect(db)
    try:
        return projection.position(con) >= seq
    except sqlite3.Error:
        return False
    finally:
        con.close()


def _dump(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()
