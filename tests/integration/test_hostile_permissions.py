"""The engine restarts, and a hot standby takes over, under the shipped deploy/accounts.conf permissions.

A single nats-server runs with the accounts file exactly as shipped; the engine
connects as its `engine` user and commands come from `ops`. The first start of
an engine sees an empty log, so only a restart (a snapshot to find, a log to
fold) and a takeover (the same recovery, on a standby) exercise the calls the
engine makes with events in JB_EVT. A permission violation is an error here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from engine.exchange import APP as EXCHANGE
from engine.lease import Lease
from engine.service import EngineService
from events.stream_readers import last_seq
from jetbook.server import accepts_connections, find_binary
from protocol.subjects import CMD_STREAM, EVT_STREAM
from tests.conftest import wait_until, wait_until_sync
from tests.integration.harness import assert_log_is_exact, running_engine, wait_for_command, workload

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = ROOT / "deploy" / "accounts.conf"


def _users() -> list[str]:
    """Every user whose password deploy/accounts.conf reads from the environment."""
    import re

    return sorted({m.lower() for m in re.findall(r"\$JETBOOK_([A-Z0-9]+)_PASSWORD", ACCOUNTS.read_text())})


def _commander() -> str:
    """The user that may publish control subjects and commands for any account (renamed ops -> operator)."""
    return "operator" if "operator" in _users() else "ops"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[str]:
    """A nats-server with deploy/accounts.conf as shipped; yields its host:port."""
    yield from _secured(tmp_path)


@pytest.fixture
def sharded_server(tmp_path: Path) -> Iterator[str]:
    """deploy/accounts.conf as shipped, with the two-shard mappings added to the JETBOOK account (docs/DEPLOY.md)."""
    yield from _secured(tmp_path, shards=2)


def _secured(tmp_path: Path, shards: int = 1) -> Iterator[str]:
    import json

    from protocol.shards import mappings

    port = _free_port()
    text = ACCOUNTS.read_text()
    if shards > 1:
        anchor = "  JETBOOK {\n    jetstream: enabled\n"
        assert anchor in text
        text = text.replace(anchor, f"{anchor}    mappings: {json.dumps(mappings(shards))}\n")
    (tmp_path / "accounts.conf").write_text(text)
    conf = tmp_path / "server.conf"
    conf.write_text(
        f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\ninclude ./accounts.conf\n'
    )
    env = {**os.environ, **{f"JETBOOK_{u.upper()}_PASSWORD": f"pw{u}" for u in _users()}}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([find_binary(), "-c", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def listening() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            return accepts_connections(f"nats://127.0.0.1:{port}")

        wait_until_sync(listening, 15, "nats-server to listen")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


class Violations:
    """Permission violations a connection was told about: the test fails on any."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def callback(self, err: Exception) -> None:
        if "permission" in str(err).lower():
            self.seen.append(str(err))


async def _connect(addr: str, user: str, violations: Violations) -> Any:
    own = f"_INBOX_{user}"  # per-user inbox prefixes, once deploy/accounts.conf narrows each user to its own
    return await nats.connect(
        f"nats://{user}:pw{user}@{addr}",
        error_cb=violations.callback,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        inbox_prefix=own if own in ACCOUNTS.read_text() else "_INBOX",
    )


@contextlib.asynccontextmanager
async def _clients(addr: str) -> AsyncIterator[tuple[Any, Any, Violations]]:
    violations = Violations()
    engine_nc = await _connect(addr, "engine", violations)
    ops_nc = await _connect(addr, _commander(), violations)
    try:
        yield engine_nc, ops_nc, violations
    finally:
        await ops_nc.close()
        await engine_nc.close()


async def test_the_engine_restarts_from_a_snapshot_under_the_shipped_permissions(secured_server: str) -> None:
    async with _clients(secured_server) as (engine_nc, ops_nc, violations):
        ejs, ojs = engine_nc.jetstream(), ops_nc.jetstream()
        options = {"snapshot_every": 50, "fork_snapshots": False}
        async with running_engine(engine_nc, **options) as first:
            await wait_until(lambda: _role(first, "active"), what="the first engine to lead")
            last = await _publish(ojs, ejs, workload(200, seed=3))
            await wait_for_command(ejs, last)

            async def snapshotted() -> bool:
                return first.snapshots_written >= 1

            await wait_until(snapshotted, what="a snapshot")
        async with running_engine(engine_nc, **options) as second:
            await wait_until(lambda: _role(second, "active"), what="the restarted engine to lead")
            assert second.recovered_from is not None, "the restart did not load the snapshot"
            last = await _publish(ojs, ejs, workload(50, seed=4, markets=("M3",)))
            await wait_for_command(ejs, last)
        await assert_log_is_exact(ejs)
        assert not violations.seen, violations.seen


