"""The permission table of docs/DEPLOY.md, row by row, against the locked-down embedded server of `jetbook up`.

Every refusal is read from the server's own -ERR, which nats-py hands to
error_cb; it can arrive after the PONG of a flush, so a test waits for it
with a deadline. Every grant is shown by its effect: the message is stored,
delivered or answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig, StreamConfig

from events.model import decode
from jetbook.demo import run_demo
from jetbook.roles import engine_role, fanout_role, project_role
from jetbook.server import EmbeddedServer
from jetbook.settings import CREDENTIALS_FILE, Credentials, find_for_url
from jetbook.wiring import connect, resolve_access
from protocol.barrier import barrier
from protocol.streams import ensure_streams
from protocol.subjects import CMD_STREAM, EVT_STREAM
from tests.conftest import POLL_INTERVAL_S, wait_until
from tests.integration.harness import scatter, status_json
from tests.integration.test_hostile_permissions import secured_server  # noqa: F401  (a fixture: accounts.conf)

SERVICES = ("engine", "projection", "fanout", "gateway", "operator", "query")
EVERYONE = (*SERVICES, "alice", "bob")


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, Credentials]]:
    creds = Credentials.load_or_create(tmp_path / CREDENTIALS_FILE, ["alice", "bob"])
    server = EmbeddedServer(tmp_path / "nats", port=0, credentials=creds)
    creds.url = server.start()
    creds.save()
    yield server, creds
    server.stop()


class Client:
    """One user's connection, with every error the server sent it."""

    def __init__(self, nc: Any, errors: list[str]) -> None:
        self.nc, self.errors, self.js = nc, errors, nc.jetstream(timeout=1.0)

    def _seen(self, what: str) -> bool:
        return any("permissions violation" in e.lower() and f'"{what.lower()}"' in e.lower() for e in self.errors)

    async def refused(self, what: str, timeout: float = 5.0) -> bool:
        """Whether the server refused `what` (a subject), waiting up to `timeout` for its -ERR."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._seen(what) and loop.time() < deadline:
            await asyncio.sleep(POLL_INTERVAL_S)
        return self._seen(what)

    async def publish(self, subject: str, payload: bytes = b"x") -> None:
        await self.nc.publish(subject, payload)
        await self.nc.flush()

    async def request_refused(self, subject: str, payload: bytes = b"") -> bool:
        """A JetStream API request (sent without waiting for its answer): refused by the server's permissions."""
        await self.nc.publish(subject, payload, reply=self.nc.new_inbox())
        await self.nc.flush()
        return await self.refused(subject)


async def login(url: str, creds: Credentials, user: str) -> Client:
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(
        url, user=user, password=creds.users[user], inbox_prefix=f"_INBOX_{user}",
        error_cb=on_error, allow_reconnect=False,
    )  # fmt: skip
    return Client(nc, errors)


@pytest.fixture
async def users(locked: tuple[EmbeddedServer, Credentials]) -> AsyncIterator[dict[str, Client]]:
    server, creds = locked
    clients = {u: await login(server.url, creds, u) for u in EVERYONE}
    await ensure_streams(clients["engine"].js)
    for name, subjects in (("JB_ACCT", ["jb.acct.>"]), ("JB_TAPE", ["jb.tape.>"])):
        await clients["fanout"].js.add_stream(StreamConfig(name=name, subjects=subjects))
    yield clients
    for c in clients.values():
        await c.nc.close()


async def last_seq(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.last_seq)


