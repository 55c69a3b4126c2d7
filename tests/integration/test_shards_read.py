"""The read side of a sharded venue on a real nats-server (issue 15): every reader follows every shard.

A 2-shard venue (ensure_shard_streams, one EngineService per shard, in-process) is read by the projection (one
file, a position per shard), the query service (strong reads wait for every shard's tail), `replay verify` (each
shard's log re-decided on its own) and the fan-out (exactly once per shard stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine.core import Engine
from engine.exchange import APP as EXCHANGE
from engine.exchange import shard_app
from events.model import decode, encode
from events.stream_readers import last_seq
from jetbook.server import EmbeddedServer
from projections import queries
from projections.read_model import ReadModel
from projections.runner import ProjectionRunner
from protocol.shards import cmd_stream_name, evt_stream_name, partition
from protocol.streams import ensure_fanout_streams, ensure_shard_streams
from replay.hashing import db_content_hash
from replay.rebuild import rebuild_shards
from tests.conftest import wait_until
from tests.integration.harness import running_engine, workload

SHARDS = 2
MARKETS = ("M1", "M2", "M3", "M4")
EVT = [evt_stream_name(k, SHARDS) for k in range(SHARDS)]


@pytest.fixture
def venue(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "nats", port=0, shards=SHARDS)
    server.start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def engines(nc: Any, url: str | None = None) -> AsyncIterator[None]:
    """One engine per shard; with `url`, each holding its shard's lease (engine-<k>), as `jetbook engine` does."""
    from engine.lease import Lease

    async with contextlib.AsyncExitStack() as stack:
        for k in range(SHARDS):
            app = shard_app(k, SHARDS)
            lease = None if url is None else Lease(lambda: nats.connect(url), ttl=0.8, key=app.streams.lease_key)
            await stack.enter_async_context(running_engine(nc, app=app, snapshot_every=0, lease=lease))
        yield


async def tails(js: Any) -> dict[str, int]:
    return {s: await last_seq(js, s) for s in EVT}


async def all_decided(js: Any) -> bool:
    """Every command of every JB_CMD_k has its events in JB_EVT_k."""
    for k in range(SHARDS):
        cmd = await last_seq(js, cmd_stream_name(k, SHARDS))
        evt = await last_seq(js, EVT[k])
        if cmd and (not evt or decode((await js.get_msg(EVT[k], evt)).data).cmd_seq < cmd):
            return False
    return True


async def trade(nc: Any, commands: list[tuple[str, bytes]]) -> dict[str, int]:
    """Publish the commands to a fresh 2-shard venue and let its engines decide them all; every shard's tail."""
    js = nc.jetstream()
    await ensure_shard_streams(js, SHARDS)
    async with engines(nc):
        for subject, data in commands:
            await js.publish_async(subject, data)
        await js.publish_async_completed()
        await wait_until(lambda: all_decided(js), 60, "every shard to decide its commands")
    return await tails(js)


def market_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """What a market shows, without the columns that number events in their stream (seq, cmd_seq, ts)."""
    con = sqlite3.connect(db)
    try:
        return {
            "orders": con.execute(
                "SELECT market_id, order_id, account_id, client_order_id, side, price, qty, filled_qty,"
                " cancelled_qty, status FROM orders ORDER BY market_id, order_id"
            ).fetchall(),
            "trades": con.execute(
                "SELECT market_id, trade_id, price, qty, maker_order_id, taker_order_id, maker_account,"
                " taker_account FROM trades ORDER BY market_id, trade_id"
            ).fetchall(),
            "levels": con.execute("SELECT * FROM book_levels ORDER BY 1, 2, 3, 4").fetchall(),
            "positions": con.execute("SELECT * FROM positions ORDER BY 1, 2, 3").fetchall(),
            "markets": con.execute(
                "SELECT market_id, last_trade_id, last_price, volume, state FROM markets ORDER BY 1"
            ).fetchall(),
            "rejections": con.execute(
                "SELECT market_id, reason FROM rejections UNION ALL SELECT market_id, reason FROM shard_rejections"
                " ORDER BY 1, 2"
            ).fetchall(),
        }
    finally:
        con.close()


async def one_shard_model(commands: list[tuple[str, bytes]], db: Path) -> None:
    """The reference: one engine decides the whole log in publish order, folded into a one-shard file."""
    engine = Engine()
    events = [e for seq, (subject, data) in enumerate(commands, 1) for e in engine.handle(seq, seq, subject, data)]
    model = await ReadModel.open(db)
    try:
        await model.apply(list(enumerate(events, 1)))
    finally:
        await model.close()