async def _publish(ojs: Any, ejs: Any, commands: list[tuple[str, bytes]]) -> int:
    """Publish as ops (which may not read JB_CMD's info); the last sequence as the engine sees it."""
    for subject, data in commands:
        await ojs.publish_async(subject, data)
    await ojs.publish_async_completed()
    return await last_seq(ejs, CMD_STREAM)


async def _role(service: EngineService, role: str) -> bool:
    return service.role == role


async def test_a_standby_takes_over_under_the_shipped_permissions(secured_server: str) -> None:
    async with _clients(secured_server) as (engine_nc, ops_nc, violations):
        ejs, ojs = engine_nc.jetstream(), ops_nc.jetstream()

        def lease() -> Lease:
            return Lease(lambda: _connect(secured_server, "engine", violations), ttl=0.5)

        standby_nc = await _connect(secured_server, "engine", violations)
        try:
            async with running_engine(engine_nc, lease=lease(), snapshot_every=50, fork_snapshots=False) as active:
                await wait_until(lambda: _role(active, "active"), what="the first engine to lead")
                last = await _publish(ojs, ejs, workload(200, seed=5))
                await wait_for_command(ejs, last)
                async with running_engine(standby_nc, lease=lease(), fork_snapshots=False) as standby:
                    await wait_until(lambda: _role(standby, "standby"), what="the second engine to follow")
                    active.stop.set()  # its run() returns and releases the lease
                    await wait_until(lambda: _role(standby, "active"), what="the standby to take over")
                    last = await _publish(ojs, ejs, workload(50, seed=6, markets=("M4",)))
                    await wait_for_command(ejs, last)
                    assert standby.takeovers == 1
        finally:
            await standby_nc.close()
        await assert_log_is_exact(ejs)
        assert not violations.seen, violations.seen


async def test_the_fanout_and_the_query_service_start_restart_and_fail_over_under_the_shipped_permissions(
    secured_server: str, tmp_path: Path
) -> None:
    """The roles issue 9 and 11 added, each as its own user: hostile queries first, then a restart of the fan-out
    and the loss of one of two query services; the venue still decides a valid order, the surviving service
    answers it strongly, and the restarted fan-out files it in the private feed."""
    import asyncio

    import msgpack

    from projections.fanout import FanOut
    from projections.query_service import QueryService
    from projections.runner import ProjectionRunner

    def order(coid: str, side: str, price: int) -> bytes:
        return bytes(msgpack.packb({"type": "place_order", "client_order_id": coid, "side": side, "price": price,
                                    "qty": 1}))  # fmt: skip

    async def run_fanout(nc: Any) -> tuple[asyncio.Event, asyncio.Task[Any]]:
        stop = asyncio.Event()
        return stop, asyncio.create_task(FanOut(nc).run(stop))

    async def acct_last(ojs: Any) -> int:
        try:
            return await last_seq(ojs, "JB_ACCT")
        except Exception:  # not created yet
            return 0

    db = tmp_path / "rm.db"
    async with _clients(secured_server) as (engine_nc, ops_nc, violations):
        ojs = ops_nc.jetstream()
        users = {u: await _connect(secured_server, u, violations) for u in ("projection", "fanout", "query")}
        second_query = await _connect(secured_server, "query", violations)
        proj_stop = asyncio.Event()
        q1, q2 = QueryService(users["query"], db), QueryService(second_query, db)
        projection: asyncio.Task[Any] | None = None
        try:
            async with running_engine(engine_nc):

                async def streams_made() -> bool:  # by the engine's task, which may not have run yet
                    try:
                        await last_seq(ojs, CMD_STREAM)
                        await last_seq(ojs, EVT_STREAM)
                    except Exception:
                        return False
                    return True

                # The roles wait for the venue's streams (jetbook.roles.wait_for_venue) before they read;
                # run bare, the projection would stop at once with NotFoundError on a stream not made yet.
                await wait_until(streams_made, what="the engine to create JB_CMD and JB_EVT")
                projection = asyncio.create_task(
                    ProjectionRunner(EXCHANGE, users["projection"].jetstream(), db).run(proj_stop)
                )
                fan_stop, fan_task = await run_fanout(users["fanout"])
                await q1.start()
                await q2.start()
                await ops_nc.publish("jb.ctl.M", msgpack.packb({"type": "create_market", "market_id": "M",
                                                                "base": "B", "quote": "Q"}))  # fmt: skip
                await ojs.publish("jb.cmd.M.alice", order("a1", "sell", 100))
                # Hostile queries: each answered with an error, none stops a service.
                for subject, payload in (
                    ("jb.qry.top_of_book", b"\xc1"),
                    ("jb.qry.top_of_book", b"\x91" * 1010 + b"\x00"),
                    ("jb.qry.top_of_book", msgpack.packb({"market_id": 1, "depth": 2**63})),
                    ("jb.qry.order", msgpack.packb({"market_id": "M", "order_id": "x", "consistency": "nope"})),
                    ("jb.qry.nope", b""),
                ):
                    answer = msgpack.unpackb((await ops_nc.request(subject, payload, timeout=5)).data)
                    assert "error" in answer, (subject, answer)
                # Restart the fan-out; lose one query service.
                fan_stop.set()
                await asyncio.wait_for(fan_task, 10)
                fan_stop, fan_task = await run_fanout(users["fanout"])
                await q1.stop()
                before = await acct_last(ojs)
                ack = await ojs.publish("jb.cmd.M.bob", order("b1", "buy", 100))
                msg = await ops_nc.request("jb.qry.order", msgpack.packb({
                    "market_id": "M", "account_id": "bob", "client_order_id": "b1", "consistency": "strong"}),
                    timeout=10)  # fmt: skip
                answer = msgpack.unpackb(msg.data)
                if projection.done():  # the replica stopped following: its error, not the timeout it causes
                    projection.result()
                assert "result" in answer, answer  # an error answer is printed whole
                assert answer["result"]["client_order_id"] == "b1", answer
                assert answer["result"]["status"] == "filled", answer  # it crossed alice's order
                assert answer["at_seq"] >= 1 and ack.seq >= 3

                # A compact batch (v1.3): alice's two quotes that rest are one orders_accepted, filed once.
                ladder = [{"client_order_id": f"a{p}", "side": "sell", "price": p, "qty": 1} for p in (110, 111)]
                quotes = {"type": "place_orders", "compact": True, "instructions": ladder}
                await ojs.publish("jb.cmd.M.alice", msgpack.packb(quotes))
                msg = await ops_nc.request("jb.qry.order", msgpack.packb({
                    "market_id": "M", "account_id": "alice", "client_order_id": "a111", "consistency": "strong"}),
                    timeout=10)  # fmt: skip
                assert msgpack.unpackb(msg.data)["result"]["status"] == "open", msgpack.unpackb(msg.data)

                async def filed() -> bool:  # bob's acceptance and fill, alice's fill, alice's quotes: four more
                    return await acct_last(ojs) >= before + 4

                await wait_until(filed, what="the restarted fan-out to file bob's order and the trade")
                fan_stop.set()
                await asyncio.wait_for(fan_task, 10)
        finally:
            await q2.stop()
            proj_stop.set()
            if projection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(projection, 10)
            for nc in (*users.values(), second_query):
                await nc.close()
        assert not violations.seen, violations.seen