def test_credentials_file_is_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / CREDENTIALS_FILE
    first = Credentials.load_or_create(path, ["alice"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert set(first.users) == {*SERVICES, "alice"}
    assert len(set(first.users.values())) == len(first.users)  # one random password each
    again = Credentials.load_or_create(path, ["alice", "zed"])
    assert {u: again.users[u] for u in first.users} == first.users  # reused on restart
    assert "zed" in again.users and "zed" in json.loads(path.read_text())["users"]


def test_a_credentials_file_is_used_only_for_its_own_server(tmp_path: Path) -> None:
    creds = Credentials.load_or_create(tmp_path / CREDENTIALS_FILE, [])
    creds.url = "nats://127.0.0.1:14222"
    creds.save()
    env = {"JETBOOK_STATE_DIR": str(tmp_path / "none"), "JETBOOK_DATA_DIR": str(tmp_path)}
    assert resolve_access("nats://127.0.0.1:14222", "engine", env).auth["user"] == "engine"
    assert resolve_access("nats://127.0.0.1:14222", "engine", env).inbox_prefix == "_INBOX_engine"
    assert resolve_access("nats://127.0.0.1:14222", "bob", env).auth["user"] == "operator"
    env_user = {**env, "JETBOOK_NATS_USER": "alice", "JETBOOK_NATS_PASSWORD": "pw"}
    assert resolve_access("nats://127.0.0.1:14222", "operator", env_user).auth == {"user": "alice", "password": "pw"}
    # Not explicit: ./.jetbook and the index only serve the address the file was written for.
    assert find_for_url(["nats://10.0.0.9:4222"], {"JETBOOK_STATE_DIR": str(tmp_path / "none")}) is None


async def test_anonymous_and_wrong_password_are_refused(locked: tuple[EmbeddedServer, Credentials]) -> None:
    server, creds = locked
    for kwargs in ({}, {"user": "alice", "password": creds.users["bob"]}):
        with pytest.raises((nats.errors.NoServersError, nats.errors.Error)):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=1, **kwargs)


async def test_a_trader_trades_only_as_itself(users: dict[str, Client]) -> None:
    alice, op = users["alice"], users["operator"]
    before = await last_seq(op.js, CMD_STREAM)
    ack = await alice.js.publish("jb.cmd.M.alice", msgpack.packb({"type": "cancel_all"}))
    assert ack.seq == before + 1
    await alice.publish("jb.cmd.M.bob")
    assert await alice.refused("jb.cmd.M.bob")
    await alice.publish("jb.ctl.M")
    assert await alice.refused("jb.ctl.M")
    assert await last_seq(op.js, CMD_STREAM) == before + 1  # bob's and the control message were never stored


async def test_only_the_operator_and_the_gateway_publish_control_and_any_account(users: dict[str, Client]) -> None:
    """The gateway may: it sends an operator key's control commands (gateway/auth.py decides who may)."""
    op = users["operator"]
    before = await last_seq(op.js, CMD_STREAM)
    for user in ("operator", "gateway"):
        await users[user].js.publish("jb.ctl.M", msgpack.packb({"type": "noop"}))
        await users[user].js.publish("jb.cmd.M.bob", msgpack.packb({"type": "cancel_all"}))
    assert await last_seq(op.js, CMD_STREAM) == before + 4
    for user in ("engine", "projection", "fanout", "query", "bob"):
        await users[user].publish("jb.ctl.M")
        assert await users[user].refused("jb.ctl.M"), user
    for user in ("engine", "projection", "fanout", "query"):
        await users[user].publish("jb.cmd.M.bob")
        assert await users[user].refused("jb.cmd.M.bob"), user


@pytest.mark.parametrize("user", [u for u in EVERYONE if u != "engine"])
async def test_nobody_but_the_engine_writes_the_log(users: dict[str, Client], user: str) -> None:
    before = await last_seq(users["engine"].js, EVT_STREAM)
    await users[user].publish("jb.wal.M.fill")
    assert await users[user].refused("jb.wal.M.fill"), users[user].errors
    assert await last_seq(users["engine"].js, EVT_STREAM) == before


@pytest.mark.parametrize("user", EVERYONE)
async def test_nobody_publishes_on_jb_evt(users: dict[str, Client], user: str) -> None:
    await users[user].publish("jb.evt.M.fill")
    assert await users[user].refused("jb.evt.M.fill")


async def test_the_engine_writes_the_log(users: dict[str, Client]) -> None:
    js = users["engine"].js
    ack = await js.publish("jb.wal.M.noop", b"e")
    assert ack.stream == EVT_STREAM and await last_seq(js, EVT_STREAM) == ack.seq


@pytest.mark.parametrize("user", EVERYONE)
async def test_nobody_deletes_or_purges_a_stream(users: dict[str, Client], user: str) -> None:
    c = users[user]
    for stream in (CMD_STREAM, EVT_STREAM, "JB_ACCT", "JB_TAPE"):
        assert await c.request_refused(f"$JS.API.STREAM.DELETE.{stream}"), (user, stream)
        assert await c.request_refused(f"$JS.API.STREAM.PURGE.{stream}", b"{}"), (user, stream)
        assert await c.request_refused(f"$JS.API.STREAM.MSG.DELETE.{stream}", b'{"seq": 1}'), (user, stream)
    info = await users["operator"].js.stream_info(EVT_STREAM)
    assert info.config.name == EVT_STREAM


@pytest.mark.parametrize("user", ["alice", "bob"])
async def test_a_trader_creates_no_consumer_on_the_command_or_event_log(users: dict[str, Client], user: str) -> None:
    c = users[user]
    for stream in (CMD_STREAM, EVT_STREAM):
        assert await c.request_refused(f"$JS.API.CONSUMER.CREATE.{stream}", b"{}"), stream
        assert await c.request_refused(f"$JS.API.CONSUMER.CREATE.{stream}.x.jb.evt.>", b"{}"), stream


async def test_a_trader_reads_its_own_private_stream_only(users: dict[str, Client]) -> None:
    alice, fanout = users["alice"], users["fanout"]
    await fanout.js.publish("jb.acct.alice.M.fill", b"for alice")
    await fanout.js.publish("jb.acct.bob.M.fill", b"for bob")
    sub = await alice.js.subscribe(
        "jb.acct.alice.>", stream="JB_ACCT", durable=None,
        config=ConsumerConfig(name="alice-view", filter_subject="jb.acct.alice.>"),
    )  # fmt: skip
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"for alice"
    await sub.unsubscribe()
    bobs = "$JS.API.CONSUMER.CREATE.JB_ACCT.peek.jb.acct.bob.>"
    assert await alice.request_refused(bobs, b"{}")
    assert await alice.request_refused("$JS.API.CONSUMER.CREATE.JB_ACCT.peek.jb.acct.>", b"{}")
    assert await alice.request_refused("$JS.API.CONSUMER.CREATE.JB_ACCT", b"{}")


async def test_a_trader_follows_its_account_and_the_tape_live_and_nothing_else(users: dict[str, Client]) -> None:
    alice, fanout = users["alice"], users["fanout"]
    got: list[str] = []

    async def keep(msg: Any) -> None:
        got.append(msg.subject)

    for subject in ("jb.acct.alice.>", "jb.tape.>"):
        await alice.nc.subscribe(subject, cb=keep)
    for subject in ("jb.acct.bob.>", "jb.evt.>", "jb.cmd.>", "jb.wal.>", "_INBOX.>", "_INBOX_bob.>", ">"):
        await alice.nc.subscribe(subject, cb=keep)
        await alice.nc.flush()
        assert await alice.refused(subject), subject
    await barrier(alice.nc)
    await fanout.js.publish("jb.acct.alice.M.fill", b"a")
    await fanout.js.publish("jb.acct.bob.M.fill", b"b")
    await fanout.js.publish("jb.tape.M", b"t")

    async def both() -> bool:
        return len(got) >= 2

    await wait_until(both, what="alice's own event and the tape")
    await alice.nc.flush()
    assert sorted(got) == ["jb.acct.alice.M.fill", "jb.tape.M"]


async def test_nobody_reads_anothers_inbox(users: dict[str, Client]) -> None:
    """The PubAck of bob's order goes to _INBOX_bob...; alice may not listen there, nor on the shared prefix."""
    for user, other in (("alice", "bob"), ("gateway", "engine"), ("operator", "engine"), ("engine", "alice")):
        c = users[user]
        await c.nc.subscribe(f"_INBOX_{other}.>")
        await c.nc.flush()
        assert await c.refused(f"_INBOX_{other}.>"), (user, other)


@pytest.mark.parametrize("user", ["projection", "fanout", "gateway", "query", "alice"])
async def test_only_the_engine_and_operator_read_the_command_log(users: dict[str, Client], user: str) -> None:
    assert await users[user].request_refused(f"$JS.API.CONSUMER.CREATE.{CMD_STREAM}", b"{}")


async def test_services_read_the_event_log(users: dict[str, Client]) -> None:
    await users["engine"].js.publish("jb.wal.M.noop", b"e")
    for user in ("projection", "fanout", "gateway", "operator"):
        sub = await users[user].js.subscribe("jb.evt.>", stream=EVT_STREAM, ordered_consumer=True)
        msg = await sub.next_msg(timeout=5)
        assert msg.subject == "jb.evt.M.noop", user
        await sub.unsubscribe()


async def test_the_fanout_writes_only_private_and_tape_subjects(users: dict[str, Client]) -> None:
    fanout = users["fanout"]
    ack = await fanout.js.publish("jb.tape.M", b"t")
    assert ack.stream == "JB_TAPE"
    for subject in ("jb.cmd.M.alice", "jb.ctl.M"):
        await fanout.publish(subject)
        assert await fanout.refused(subject)
    for user in ("alice", "gateway", "operator", "engine"):
        await users[user].publish("jb.acct.bob.M.fill")
        assert await users[user].refused("jb.acct.bob.M.fill"), user


async def test_every_role_does_its_job_as_its_own_user(
    locked: tuple[EmbeddedServer, Credentials], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine, the projection and the operator's demo, each connecting as `jetbook` would, from the file."""
    server, creds = locked
    monkeypatch.setenv("JETBOOK_CREDENTIALS", str(creds.path))
    db = tmp_path / "rm.db"
    up = await connect(server.url, "test-up", reconnect=False, role="engine")
    await ensure_streams(up.jetstream())  # what `jetbook up` does first, as the engine
    await up.close()
    stop = asyncio.Event()
    roles = [
        asyncio.create_task(engine_role(server.url, stop)),
        asyncio.create_task(project_role(server.url, db, stop)),
    ]
    nc = await connect(server.url, "test-operator", reconnect=False)
    try:
        result = await asyncio.wait_for(run_demo(nc.jetstream(), say=lambda _: None), 60)
        assert len(result.fills) == 1
        log_path = server.log_path

        async def projected() -> bool:
            import sqlite3

            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                return bool(con.execute("SELECT COUNT(*) FROM trades").fetchone()[0] == 1)
            except sqlite3.Error:
                return False

        await wait_until(projected, what="the projection to fold the demo's fill")
    finally:
        stop.set()
        await asyncio.gather(*roles)
        await nc.close()
    assert "Violation" not in log_path.read_text(), log_path.read_text()[-2000:]


@pytest.mark.parametrize("insecure", [False, True])
async def test_jetbook_up_is_locked_unless_insecure(tmp_path: Path, insecure: bool) -> None:
    """`jetbook up` as a process: a 0600 credentials file and no anonymous clients; `--insecure` is open."""
    import signal
    import subprocess
    import sys

    from tests.integration.test_cli import Lines

    data = tmp_path / "data"
    args = [sys.executable, "-m", "jetbook", "up", "--port", "0", "--data-dir", str(data), "--no-http", "--no-metrics"]
    env = {**os.environ, "COLUMNS": "200", "JETBOOK_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [*args, *(["--insecure"] if insecure else [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        lines = Lines(proc)
        url = lines.wait_for(r"NATS\s+(nats://\S+)").group(1)
        lines.wait_for(r"engine \| .*resuming at command")
        creds_path = data / CREDENTIALS_FILE
        if insecure:
            nc = await nats.connect(url, allow_reconnect=False)
            assert (await nc.jetstream().stream_info(EVT_STREAM)).config.name == EVT_STREAM
            await nc.close()
            assert not creds_path.exists()
            return
        assert stat.S_IMODE(os.stat(creds_path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(data / "nats" / "run" / "server.conf").st_mode) == 0o600
        with pytest.raises((nats.errors.NoServersError, nats.errors.Error)):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        # The index of running stacks points a client given only the URL at this file.
        creds = find_for_url([url], {"JETBOOK_STATE_DIR": str(tmp_path / "state")})
        assert creds is not None and creds.path.resolve() == creds_path.resolve()
        assert set(creds.traders) == {"alice", "bob", "carol", "dave"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    assert list((tmp_path / "state").glob("*.json")) == []  # unregistered on a clean stop


async def test_the_fanout_and_a_traders_private_view_work_as_their_own_users(
    locked: tuple[EmbeddedServer, Credentials], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fan-out worker as `fanout`, then alice reading her own events and the tape as `alice`."""
    from events.private import account_events, tape
    from projections.fanout import FanOut

    server, creds = locked
    monkeypatch.setenv("JETBOOK_CREDENTIALS", str(creds.path))
    up = await connect(server.url, "test-up", reconnect=False, role="engine")
    await ensure_streams(up.jetstream())
    await up.close()
    stop = asyncio.Event()
    engine = asyncio.create_task(engine_role(server.url, stop))
    op = await connect(server.url, "test-operator", reconnect=False)
    fanout = await connect(server.url, "test-fanout", reconnect=False, role="fanout")
    alice = await connect(server.url, "test-alice", reconnect=False, role="alice")
    try:
        await asyncio.wait_for(run_demo(op.jetstream(), say=lambda _: None), 60)
        last = await last_seq(op.jetstream(), EVT_STREAM)
        assert await asyncio.wait_for(FanOut(fanout).run(asyncio.Event(), until_seq=last), 30) == last
        mine = [event async for _, _, event in account_events(alice, "alice")]
        assert mine and all(getattr(e, "account_id", "alice") == "alice" for e in mine), mine
        trades = [t async for _, t in tape(alice)]
        assert len(trades) == 1
    finally:
        stop.set()
        await engine
        for nc in (op, fanout, alice):
            await nc.close()
    assert "Violation" not in server.log_path.read_text()


async def test_the_query_service_answers_as_its_own_user_and_reads_no_log(
    locked: tuple[EmbeddedServer, Credentials], users: dict[str, Client], tmp_path: Path
) -> None:
    """As `query`: a strong read (JB_CMD info, JB_EVT direct get) answered through allow_responses; no
    JB_CMD message, no consumer; and nobody else may serve or ask on jb.qry.> (its answers hold every account)."""
    from projections.query_service import QueryService
    from projections.read_model import ReadModel

    query = users["query"]
    db = tmp_path / "rm.db"
    await (await ReadModel.open(db)).close()
    service = QueryService(query.nc, db)
    await service.start()
    asker = await login(locked[0].url, locked[1], "query")  # `jetbook query`: another connection of the same user
    try:
        await users["operator"].js.publish("jb.ctl.M", msgpack.packb({"type": "noop"}))
        # no engine: command 1 is never decided, so the strong read times out, saying which command it waited for
        msg = await asker.nc.request(
            "jb.qry.markets", msgpack.packb({"consistency": "strong", "timeout_ms": 300}), timeout=5
        )
        answer = msgpack.unpackb(msg.data)
        assert answer["error"] == "timeout" and answer["wanted_cmd_seq"] == 1, answer
        msg = await asker.nc.request("jb.qry.markets", b"", timeout=5)
        assert msgpack.unpackb(msg.data) == {"at_seq": 0, "result": []}
    finally:
        await service.stop()
        await asker.nc.close()
    for request in (f"$JS.API.DIRECT.GET.{CMD_STREAM}", f"$JS.API.STREAM.MSG.GET.{CMD_STREAM}",
                    f"$JS.API.CONSUMER.CREATE.{EVT_STREAM}", "$JS.API.STREAM.INFO.JB_ACCT"):  # fmt: skip
        assert await query.request_refused(request, b"{}"), request
    for subject in ("jb.cmd.M.alice", "jb.acct.alice.M.fill", "_INBOX_alice.x"):
        await query.publish(subject)
        assert await query.refused(subject), subject
    for user in ("alice", "fanout", "projection"):
        await users[user].publish("jb.qry.markets")
        assert await users[user].refused("jb.qry.markets"), user
        await users[user].nc.subscribe("jb.qry.>", queue="jb-qry")
        await users[user].nc.flush()
        assert await users[user].refused("jb.qry.>"), user


async def test_a_refused_request_says_it_was_refused_not_that_the_engine_is_down(
    locked: tuple[EmbeddedServer, Credentials],
) -> None:
    """The server refuses alice's publish for bob on the side; the request itself only times out. The one-shot
    client must report the refusal (`jetbook.wiring.REFUSALS`), not send the user looking for a dead engine."""
    from jetbook.wiring import REFUSALS, connect

    server, creds = locked
    admin = await login(server.url, creds, "engine")
    await ensure_streams(admin.js)
    await admin.nc.close()
    nc = await connect(
        server.url, "test-refused", reconnect=False, login={"user": "alice", "password": creds.users["alice"]}
    )
    try:
        with pytest.raises(TimeoutError):
            await nc.jetstream(timeout=1.0).publish("jb.cmd.M.bob", b"\x80")
        refusals = REFUSALS[nc]
        assert refusals and "jb.cmd.m.bob" in refusals[0].lower()
        await nc.jetstream(timeout=2.0).publish("jb.cmd.M.alice", b"\x80")  # her own account: stored, no new refusal
        assert len(REFUSALS[nc]) == 1
    finally:
        await nc.close()


async def test_the_gateway_reads_the_command_tail_and_the_lease_and_writes_nothing_else(
    users: dict[str, Client],
) -> None:
    """What gateway/core.py does as `gateway`: JB_CMD's last sequence, the engine's lease record, a past command's
    events (message get); and it cannot touch the lease or the logs."""
    from engine.lease import LeaseRecord, lease_bucket
    from gateway.core import Gateway

    gw, engine = users["gateway"], users["engine"]
    kv = await lease_bucket(engine.js)
    await kv.put("engine", LeaseRecord("e1", 1000, "host", 1).encode())
    ack = await engine.js.publish("jb.wal.M.noop", b"e")
    assert await last_seq(gw.js, CMD_STREAM) >= 0
    # nats-py makes KV buckets without direct get, so the direct form meets no responder; it is not refused.
    with pytest.raises(nats.errors.NoRespondersError):
        await gw.js.get_msg("KV_JB_LEASE", subject="$KV.JB_LEASE.engine", direct=True)
    record = await gw.js.get_msg("KV_JB_LEASE", subject="$KV.JB_LEASE.engine")  # $JS.API.STREAM.MSG.GET.KV_JB_LEASE
    assert json.loads(record.data or b"")["holder"] == "e1"
    holder = await Gateway(gw.nc).lease_holder()  # what /ready and the status frames ask, as the gateway asks it
    assert holder is not None and holder["holder"] == "e1", holder
    assert (await gw.js.get_msg(EVT_STREAM, ack.seq)).data == b"e"  # $JS.API.STREAM.MSG.GET.JB_EVT
    for subject in ("jb.wal.M.fill", "jb.evt.M.fill", "$KV.JB_LEASE.engine", "jb.acct.bob.M.fill", "$SRV.PING"):
        await gw.publish(subject)
        assert await gw.refused(subject), subject
    for request in (
        "$JS.API.STREAM.PURGE.KV_JB_LEASE", "$JS.API.STREAM.UPDATE.KV_JB_LEASE", "$JS.API.STREAM.DELETE.KV_JB_LEASE",
        f"$JS.API.STREAM.PURGE.{CMD_STREAM}", f"$JS.API.CONSUMER.CREATE.{CMD_STREAM}",
        f"$JS.API.DIRECT.GET.{CMD_STREAM}", f"$JS.API.STREAM.MSG.GET.{CMD_STREAM}",
    ):  # fmt: skip
        assert await gw.request_refused(request, b"{}"), request
    assert (await kv.get("engine")).value == LeaseRecord("e1", 1000, "host", 1).encode()  # untouched
    assert not any("permissions violation" in e.lower() and "kv_jb_lease" in e.lower() and "$kv" in e.lower()
                   and "direct" in e.lower() for e in gw.errors), gw.errors  # fmt: skip


async def _answers(c: Client, subject: str, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    return await scatter(c.nc, subject, want, timeout)


async def test_engines_projection_and_query_with_micro_and_metrics_start_restart_and_fail_over(
    locked: tuple[EmbeddedServer, Credentials], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `jetbook up` runs them, each as its own user, micro registration and /metrics on: an active engine and a
    standby, a projection and a query service. The active stops; the standby takes over; the projection restarts.
    The operator sees all of it through `nats micro`'s subjects and the status endpoints; nothing is refused."""
    import httpx

    from engine.metrics import STATUS_SUBJECT
    from jetbook.query_cli import query_role
    from projections.metrics import PROJECTION_STATUS_SUBJECT
    from protocol.subjects import FANOUT_STATUS_SUBJECT
    from tests.integration.test_metrics import free_port, samples, scrape, value

    server, creds = locked
    monkeypatch.setenv("JETBOOK_CREDENTIALS", str(creds.path))
    db = tmp_path / "rm.db"
    up = await connect(server.url, "test-up", reconnect=False, role="engine")
    await ensure_streams(up.jetstream())
    await up.close()
    stops = {name: asyncio.Event() for name in ("e1", "e2", "p1", "p2", "q", "f1", "f2")}
    ports = {name: free_port() for name in stops}
    tasks = {
        "e1": asyncio.create_task(engine_role(server.url, stops["e1"], metrics_port=ports["e1"])),
        "p1": asyncio.create_task(project_role(server.url, db, stops["p1"], metrics_port=ports["p1"])),
        "q": asyncio.create_task(query_role(server.url, db, stops["q"], metrics_port=ports["q"])),
        "f1": asyncio.create_task(fanout_role(server.url, stops["f1"], metrics_port=ports["f1"])),
    }
    op = await login(server.url, creds, "operator")
    try:

        async def lease_holder(name: str) -> bool:
            try:
                return value(samples(await scrape(ports[name])), "jetbook_engine_lease_holder") == 1
            except httpx.HTTPError:
                return False

        await wait_until(lambda: lease_holder("e1"), what="the first engine to lead")
        tasks["e2"] = asyncio.create_task(engine_role(server.url, stops["e2"], metrics_port=ports["e2"]))
        await asyncio.wait_for(run_demo(op.js, say=lambda _: None), 60)
        pings = await _answers(op, "$SRV.PING.jetbook-engine", 2)
        assert len(pings) == 2, pings
        assert {p["name"] for p in pings} == {"jetbook-engine"} and len({p["id"] for p in pings}) == 2
        roles = sorted(a["role"] for a in await _answers(op, STATUS_SUBJECT, 2))
        assert roles == ["active", "standby"], roles
        evt_now = await last_seq(op.js, EVT_STREAM)

        async def every_role_answers() -> bool:
            fanouts = await _answers(op, FANOUT_STATUS_SUBJECT, 1, timeout=0.3)
            projections = await _answers(op, PROJECTION_STATUS_SUBJECT, 1, timeout=0.3)
            return [f.get("position") for f in fanouts] == [evt_now] and len(projections) == 1

        await wait_until(every_role_answers, 30, "the fan-out and the projection to answer their status")
        code, doc = await status_json(server.url)  # `jetbook status`, as the operator of the credentials file
        assert code == 0 and doc["problems"] == [], doc
        assert sorted(e["role"] for e in doc["engines"]) == ["active", "standby"]
        assert len(doc["query_services"]) == 1, doc
        stats = await _answers(op, "$SRV.STATS.jetbook-projection", 1)
        assert stats and "position" in stats[0]["endpoints"][0]["data"]

        stops["e1"].set()  # the active engine stops; the standby takes over
        await asyncio.wait_for(tasks.pop("e1"), 30)
        await wait_until(lambda: lease_holder("e2"), timeout=30, what="the standby to take over")
        result = await asyncio.wait_for(run_demo(op.js, say=lambda _: None), 60)
        assert len(result.fills) == 1
        [status] = await _answers(op, STATUS_SUBJECT, 1)
        assert status["role"] == "active" and status["backlog"] >= 0

        stops["f1"].set()  # the fan-out restarts and answers again, as its own user
        await asyncio.wait_for(tasks.pop("f1"), 30)
        tasks["f2"] = asyncio.create_task(fanout_role(server.url, stops["f2"], metrics_port=ports["f2"]))
        evt_now = await last_seq(op.js, EVT_STREAM)

        async def fanout_back() -> bool:
            answers = await _answers(op, FANOUT_STATUS_SUBJECT, 1, timeout=0.5)
            return bool(answers and answers[0].get("position") == evt_now)

        await wait_until(fanout_back, timeout=30, what="the restarted fan-out to answer its status")

        stops["p1"].set()  # the projection restarts and catches up
        await asyncio.wait_for(tasks.pop("p1"), 30)
        tasks["p2"] = asyncio.create_task(project_role(server.url, db, stops["p2"], metrics_port=ports["p2"]))
        evt_last = await last_seq(op.js, EVT_STREAM)

        async def projected() -> bool:  # until the new worker has subscribed, nobody answers
            answers = await _answers(op, PROJECTION_STATUS_SUBJECT, 1, timeout=0.5)
            return bool(answers and answers[0]["position"] == evt_last)

        await wait_until(projected, timeout=30, what="the restarted projection to catch up")
        answer = msgpack.unpackb((await op.nc.request("jb.qry.markets", b"", timeout=5)).data)
        assert answer["at_seq"] == evt_last and len(answer["result"]) == 2
        query = samples(await scrape(ports["q"]))
        assert value(query, "jetbook_query_answers_total", query="markets", error="none") == 1
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 30)
        await op.nc.close()
    assert "Violation" not in server.log_path.read_text(), server.log_path.read_text()[-3000:]


async def test_micro_status_under_the_shipped_accounts_conf_through_start_restart_and_fail_over(
    secured_server: str,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/accounts.conf as shipped: the engine (an active one and a standby), the projection and the fan-out, each
    as its own user, register with nats.micro and answer the operator's discovery and status requests; the active
    engine stops and the standby answers as active; the projection and the fan-out restart and answer again;
    `jetbook status` sees each stage; a valid order is decided and filed at the end. Nothing is refused."""
    from engine.metrics import STATUS_SUBJECT
    from projections.metrics import PROJECTION_STATUS_SUBJECT
    from protocol.subjects import FANOUT_STATUS_SUBJECT

    url = f"nats://{secured_server}"
    operator = {"JETBOOK_NATS_USER": "operator", "JETBOOK_NATS_PASSWORD": "pwoperator"}
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    op_nc = await nats.connect(url, user="operator", password="pwoperator", inbox_prefix="_INBOX_operator",
                               error_cb=on_error)  # fmt: skip
    op = Client(op_nc, errors)
    stops: dict[str, asyncio.Event] = {}
    tasks: dict[str, asyncio.Task[None]] = {}

    async def start(name: str, user: str, role: Any, subject: str, want: int) -> None:
        """Start a role as `user` and wait until `want` instances answer on its status subject: each role reads its
        login from the environment when it connects, so the next one may change it only then."""
        monkeypatch.setenv("JETBOOK_NATS_USER", user)
        monkeypatch.setenv("JETBOOK_NATS_PASSWORD", f"pw{user}")
        stops[name] = asyncio.Event()
        tasks[name] = asyncio.create_task(role(stops[name]))

        async def answering() -> bool:
            return len(await answers(subject, want)) >= want

        await wait_until(answering, 30, f"{name} ({user}) to answer on {subject}")

    async def stop(name: str) -> None:
        stops[name].set()
        await asyncio.wait_for(tasks.pop(name), 30)

    async def answers(subject: str, want: int) -> list[dict[str, Any]]:
        return await _answers(op, subject, want, timeout=0.5)

    async def status_shows(engines: list[str], projections: int, fanouts: int) -> bool:
        code, doc = await status_json(url, env=operator)
        return (
            code == 0 and sorted(e["role"] for e in doc["engines"]) == engines
            and len(doc["projections"]) == projections and len(doc["fanouts"]) == fanouts
        )  # fmt: skip

    try:

        async def active() -> bool:
            found = await answers(STATUS_SUBJECT, 1)
            return bool(found and found[0]["role"] == "active")

        await start("e1", "engine", lambda s: engine_role(url, s, lease_ttl=1.0), STATUS_SUBJECT, 1)
        await wait_until(active, what="the engine to lead and answer its status")
        await start("e2", "engine", lambda s: engine_role(url, s, lease_ttl=1.0, standby=True), STATUS_SUBJECT, 2)
        await start(
            "p1", "projection", lambda s: project_role(url, tmp_path / "rm.db", s), PROJECTION_STATUS_SUBJECT, 1
        )
        await start("f1", "fanout", lambda s: fanout_role(url, s), FANOUT_STATUS_SUBJECT, 1)
        await wait_until(lambda: status_shows(["active", "standby"], 1, 1), 30, "`jetbook status`: all four up")
        for service in ("jetbook-engine", "jetbook-projection", "jetbook-fanout"):
            for verb in ("PING", "INFO", "STATS"):
                found = await _answers(op, f"$SRV.{verb}.{service}", 1)
                assert found and found[0]["name"] == service, (verb, service, found)

        await stop("e1")  # fail-over: the standby takes the lease and answers as the active engine
        await wait_until(active, 30, "the standby to take over and answer as active")
        await stop("p1")  # restarts, as their own users
        await stop("f1")
        await start(
            "p2", "projection", lambda s: project_role(url, tmp_path / "rm.db", s), PROJECTION_STATUS_SUBJECT, 1
        )
        await start("f2", "fanout", lambda s: fanout_role(url, s), FANOUT_STATUS_SUBJECT, 1)
        await wait_until(lambda: status_shows(["active"], 1, 1), 30, "`jetbook status` after the fail-over")

        market = msgpack.packb({"type": "create_market", "market_id": "M", "base": "B", "quote": "Q"})
        order = msgpack.packb({"type": "place_order", "client_order_id": "o1", "side": "buy", "price": 1, "qty": 1})
        await op.js.publish("jb.ctl.M", market)
        ack = await op.js.publish("jb.cmd.M.alice", order)

        async def decided_and_filed() -> bool:
            evt = await last_seq(op.js, EVT_STREAM)
            if not evt or decode((await op.js.get_msg(EVT_STREAM, evt)).data).cmd_seq != ack.seq:
                return False
            fanout, projection = await answers(FANOUT_STATUS_SUBJECT, 1), await answers(PROJECTION_STATUS_SUBJECT, 1)
            return bool(fanout and projection and fanout[0]["position"] == projection[0]["position"] == evt)

        await wait_until(decided_and_filed, 30, "the order decided, projected and filed by the restarted roles")
        tail = decode((await op.js.get_msg(EVT_STREAM, await last_seq(op.js, EVT_STREAM))).data)
        assert tail.type == "order_accepted" and tail.client_order_id == "o1", tail
    finally:
        for event in stops.values():
            event.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 30)
        await op_nc.close()
    assert not [e for e in errors if "permission" in e.lower()], errors
    refused = [line for line in (tmp_path / "server.log").read_text().splitlines() if "Violation" in line]
    assert not refused, refused  # the roles' own registrations and answers included


async def test_sharded_engines_and_a_standby_start_restart_and_fail_over_under_the_shard_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two market shards, locked down as `jetbook up --shards 2` locks them: each shard's engine as the engine user,
    a standby for shard 0 that takes over and a third engine that restarts as its standby; traders publish on the
    client subjects (the server maps them), may not write either shard's log, and a direct publish to the wrong
    shard is refused by its engine. Nothing the roles do is refused by the server."""
    from engine.exchange import shard_app
    from protocol.shards import partition
    from protocol.streams import ensure_shard_streams
    from tests.integration.test_shards import _all_decided, _redecide

    shards = 2
    creds = Credentials.load_or_create(tmp_path / CREDENTIALS_FILE, ["alice", "bob"])
    server = EmbeddedServer(tmp_path / "nats", port=0, credentials=creds, shards=shards)
    creds.url = server.start()
    creds.save()
    monkeypatch.setenv("JETBOOK_CREDENTIALS", str(creds.path))
    stops = {name: asyncio.Event() for name in ("a0", "b0", "c0", "a1")}
    tasks: dict[str, asyncio.Task[None]] = {}

    def start(name: str, standby: bool = False) -> None:
        role = engine_role(server.url, stops[name], shard=int(name[1]), shards=shards, standby=standby)
        tasks[name] = asyncio.create_task(role)

    users = {u: await login(server.url, creds, u) for u in ("engine", "operator", "alice")}
    op, alice = users["operator"], users["alice"]
    try:
        await ensure_shard_streams(users["engine"].js, shards)
        start("a0")
        start("a1")
        start("b0", standby=True)
        markets = ["M1", "M2", "M3", "M4"]
        for m in markets:
            await op.js.publish(
                f"jb.ctl.{m}", msgpack.packb({"type": "create_market", "market_id": m, "base": "B", "quote": "Q"})
            )

        async def trade(n: int, tag: str) -> None:
            for i in range(n):
                body = {"type": "place_order", "client_order_id": f"{tag}{i}", "side": ("buy", "sell")[i % 2],
                        "price": 1000, "qty": 1}  # fmt: skip
                await alice.js.publish(f"jb.cmd.{markets[i % 4]}.alice", msgpack.packb(body))

        await trade(40, "x")
        await wait_until(lambda: _all_decided(op.js, shards), 30, "both shards to decide")
        stops["a0"].set()  # shard 0's active stops; its standby takes over
        await asyncio.wait_for(tasks.pop("a0"), 30)
        await trade(40, "y")
        await wait_until(lambda: _all_decided(op.js, shards), 30, "the standby to decide shard 0")
        start("c0", standby=True)  # a restarted engine joins as the new active's standby
        await wait_until(lambda: _lease_record_seen(users["engine"]), 30, "a lease holder")
        stops["b0"].set()
        await asyncio.wait_for(tasks.pop("b0"), 30)
        await trade(40, "z")
        wrong = 1 - partition("M1", shards)
        await alice.publish(f"jbs.{wrong}.cmd.M1.alice", msgpack.packb({"type": "cancel_all"}))  # allowed, refused
        await wait_until(lambda: _all_decided(op.js, shards), 30, "the restarted engine to decide shard 0")

        # `jetbook status` as the operator (the credentials file): c0 (which took shard 0 over from b0) and a1.
        code, doc = await status_json(server.url)
        assert code == 0 and doc["shards"] == shards and doc["problems"] == [], doc
        assert sorted((e["evt_stream"], e["role"]) for e in doc["engines"]) == [
            ("JB_EVT_0", "active"), ("JB_EVT_1", "active"),
        ]  # fmt: skip
        for k in range(shards):
            stored = await read_all_js(op.js, f"JB_EVT_{k}")
            assert stored == await _redecide(op.js, k, shards)
        assert shard_app(0, shards).streams.lease_key == "engine-0"
        # The log is the engine's alone; a trader's own subject on another account is still refused.
        await alice.publish(f"jbs.{wrong}.wal.M1.fill")
        assert await alice.refused(f"jbs.{wrong}.wal.M1.fill")
        await alice.publish("jb.cmd.M1.bob")
        assert await alice.refused(f"jbs.{partition('M1', shards)}.cmd.M1.bob")
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 30)
        for c in users.values():
            await c.nc.close()
        server.stop()
    log = server.log_path.read_text()
    roles_refused = [line for line in log.splitlines() if "Violation" in line and "alice" not in line]
    assert not roles_refused, roles_refused


async def _lease_record_seen(engine: Client) -> bool:
    kv = await engine.js.key_value("JB_LEASE")
    try:
        return bool((await kv.get("engine-0")).value)
    except Exception:
        return False


async def read_all_js(js: Any, stream: str) -> list[bytes]:
    from tests.integration.harness import read_all

    return [m.data for m in await read_all(js, stream)]
