"""Every role's /metrics on a real nats-server, scraped over HTTP; the micro services; the dashboard's metric names.

The roles run in-process, each as `jetbook` runs it (jetbook/roles.py, jetbook/query_cli.py), with a metrics
port; `jetbook up` runs them as processes on the ports it prints (the last test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import STATUS_SUBJECT
from events.model import decode
from events.stream_readers import last_seq
from jetbook.demo import run_demo
from jetbook.query_cli import query_role
from jetbook.roles import engine_role, fanout_role, project_role
from projections.metrics import PROJECTION_STATUS_SUBJECT
from protocol.barrier import barrier
from protocol.subjects import EVT_STREAM, FANOUT_STATUS_SUBJECT
from tests.conftest import wait_until
from tests.integration.harness import wait_for_command

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "jetbook.json"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def families(text: str) -> set[str]:
    """Every metric family a scrape declares (HELP/TYPE), samples or none, without its type's suffix."""
    return {base(f.name) for f in text_string_to_metric_families(text)}


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), -1.0)


async def scrape(port: int) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    return response.text


def dashboard_metric_names() -> set[str]:
    """Every jetbook_* metric the dashboard's PromQL expressions use, as family names."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {base(n) for e in exprs for n in re.findall(r"\bjetbook_[a-z0-9_]+", e)}


@contextlib.asynccontextmanager
async def stack(url: str, db: Path) -> AsyncIterator[dict[str, int]]:
    """Engine, projection, fan-out and query service as `jetbook` runs them, each with its own metrics port."""
    ports = {name: free_port() for name in ("engine", "project", "fanout", "query")}
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(engine_role(url, stop, metrics_port=ports["engine"])),
        asyncio.create_task(project_role(url, db, stop, metrics_port=ports["project"])),
        asyncio.create_task(fanout_role(url, stop, metrics_port=ports["fanout"])),
        asyncio.create_task(query_role(url, db, stop, metrics_port=ports["query"])),
    ]
    try:
        yield ports
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_every_role_counts_what_it_does_and_serves_it(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    from tests.integration.gateway_harness import running_gateway

    db = tmp_path / "rm.db"
    async with stack(nats_server.url, db) as ports:
        result = await asyncio.wait_for(run_demo(js, say=lambda _: None), 60)
        assert len(result.fills) == 1
        place = {"type": "place_order", "client_order_id": "x1", "side": "buy", "price": 100, "qty": 1}
        await js.publish("jb.cmd.NO-SUCH-MARKET.alice", msgpack.packb(place))  # rejected: unknown_market
        ack = await js.publish("jb.cmd.M.alice", b"\xc1 not msgpack")  # rejected, and counted as an invalid command
        await wait_for_command(js, ack.seq)
        evt_last = 0

        async def projected() -> bool:
            nonlocal evt_last
            evt_last = await last_seq(js, EVT_STREAM)
            s = samples(await scrape(ports["project"]))
            return evt_last > 0 and value(s, "jetbook_projection_position") == evt_last

        await wait_until(projected, what="the projection to fold every event")
        assert msgpack.unpackb((await nc.request("jb.qry.markets", b"", timeout=5)).data)["at_seq"] == evt_last
        unknown = msgpack.unpackb((await nc.request("jb.qry.no_such_query", b"", timeout=5)).data)
        assert unknown["error"] == "unknown_query"

        async def engine_settled() -> bool:
            s = samples(await scrape(ports["engine"]))
            return value(s, "jetbook_engine_cmd_backlog") == 0 and value(s, "jetbook_engine_last_evt_seq") == evt_last

        await wait_until(engine_settled, what="the engine's backlog gauge to read 0")
        engine = samples(await scrape(ports["engine"]))
        assert value(engine, "jetbook_engine_commands_total", type="place_order") >= 2
        assert value(engine, "jetbook_engine_commands_total", type="create_market") >= 1
        assert value(engine, "jetbook_engine_commands_total", type="invalid") == 1
        assert value(engine, "jetbook_engine_rejects_total", reason="unknown_market") == 1
        assert value(engine, "jetbook_engine_events_total", kind="fill") == 1
        assert value(engine, "jetbook_engine_events_total", kind="rejected") == 2
        events = sum(v for (n, _), v in engine.items() if n == "jetbook_engine_events_total")
        assert events == evt_last  # every event in JB_EVT, counted once
        assert value(engine, "jetbook_engine_lease_holder") == 1
        assert value(engine, "jetbook_engine_batches_in_flight") == 0
        assert value(engine, "jetbook_engine_decide_seconds_count") >= 1
        assert value(engine, "jetbook_engine_commit_seconds_count") >= 1

        projection = samples(await scrape(ports["project"]))
        assert value(projection, "jetbook_projection_events_folded_total") == evt_last
        assert value(projection, "jetbook_projection_lag_events") == 0
        assert value(projection, "jetbook_projection_lag_seconds") == 0
        assert value(projection, "jetbook_projection_fold_seconds_count") >= 1
        assert value(projection, "jetbook_projection_last_event_timestamp_seconds") > 1.7e9
        assert value(projection, "jetbook_projection_stream_position", stream=EVT_STREAM) == evt_last
        assert value(projection, "jetbook_projection_stream_lag_events", stream=EVT_STREAM) == 0

        async def fanned_out() -> bool:
            s = samples(await scrape(ports["fanout"]))
            return value(s, "jetbook_fanout_position") == evt_last

        await wait_until(fanned_out, what="the fan-out to reach the end of JB_EVT")
        fanout = samples(await scrape(ports["fanout"]))
        assert value(fanout, "jetbook_fanout_events_republished_total") > 0

        query = samples(await scrape(ports["query"]))
        assert value(query, "jetbook_query_answers_total", query="markets", error="none") == 1
        assert value(query, "jetbook_query_answers_total", query="unknown", error="unknown_query") == 1
        assert value(query, "jetbook_query_duration_seconds_count", query="markets") == 1

        # The dashboard's every metric exists in a live /metrics: these roles', and a live gateway's.
        live: set[str] = set()
        for port in ports.values():
            live |= families(await scrape(port))
        async with running_gateway(nats_server.url) as gateway:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{gateway}/metrics", timeout=5)
            assert response.status_code == 200
            live |= families(response.text)
        missing = dashboard_metric_names() - live
        assert not missing, f"the dashboard uses metrics no role serves: {sorted(missing)}"

        # Where a command's time goes (engine/metrics.py STAGES): every stage observed, and one more order moves each.
        stages = ("wait", "decide", "send", "commit")
        engine = samples(await scrape(ports["engine"]))
        before = {st: value(engine, "jetbook_engine_stage_seconds_count", stage=st) for st in stages}
        assert all(n >= 1 for n in before.values()), before
        place["client_order_id"] = "x2"
        ack = await js.publish(f"jb.cmd.{result.market_id}.alice", msgpack.packb(place))
        await wait_for_command(js, ack.seq)

        async def stages_moved() -> bool:
            s = samples(await scrape(ports["engine"]))
            return all(value(s, "jetbook_engine_stage_seconds_count", stage=st) > before[st] for st in stages)

        await wait_until(stages_moved, what="every engine stage histogram to count the order")


async def test_engine_projection_and_fanout_answer_micro_discovery_and_status(
    nats_server: Any, nc: Any, js: Any, tmp_path: Path
) -> None:
    async with stack(nats_server.url, tmp_path / "rm.db"):
        await asyncio.wait_for(run_demo(js, say=lambda _: None), 60)
        evt_last = await last_seq(js, EVT_STREAM)

        async def status(subject: str) -> dict[str, Any]:
            answer: dict[str, Any] = json.loads((await nc.request(subject, b"", timeout=5)).data)
            return answer

        async def caught_up() -> bool:
            engine, projection = await status(STATUS_SUBJECT), await status(PROJECTION_STATUS_SUBJECT)
            fanout = await status(FANOUT_STATUS_SUBJECT)
            return engine["last_evt_seq"] == projection["position"] == fanout.get("position") == evt_last

        await wait_until(caught_up, what="the three statuses to reach the end of JB_EVT")
        engine = await status(STATUS_SUBJECT)
        assert engine["role"] == "active" and engine["lease_held"] is True and engine["holder"] == engine["me"]
        assert (await status(PROJECTION_STATUS_SUBJECT))["lag_events"] == 0
        fanout = await status(FANOUT_STATUS_SUBJECT)
        assert fanout["lag_events"] == 0 and fanout["republished"] > 0 and fanout["streams"] == {EVT_STREAM: evt_last}
        services = (
            ("jetbook-engine", "last_cmd_seq"),
            ("jetbook-projection", "position"),
            ("jetbook-fanout", "position"),
        )
        for service, data_key in services:
            ping = json.loads((await nc.request(f"$SRV.PING.{service}", b"", timeout=5)).data)
            assert ping["name"] == service
            info = json.loads((await nc.request(f"$SRV.INFO.{service}", b"", timeout=5)).data)
            assert [e["name"] for e in info["endpoints"]] == ["status"]
            stats = json.loads((await nc.request(f"$SRV.STATS.{service}", b"", timeout=5)).data)
            assert data_key in stats["endpoints"][0]["data"], stats

        # Hostile: a request whose reply subject is the log, or a trader's private feed. The engine may publish on
        # the one and the fan-out on the other; neither may answer there.
        acct_last = await last_seq(js, "JB_ACCT")
        for subject in (STATUS_SUBJECT, "$SRV.PING.jetbook-engine", "$SRV.STATS.jetbook-engine",
                        PROJECTION_STATUS_SUBJECT, "$SRV.INFO.jetbook-projection", "jb.qry.markets",
                        "jb.qry.no_such_query", "$SRV.PING.jetbook-query", FANOUT_STATUS_SUBJECT,
                        "$SRV.PING.jetbook-fanout", "$SRV.STATS.jetbook-fanout"):  # fmt: skip
            for reply in ("jb.wal.M.fill", "jb.acct.alice.fill"):
                await nc.publish(subject, b"\xff" * 100, reply=reply)
        await barrier(nc)
        assert (await status(STATUS_SUBJECT))["role"] == "active"  # answered after both: they were handled
        assert (await status(FANOUT_STATUS_SUBJECT))["position"] == evt_last
        assert await last_seq(js, EVT_STREAM) == evt_last, "a micro answer was written into the log"
        assert await last_seq(js, "JB_ACCT") == acct_last, "a micro answer was written into a private feed"
        # Then a valid order is decided, and the fan-out files it in the trader's feed.
        order = {"type": "place_order", "client_order_id": "after-micro", "side": "buy", "price": 1, "qty": 1}
        ack = await js.publish("jb.cmd.ETH-USDC.carol", msgpack.packb(order))
        await wait_for_command(js, ack.seq)
        end = await last_seq(js, EVT_STREAM)
        assert decode((await js.get_msg(EVT_STREAM, end)).data).type == "order_accepted"

        async def filed() -> bool:
            return (await status(FANOUT_STATUS_SUBJECT))["position"] == end

        await wait_until(filed, what="the fan-out to file the order after the hostile requests")
        assert await last_seq(js, "JB_ACCT") > acct_last


def _free_run(n: int) -> int:
    """A base port with the n ports from it free now."""
    for _ in range(50):
        first = free_port()
        try:
            with contextlib.ExitStack() as held:
                for p in range(first, first + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
    raise AssertionError("no run of free ports")


async def test_jetbook_up_prints_every_metrics_address_and_serves_it(tmp_path: Path) -> None:
    """`jetbook up`, locked down: four workers' /metrics from the base port, and the gateway's on its HTTP port."""
    from tests.integration.test_cli import Lines

    base_port = _free_run(5)
    http_port = base_port + 4
    env = {**os.environ, "COLUMNS": "200", "JETBOOK_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jetbook", "up", "--port", "0", "--data-dir", str(tmp_path / "data"),
         "--http-port", str(http_port), "--metrics-port-base", str(base_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        lines = Lines(proc)
        assert int(lines.wait_for(r"metrics\s+http://127\.0\.0\.1:(\d+)/metrics \(gateway\)").group(1)) == http_port
        printed = {int(lines.wait_for(rf"metrics\s+http://127\.0\.0\.1:(\d+)/metrics \({role}\)").group(1))
                   for role in ("engine", "project", "fanout", "query")}  # fmt: skip
        assert printed == set(range(base_port, base_port + 4))
        prefixes = ["jetbook_engine_", "jetbook_projection_", "jetbook_fanout_", "jetbook_query_", "jetbook_gateway_"]
        for port, prefix in zip(range(base_port, base_port + 5), prefixes, strict=True):

            async def serves(port: int = port, prefix: str = prefix) -> bool:
                try:
                    return any(f.startswith(prefix) for f in families(await scrape(port)))
                except httpx.HTTPError:
                    return False

            await wait_until(serves, timeout=30, what=f"/metrics on {port}")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_prometheus_scrapes_the_ports_jetbook_up_uses() -> None:
    from jetbook.up import DEFAULT_METRICS_PORT_BASE, METRICS_OFFSETS

    text = PROMETHEUS.read_text()
    for offset in METRICS_OFFSETS.values():
        assert f"127.0.0.1:{DEFAULT_METRICS_PORT_BASE + offset}" in text
    assert "127.0.0.1:3000" in text  # the gateway's /metrics, on its HTTP port


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xc1", b"\x81\xa4type\xc0", b"\x85\xa4type\xbf", b"\x91\x01" * 9])
def test_a_command_type_is_read_from_any_bytes(data: bytes) -> None:
    from engine.metrics import command_type

    assert isinstance(command_type(data), bytes)