async def test_sharded_engines_restart_and_fail_over_under_the_shipped_permissions(sharded_server: str) -> None:
    """Two shards' engines as the `engine` user of deploy/accounts.conf: shard 0 with a standby that takes over,
    shard 1 restarted from its own snapshot; commands from the operator on the client subjects."""
    from engine.exchange import shard_app
    from protocol.streams import ensure_shard_streams
    from tests.integration.harness import read_all
    from tests.integration.test_shards import _all_decided, _publish, _redecide

    shards = 2
    apps = [shard_app(k, shards) for k in range(shards)]
    async with _clients(sharded_server) as (engine_nc, ops_nc, violations):
        ejs, ojs = engine_nc.jetstream(), ops_nc.jetstream()
        await ensure_shard_streams(ejs, shards)

        def lease(k: int) -> Lease:
            s = apps[k].streams
            return Lease(lambda: _connect(sharded_server, "engine", violations), ttl=0.5, key=s.lease_key)

        async def decided() -> bool:
            return await _all_decided(ejs, shards)

        options: dict[str, Any] = {"snapshot_every": 50, "fork_snapshots": False}
        standby_nc = await _connect(sharded_server, "engine", violations)
        try:
            async with (
                running_engine(engine_nc, app=apps[0], lease=lease(0), **options) as a0,
                running_engine(engine_nc, app=apps[1], lease=lease(1), **options) as a1,
            ):
                await wait_until(lambda: _role(a0, "active"), what="shard 0 to lead")
                await wait_until(lambda: _role(a1, "active"), what="shard 1 to lead")
                await _publish(ojs, workload(300, seed=7, markets=("M1", "M2", "M3", "M4")))
                await wait_until(decided, what="both shards to decide")
                async with running_engine(standby_nc, app=apps[0], lease=lease(0), **options) as b0:
                    await wait_until(lambda: _role(b0, "standby"), what="shard 0's standby to follow")
                    a0.stop.set()
                    await wait_until(lambda: _role(b0, "active"), what="shard 0's standby to take over")
                    await _publish(ojs, workload(60, seed=8, markets=("M1", "M2", "M3", "M4")))
                    await wait_until(decided, what="the standby to decide")
            async with running_engine(engine_nc, app=apps[1], **options) as again:
                await wait_until(lambda: _role(again, "active"), what="shard 1 restarted")
                assert again.recovered_from is not None, "shard 1 did not load its own snapshot"
        finally:
            await standby_nc.close()
        for k in range(shards):
            assert [m.data for m in await read_all(ejs, apps[k].streams.evt)] == await _redecide(ejs, k, shards)
        assert not violations.seen, violations.seen
