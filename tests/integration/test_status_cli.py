"""`jetbook status` against real roles on a real nats-server: what it shows, its exit status, and answers that are
not a status. (Under deploy/accounts.conf it runs as the operator in test_lockdown's start, restart and fail-over
tests.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgpack

from events.model import decode
from events.stream_readers import last_seq
from jetbook.demo import run_demo
from jetbook.query_cli import query_role
from jetbook.roles import engine_role, fanout_role, project_role
from protocol.subjects import (
    ENGINE_STATUS_SUBJECT,
    EVT_STREAM,
    FANOUT_STATUS_SUBJECT,
    PROJECTION_STATUS_SUBJECT,
    QUERY_SERVICE,
)
from tests.conftest import wait_until
from tests.integration.harness import jetbook_status, scatter, status_json


async def test_status_shows_the_active_engine_its_standby_and_the_projection_and_fails_without_an_engine(
    nats_server: Any, js: Any, tmp_path: Path
) -> None:
    url = nats_server.url
    code, out, _ = await jetbook_status(url)  # the streams exist (the js fixture), nobody decides them
    assert code == 1 and "venue: 1 shard" in out and "problem: JB_EVT: no active engine" in out
    assert "not a status" not in out  # the server's no-responders notices are not answers

    stops = {name: asyncio.Event() for name in ("active", "standby", "projection", "query", "fanout")}
    tasks = {"active": asyncio.create_task(engine_role(url, stops["active"], lease_ttl=1.0))}
    db = tmp_path / "rm.db"
    try:
        nc = js._nc

        async def asked(subject: str, want: int) -> list[dict[str, Any]]:
            """The roles' answers in this process (the waits poll; the command itself is run for the checks)."""
            return await scatter(nc, subject, want, timeout=0.3)

        async def answering(roles: list[str]) -> bool:
            return sorted(e["role"] for e in await asked(ENGINE_STATUS_SUBJECT, len(roles))) == roles

        await wait_until(lambda: answering(["active"]), 30, "the engine to answer as active")
        tasks["standby"] = asyncio.create_task(engine_role(url, stops["standby"], lease_ttl=1.0, standby=True))
        tasks["projection"] = asyncio.create_task(project_role(url, db, stops["projection"]))
        tasks["query"] = asyncio.create_task(query_role(url, db, stops["query"]))
        tasks["fanout"] = asyncio.create_task(fanout_role(url, stops["fanout"]))
        await asyncio.wait_for(run_demo(js, say=lambda _: None), 60)
        end = await last_seq(js, EVT_STREAM)

        async def both_and_projected() -> bool:
            engines = await asked(ENGINE_STATUS_SUBJECT, 2)
            return (
                sorted(e["role"] for e in engines) == ["active", "standby"]
                and {e["last_evt_seq"] for e in engines} == {end}  # the standby follows the log
                and [p["position"] for p in await asked(PROJECTION_STATUS_SUBJECT, 1)] == [end]
                and len(await asked(f"$SRV.PING.{QUERY_SERVICE}", 1)) == 1
                and [f.get("position") for f in await asked(FANOUT_STATUS_SUBJECT, 1)] == [end]
            )

        await wait_until(both_and_projected, 30, "an active, a standby and a caught-up projection")
        code, out, _ = await jetbook_status(url)
        assert code == 0, out
        lines = out.splitlines()
        assert lines[:2] == ["venue: 1 shard", "engines (2)"]
        assert lines[2].split()[:2] == ["JB_EVT", "active"] and "(held)" in lines[2]  # the active one first
        assert lines[3].split()[:2] == ["JB_EVT", "standby"] and "(held)" not in lines[3]
        assert f"position {end}  lag 0 events" in out and "problem" not in out
        assert "query services (1): " in out
        assert f"fan-out workers (1)\n  position {end}  lag 0 events" in out
        code, doc = await status_json(url)
        assert code == 0 and doc["shards"] == 1 and doc["problems"] == []
        assert {e["app"] for e in doc["engines"]} == {"exchange"}, doc["engines"]
        assert {(e["cmd_stream"], e["evt_stream"], e["last_evt_seq"]) for e in doc["engines"]} == {
            ("JB_CMD", "JB_EVT", end)
        }

        # Answers that are not a status (on an open server anyone may answer): left out and counted, never a crash.
        rogue = await nc.subscribe(ENGINE_STATUS_SUBJECT)

        async def answer_badly() -> None:
            async for msg in rogue.messages:
                for data in (b"\xff\xfe", b"[1, 2]", json.dumps({"role": "x" * 5000}).encode()):
                    await nc.publish(msg.reply, data)

        answerer = asyncio.create_task(answer_badly())
        try:
            code, out, _ = await jetbook_status(url)
            assert code == 0, out
            assert "2 answer(s) that are not a status were left out" in out
            assert "engines (3)" in out and max(len(line) for line in out.splitlines()) < 200
        finally:
            answerer.cancel()
            await rogue.unsubscribe()

        # Hostile arguments: refused before connecting (exit 2, no traceback); then the venue decides an order.
        for wait in ("nan", "-1", "61", "1e309", "\u202e1"):  # (0 is refused in the test below)
            code, out, err = await jetbook_status(url, "--wait", wait)
            assert code == 2 and "Traceback" not in err and not out, (wait[:20], err[-300:])
        for extra in (("--json", "--nope"), ("--nats-url", "nats://[::1")):
            code, out, err = await jetbook_status(url, *extra)
            assert code == 2 and "Traceback" not in err, (extra, err[-300:])
        order = {"type": "place_order", "client_order_id": "after-status", "side": "buy", "price": 1, "qty": 1}
        ack = await js.publish("jb.cmd.ETH-USDC.carol", msgpack.packb(order))

        async def decided() -> bool:
            tail = decode((await js.get_msg(EVT_STREAM, await last_seq(js, EVT_STREAM))).data)
            return tail.cmd_seq == ack.seq

        await wait_until(decided, 30, "the order after the hostile status calls to be decided")
        tail = decode((await js.get_msg(EVT_STREAM, await last_seq(js, EVT_STREAM))).data)
        assert tail.type == "order_accepted" and tail.client_order_id == "after-status", tail

        for name in ("active", "standby"):  # no engine left: the health check fails and says which log
            stops[name].set()
            await asyncio.wait_for(tasks.pop(name), 30)

        async def none_answer() -> bool:
            return not await asked(ENGINE_STATUS_SUBJECT, 1)

        await wait_until(none_answer, 30, "the engines to stop answering")
        code, out, _ = await jetbook_status(url)
        assert code == 1 and "engines (0)" in out and "problem: JB_EVT: no active engine" in out
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 30)


async def test_status_before_there_is_a_venue_refuses_a_wait_out_of_range_and_an_unreachable_server(
    nats_server: Any,
) -> None:
    code, out, _ = await jetbook_status(nats_server.url)
    assert code == 1 and "venue: none" in out and "problem: no venue" in out
    code, _, err = await jetbook_status("nats://127.0.0.1:1", "--wait", "0")
    assert code == 2 and "--wait must be" in err
    code, _, err = await jetbook_status("nats://127.0.0.1:1")
    assert code == 2 and "cannot reach NATS" in err