def file_positions(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return queries.stream_positions(con)
    except sqlite3.OperationalError:  # schema not created yet
        return {}
    finally:
        con.close()


async def test_the_projection_folds_every_shard_into_the_rows_of_one(venue: EmbeddedServer, tmp_path: Path) -> None:
    commands = workload(600, seed=15, markets=MARKETS)
    assert {partition(m, SHARDS) for m in MARKETS} == {0, 1}  # both shards have markets
    nc = await nats.connect(venue.url)
    try:
        ends = await trade(nc, commands)
        db = tmp_path / "sharded.db"
        runner = ProjectionRunner(EXCHANGE, nc.jetstream(), db, shards=SHARDS, batch=97)
        await runner.run(asyncio.Event(), until=ends)
        rebuilt = await rebuild_shards(nc.jetstream(), tmp_path / "rebuilt.db", SHARDS)  # `replay rebuild`
    finally:
        await nc.close()
    assert runner.positions == ends and file_positions(db) == ends
    status = runner.metrics.status()  # the micro status: the sum, and each shard stream's position and tail
    assert status["position"] == sum(ends.values()) and status["lag_events"] == 0
    assert status["streams"] == {stream: {"position": end, "tail": end} for stream, end in ends.items()}
    scraped = {
        (sample.name, sample.labels["stream"]): sample.value
        for family in text_string_to_metric_families(generate_latest(runner.metrics.registry).decode())
        for sample in family.samples
        if family.name.startswith("jetbook_projection_stream_")
    }
    assert scraped == {
        **{("jetbook_projection_stream_position", stream): end for stream, end in ends.items()},
        **{("jetbook_projection_stream_lag_events", stream): 0 for stream in ends},
    }
    assert db_content_hash(rebuilt.target) == db_content_hash(db)  # the same rows and positions per shard
    reference = tmp_path / "one.db"
    await one_shard_model(commands, reference)
    want, got = market_rows(reference), market_rows(db)
    assert len(got["trades"]) > 20 and len(got["orders"]) > 100
    assert got == want


def _project_proc(url: str, db: Path) -> subprocess.Popen[bytes]:
    with db.with_suffix(".log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "jetbook", "project", "--nats-url", url, "--db", str(db)],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


async def test_kill_9_of_the_projection_loses_and_duplicates_nothing_per_shard(
    venue: EmbeddedServer, tmp_path: Path
) -> None:
    commands = workload(6000, seed=7, markets=MARKETS)
    nc = await nats.connect(venue.url)
    try:
        ends = await trade(nc, commands)
        db = tmp_path / "live.db"
        seen = []
        for fraction in (0.1, 0.35):
            proc = _project_proc(venue.url, db)  # finds the shard count itself (venue_shards)

            async def past(f: float = fraction) -> bool:
                return sum(file_positions(db).values()) >= int(sum(ends.values()) * f)

            await wait_until(past, 60, f"projection past {fraction:.0%}")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            seen.append(file_positions(db))
        assert seen[0] != ends  # killed before the end
        log_path = db.with_suffix(".log")
        offset = log_path.stat().st_size
        proc = _project_proc(venue.url, db)

        async def started() -> bool:  # its signal handlers are in place: a SIGTERM now is a stop, not a kill
            return b"; reading JB_EVT_" in log_path.read_bytes()[offset:]

        await wait_until(started, 60, "the restarted projection to start reading")
        try:

            async def at_end() -> bool:
                return file_positions(db) == ends

            await wait_until(at_end, 60, "projection to reach every shard's end")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        fresh = tmp_path / "fresh.db"
        await ProjectionRunner(EXCHANGE, nc.jetstream(), fresh, shards=SHARDS).run(asyncio.Event(), until=ends)
    finally:
        await nc.close()
    assert db_content_hash(db) == db_content_hash(fresh)


async def test_verify_proves_each_shard_and_names_the_stream_of_a_forged_event(
    venue: EmbeddedServer, tmp_path: Path
) -> None:
    from replay.verify import verify_shards

    nc = await nats.connect(venue.url)
    try:
        ends = await trade(nc, workload(300, seed=4, markets=MARKETS))
        js = nc.jetstream()
        results = await verify_shards(js, SHARDS)
        assert [(r.evt_stream, r.identical, r.pending) for r in results] == [(s, True, 0) for s in EVT]
        assert [r.events for r in results] == [ends[s] for s in EVT]
        # Something that is not the engine writes into shard 1's log (what permissions must refuse).
        forged = Engine().handle(1, 1, "jb.ctl.M9", msgpack.packb({"type": "create_market", "market_id": "M9",
                                                                 "base": "B", "quote": "Q"}))  # fmt: skip
        ack = await js.publish("jbs.1.wal.M9.market_created", encode(forged[0]))
        assert (ack.stream, ack.seq) == (EVT[1], ends[EVT[1]] + 1)
    finally:
        await nc.close()
    proc = subprocess.run(
        [sys.executable, "-m", "jetbook", "replay", "verify", "--nats-url", venue.url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{EVT[0]}: identical"
    assert f"{EVT[1]}: DIVERGED at {EVT[1]} seq {ends[EVT[1]] + 1}: {EVT[1]} has an event" in proc.stdout
    assert lines[-1] == f"1 of {SHARDS} shards identical"


async def ask(nc: Any, name: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(f"jb.qry.{name}", msgpack.packb(body), timeout=10)
    answer: dict[str, Any] = msgpack.unpackb(msg.data)
    return answer


async def test_strong_reads_see_every_shard(venue: EmbeddedServer, tmp_path: Path) -> None:
    from projections.query_service import QueryService

    nc = await nats.connect(venue.url)
    js = nc.jetstream()
    db = tmp_path / "rm.db"
    stop = asyncio.Event()
    service = QueryService(nc, db, shards=SHARDS)
    try:
        await trade(nc, workload(200, seed=9, markets=MARKETS))
        async with engines(nc):
            projection = asyncio.create_task(ProjectionRunner(EXCHANGE, js, db, shards=SHARDS, batch=7).run(stop))
            await service.start()
            m1, m2 = (next(m for m in MARKETS if partition(m, SHARDS) == k) for k in range(SHARDS))
            for m in (m1, m2):  # a market of each shard, created and traded just before the strong reads
                await js.publish(f"jb.ctl.N{m}", msgpack.packb({"type": "create_market", "market_id": f"N{m}",
                                                                "base": "B", "quote": "Q"}))  # fmt: skip
            body = {"type": "place_order", "client_order_id": "late", "side": "buy", "price": 1000, "qty": 1}
            ack = await js.publish(f"jb.cmd.{m2}.zed", msgpack.packb(body))
            assert ack.stream == cmd_stream_name(partition(m2, SHARDS), SHARDS)
            markets = await ask(nc, "markets", {"consistency": "strong"})
            orders = await ask(nc, "orders", {"market_id": m2, "account_id": "zed", "consistency": "strong"})
            stale = await ask(nc, "markets", {"min_seq": 1})
            tail = await tails(js)
            stop.set()
            await projection
    finally:
        await service.stop()
        await nc.close()
    names = {m["market_id"] for m in markets["result"]}
    assert {f"N{m1}", f"N{m2}"} <= names, names  # both shards' newest commands are in one strong answer
    assert markets["at_seq"] is None and set(markets["at"]) == set(EVT)
    assert [o["client_order_id"] for o in orders["result"]] == ["late"]
    shard = EVT[partition(m2, SHARDS)]
    assert orders["at_seq"] == orders["at"][shard] and 0 < orders["at_seq"] <= tail[shard]
    assert stale["error"] == "invalid" and "market_id" in stale["detail"]


async def test_the_fanout_copies_every_shard_exactly_once_across_interruptions(
    venue: EmbeddedServer, tmp_path: Path
) -> None:
    from projections.fanout import FanOut, outputs
    from protocol.subjects import ACCT_STREAM, HDR_EVT_SEQ, HDR_MSG_ID, TAPE_STREAM
    from tests.integration.harness import read_all

    nc = await nats.connect(venue.url)
    js = nc.jetstream()
    try:
        ends = await trade(nc, workload(800, seed=21, markets=MARKETS))
        want: dict[str, list[str]] = {ACCT_STREAM: [], TAPE_STREAM: []}  # per output stream, per shard, in order
        per_shard: dict[tuple[str, str], list[str]] = {}
        for k, evt in enumerate(EVT):
            for m in await read_all(js, evt):
                for o in outputs(m.seq, decode(m.data), m.data, evt, k):
                    want[o.stream].append(o.msg_id)
                    per_shard.setdefault((o.stream, evt), []).append(o.msg_id)
        assert all(per_shard.get((s, e)) for s in want for e in EVT)  # both shards feed both outputs
        await ensure_fanout_streams(js)
        # Cut the worker off mid-publish twice (a cancelled task: some of a batch's publishes sent, not all acked),
        # then let a fresh one finish from the output streams' tails.
        for cut in (0.3, 0.7):
            worker = FanOut(nc, batch=11, shards=SHARDS)
            task = asyncio.create_task(worker.run(asyncio.Event()))

            async def past(f: float = cut) -> bool:
                return await last_seq(js, ACCT_STREAM) >= int(len(want[ACCT_STREAM]) * f)

            await wait_until(past, 30, f"fan-out past {cut:.0%}")
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=30)  # a worker that ignored the cancel fails, not hangs
            assert done, "the fan-out worker did not stop when cancelled"
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
        assert 0 < await last_seq(js, ACCT_STREAM) < len(want[ACCT_STREAM])
        final = FanOut(nc, batch=11, shards=SHARDS)
        await asyncio.wait_for(final.run(asyncio.Event(), until=ends), 60)
        stored = {s: await read_all(js, s) for s in want}
    finally:
        await nc.close()
    for stream, msgs in stored.items():
        ids = [m.headers[HDR_MSG_ID] for m in msgs]  # type: ignore[index]
        assert sorted(ids) == sorted(want[stream]) and len(set(ids)) == len(ids), stream  # all, once each
        for evt in EVT:  # each shard's outputs in that shard's order
            mine = [m.headers[HDR_MSG_ID] for m in msgs if m.headers["Jb-Evt-Stream"] == evt]  # type: ignore[index]
            assert mine == per_shard[(stream, evt)]
        assert all(int(m.headers[HDR_EVT_SEQ]) > 0 for m in msgs)  # type: ignore[index]


async def test_the_gateway_answers_commands_of_every_shard_and_is_ready_on_both(
    venue: EmbeddedServer, tmp_path: Path
) -> None:
    import httpx

    from projections.query_service import QueryService
    from tests.integration.gateway_harness import running_gateway

    nc = await nats.connect(venue.url)
    js = nc.jetstream()
    db = tmp_path / "rm.db"
    stop = asyncio.Event()
    service = QueryService(nc, db, shards=SHARDS)
    try:
        await ensure_shard_streams(js, SHARDS)
        async with engines(nc, venue.url), running_gateway(venue.url) as base:
            projection = asyncio.create_task(ProjectionRunner(EXCHANGE, js, db, shards=SHARDS).run(stop))
            await service.start()
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                m0, m1 = (next(m for m in MARKETS if partition(m, SHARDS) == k) for k in range(SHARDS))
                outcomes = {}
                for m in (m0, m1):  # each market's events come back from its own shard's tail
                    body = {"market_id": m, "command": {"type": "create_market", "market_id": m, "base": "B",
                                                        "quote": "Q"}}  # fmt: skip
                    r = await c.post("/commands", json=body)
                    assert r.status_code == 200, r.text
                    order = {"type": "place_order", "client_order_id": f"o-{m}", "side": "buy", "price": 100,
                             "qty": 2}  # fmt: skip
                    r = await c.post("/commands", json={"market_id": m, "account_id": "ann", "command": order})
                    assert r.status_code == 200, r.text
                    outcomes[m] = r.json()
                r = await c.get("/markets", params={"consistency": "strong"})
                assert r.status_code == 200, r.text
                listed = r.json()

                async def ready() -> bool:
                    return (await c.get("/ready")).status_code == 200

                await wait_until(ready, 15, "the gateway to be ready")
                checks = (await c.get("/ready")).json()["checks"]
            stop.set()
            await projection
    finally:
        await service.stop()
        await nc.close()
    for m, outcome in outcomes.items():
        assert [e["type"] for e in outcome["events"]] == ["order_accepted"]
        assert outcome["events"][0]["client_order_id"] == f"o-{m}"
    assert {x["market_id"] for x in listed["result"]} == {m0, m1}
    assert listed["at_seq"] is None and set(listed["at"]) == set(EVT)
    assert set(checks["leases"]) == {"engine-0", "engine-1"} and all(checks["leases"].values())
    assert set(checks["read_model_at"]) == set(EVT) and checks["lag"] == 0


async def test_replay_at_takes_a_position_per_shard(venue: EmbeddedServer, tmp_path: Path) -> None:
    from replay.at import state_at

    commands = workload(300, seed=5, markets=MARKETS)
    nc = await nats.connect(venue.url)
    try:
        ends = await trade(nc, commands)
        db = tmp_path / "rm.db"
        await ProjectionRunner(EXCHANGE, nc.jetstream(), db, shards=SHARDS).run(asyncio.Event(), until=ends)
        view = await state_at(nc.jetstream(), 0, None, ends)
        early = await state_at(nc.jetstream(), 0, None, {EVT[0]: ends[EVT[0]], EVT[1]: 0})
        from events.model import Fill
        from tests.integration.harness import read_all

        trades = [
            (e, m.seq) for e in EVT for m in await read_all(nc.jetstream(), e) if decode(m.data).type == Fill.type
        ]
    finally:
        await nc.close()
    # `jetbook fills` (an operator's, from the logs) lists every shard's fills, each with its stream
    proc = subprocess.run(
        [sys.executable, "-m", "jetbook", "fills", "--nats-url", venue.url, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    listed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(trades) > 10 and [(x["evt_stream"], x["seq"]) for x in listed] == trades
    con = sqlite3.connect(db)
    try:
        from replay.at import query

        live = query(con, 0, None)
    finally:
        con.close()
    assert (view.top, view.open_orders, view.positions) == (live.top, live.open_orders, live.positions)
    assert view.as_json()["at"] == ends
    shard1 = {m for m in MARKETS if partition(m, SHARDS) == 1}
    assert not {t["market_id"] for t in early.top} & shard1  # shard 1 at 0: none of its markets yet
    assert {t["market_id"] for t in early.top} == set(MARKETS) - shard1
    proc = subprocess.run(
        [sys.executable, "-m", "jetbook", "replay", "at", "--nats-url", venue.url, "--seq", "5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--at needs every shard stream" in proc.stderr, proc.stderr


async def test_replay_rebuild_at_a_position_per_shard_is_the_venue_as_it_was_then(
    venue: EmbeddedServer, tmp_path: Path
) -> None:
    from replay.at import query, state_at

    commands = workload(300, seed=6, markets=MARKETS)
    nc = await nats.connect(venue.url)
    try:
        ends = await trade(nc, commands)
        mid = {stream: end // 2 for stream, end in ends.items()}
        then = await state_at(nc.jetstream(), 0, None, mid)  # the venue at those positions, folded from the logs
    finally:
        await nc.close()

    def rebuild(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jetbook", "replay", "rebuild", "--nats-url", venue.url, "--db", str(db), *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    db = tmp_path / "then.db"
    at = ",".join(f"{stream}={seq}" for stream, seq in mid.items())
    done = rebuild(db, "--at", at)
    assert done.returncode == 0, done.stderr
    assert f"to {EVT[0]} {mid[EVT[0]]}, {EVT[1]} {mid[EVT[1]]}" in done.stdout
    assert file_positions(db) == mid
    con = sqlite3.connect(db)
    try:
        rebuilt = query(con, 0, None)
    finally:
        con.close()
    assert (rebuilt.top, rebuilt.open_orders, rebuilt.positions) == (then.top, then.open_orders, then.positions)
    assert then.open_orders  # a venue mid-way, not an empty one
    # Refused before anything is written: past a tail, a stream missing, one stream's --to-seq.
    beyond = rebuild(tmp_path / "x.db", "--at", f"{EVT[0]}={ends[EVT[0]] + 1},{EVT[1]}=1")
    assert beyond.returncode == 2 and "past the end of the log" in beyond.stderr, beyond.stderr
    missing = rebuild(tmp_path / "x.db", "--at", f"{EVT[0]}=1")
    assert missing.returncode == 2 and "--at needs every shard stream" in missing.stderr, missing.stderr
    one = rebuild(tmp_path / "x.db", "--to-seq", "5")
    assert one.returncode == 2 and "a sharded venue takes --at" in one.stderr, one.stderr
    # Hostile --at values: each refused with a reason (exit 2, no traceback), nothing written.
    for hostile in (
        f"{EVT[0]}=²,{EVT[1]}=1",  # str.isdigit says yes, int() says no
        f"{EVT[0]}={'9' * 5000},{EVT[1]}=1",  # past int()'s digit limit
        f"{EVT[0]}=-1,{EVT[1]}=1",
        f"{EVT[0]}=1,{EVT[0]}=2",
        "\x01\u202e\udcff",  # control, bidi override, a lone surrogate (argv cannot hold a NUL)
    ):
        refused = rebuild(tmp_path / "x.db", "--at", hostile)
        assert refused.returncode == 2 and "error:" in refused.stderr, (hostile[:40], refused.stderr[-500:])
        assert "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert not (tmp_path / "x.db").exists()
    # The venue still decides a valid order after all of it.
    valid = (
        "jb.cmd.M1.zed",
        msgpack.packb(
            {"type": "place_order", "client_order_id": "after-hostile", "side": "buy", "price": 900, "qty": 1}
        ),
    )  # below every ask: it rests
    nc = await nats.connect(venue.url)
    try:
        after = await trade(nc, [valid])
        stream = evt_stream_name(partition("M1", SHARDS), SHARDS)
        tail = decode((await nc.jetstream().get_msg(stream, after[stream])).data)
    finally:
        await nc.close()
    assert after[stream] > ends[stream] and tail.type == "order_accepted" and tail.client_order_id == "after-hostile"
