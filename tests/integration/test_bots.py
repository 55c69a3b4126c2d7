"""The bots (tui/bots.py) and `jetbook bots` against a real stack: nats-server, engine, projection, query service and
the gateway on uvicorn, all in-process (gateway_harness). The bots speak only WebSocket and HTTP to the gateway.

`python -m tests.integration.test_bots [seconds]` measures the bots' sustained rate through the gateway, with and
without `no_ack`, from the gateway's /metrics; it is not a test.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from replay.verify import verify
from tests.conftest import wait_until
from tests.integration.gateway_harness import Stack, gateway_stack
from tui.bots import Fleet

PAIR = "BOTS-PAIR"
ODDS = "BOTS-ODDS"
TENNIS = "BOTS-TENNIS"  # two_runner: implied matching
WARM_UP_S = 3.0  # the figures: the bots trade this long before the measuring window opens


@pytest.fixture
async def stack(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(nats_server, nc, js, tmp_path) as s:
        yield s


async def command(c: httpx.AsyncClient, market: str, cmd: dict[str, Any]) -> list[dict[str, Any]]:
    r = await c.post("/commands", json={"market_id": market, "command": cmd})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def create_markets(url: str) -> None:
    """A pair market on a tick of 5, an odds market with three runners (the soccer preset) and a two_runner one
    (the tennis preset), via the gateway."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        pair = {"type": "create_market", "market_id": PAIR, "base": "B", "quote": "Q", "tick_size": 5, "lot_size": 2}
        odds = {"type": "create_market", "market_id": ODDS, "kind": "odds", "quote": "GBP", "runners": [
            {"runner_id": "HOME", "label": "Home"}, {"runner_id": "DRAW", "label": "Draw"},
            {"runner_id": "AWAY", "label": "Away"},
        ]}  # fmt: skip
        tennis = {"type": "create_market", "market_id": TENNIS, "kind": "odds", "quote": "GBP",
                  "book_type": "two_runner", "runners": [{"runner_id": "P1", "label": "Player 1"},
                                                         {"runner_id": "P2", "label": "Player 2"}]}  # fmt: skip
        for market, cmd in ((PAIR, pair), (ODDS, odds), (TENNIS, tennis)):
            assert [e["type"] for e in await command(c, market, cmd)] == ["market_created"]


async def market_fills(c: httpx.AsyncClient, market: str) -> list[dict[str, Any]]:
    r = await c.get("/fills", params={"market_id": market, "limit": 10000})
    assert r.status_code == 200, r.text
    fills: list[dict[str, Any]] = r.json()["result"]
    return fills


async def check_log_and_positions(stack: Stack, markets: list[str]) -> None:
    """Every market's positions sum to zero (every trade has two sides), and replaying JB_CMD gives JB_EVT."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:
        for market in markets:
            # strong: the read model has folded every command JB_CMD held at this point, the bots' last ones too
            r = await c.get("/risk", params={"market_id": market, "consistency": "strong"})
            assert r.status_code == 200, r.text
            positions = r.json()["result"]["positions"]
            assert positions, f"no positions in {market}"
            # whoever wins, the accounts' P&L sums to zero (an implied fill's two sides sit on different runners)
            pnl: dict[str, int] = {}
            for account in r.json()["result"]["accounts"]:
                for w in account["if_wins"]:
                    pnl[w["runner"]] = pnl.get(w["runner"], 0) + w["pnl"]
            assert all(v == 0 for v in pnl.values()), (market, pnl)
            if market == TENNIS:
                continue
            for key in ("net_qty", "cash", "if_win", "if_lose"):
                by_runner: dict[str, int] = {}
                for p in positions:
                    by_runner[p["runner"]] = by_runner.get(p["runner"], 0) + p[key]
                assert all(v == 0 for v in by_runner.values()), (market, key, by_runner)
    result = await verify(stack.js)
    assert result.identical and result.pending == 0, result


async def test_fleet_trades_pair_and_odds_and_attributes_everything(stack: Stack) -> None:
    await create_markets(stack.url)
    fleet = Fleet(stack.url, mm=2, noise=2, informed=1, seed=7, step_s=0.05, poll_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop))
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:

        async def traded() -> bool:
            if task.done():
                task.result()
            counts = [len(await market_fills(c, m)) for m in (PAIR, ODDS, TENNIS)]
            kinds = {b.kind for b in fleet.bots if b.trades}
            implied = any(f["implied"] for f in await market_fills(c, TENNIS))
            return min(counts) >= 10 and {"mm", "noise"} <= kinds and fleet.totals[1] >= 40 and implied

        try:
            await wait_until(traded, timeout=25, what="trades in every market, implied ones in the tennis market")
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
        pnl_ready = [b for b in fleet.bots if b.pnl is not None]
        assert pnl_ready, "no /risk answer reached a bot"
        fills = {m: await market_fills(c, m) for m in (PAIR, ODDS, TENNIS)}

    assert set(fleet.feeds) == {PAIR, ODDS, TENNIS}
    assert all(b.sent > 0 for b in fleet.bots), fleet.bots
    assert fleet.unattributed == 0
    responses = sum(b.responses for b in fleet.bots)
    assert responses > 0
    # every fill in the log is between two bot accounts, and a bot's count is never above its fills in the log
    names = {b.account for b in fleet.bots}
    for market, rows in fills.items():
        assert all({f["maker_account"], f["taker_account"]} <= names for f in rows), market
    for bot in fleet.bots:
        in_log = sum(f["maker_account"] == bot.account or f["taker_account"] == bot.account
                     for rows in fills.values() for f in rows)  # fmt: skip
        assert 0 < bot.trades <= in_log or bot.kind == "informed", (bot, in_log)
    # odds prices all on the ladder and within the market's bounds; pair prices on the tick
    assert all(f["price"] % 5 == 0 and f["qty"] % 2 == 0 for f in fills[PAIR])
    assert all(101 <= f["price"] <= 100000 and f["runner"] in ("HOME", "DRAW", "AWAY") for f in fills[ODDS])
    assert all(101 <= f["price"] <= 100000 and f["runner"] in ("P1", "P2") for f in fills[TENNIS])
    assert any(f["implied"] and f["maker_runner"] != f["runner"] for f in fills[TENNIS])
    await check_log_and_positions(stack, [PAIR, ODDS, TENNIS])


async def test_fleet_with_no_ack_counts_trades_from_fills(stack: Stack) -> None:
    await create_markets(stack.url)
    fleet = Fleet(stack.url, mm=1, noise=2, informed=0, seed=3, market=PAIR, no_ack=True, step_s=0.05, poll_s=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop))

    async def traded() -> bool:
        if task.done():
            task.result()
        return fleet.totals[1] >= 10

    try:
        await wait_until(traded, timeout=20, what="trades counted from /fills")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert set(fleet.feeds) == {PAIR}  # market= restricts
    assert sum(b.responses for b in fleet.bots) == 0  # no_ack: nothing answers a command
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:
        r = await c.get("/markets", params={"consistency": "strong"})
        assert r.status_code == 200
        fills = await market_fills(c, PAIR)
    for bot in fleet.bots:  # counted once per fill: never more than the log holds for the account
        assert bot.trades <= sum(bot.account in (f["maker_account"], f["taker_account"]) for f in fills), bot
    await check_log_and_positions(stack, [PAIR])


async def test_jetbook_bots_cli(stack: Stack) -> None:
    await create_markets(stack.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetbook", "bots", "--url", stack.url, "--duration", "3", "--mm", "1", "--noise", "1",
        "--informed", "1", "--seed", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, (text, err.decode()[-2000:])
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert {"bot-mm-1", "bot-noise-1", "bot-inf-1", "total"} <= rows.keys(), text
    assert int(rows["total"][0]) > 0, text  # frames sent
    assert int(rows["total"][0]) == sum(int(rows[b][0]) for b in ("bot-mm-1", "bot-noise-1", "bot-inf-1"))
    assert re.search(rf"markets 3: {ODDS} {PAIR} {TENNIS}", text), text


HOSTILE_ARGS = [
    ["bots", "--url", "notaurl", "--duration", "1"], ["bots", "--mm", "-3"], ["bots", "--duration", "abc"],
    ["bots", "--market", "a.b\x7f", "--duration", "1"], ["bots", "--seed", "9" * 40, "--duration", "1"],
    ["bots", "--url", "http://127.0.0.1:1", "--duration", "1"],
    ["gateway", "--http-port", "abc"], ["gateway", "--http-port", "-1"], ["gateway", "--api-keys", "/nonexistent"],
    ["tui", "--depth", "0"], ["tui", "--bots", "-1"],
]  # fmt: skip


async def test_hostile_cli_arguments_are_refused_or_harmless_and_the_venue_still_decides(stack: Stack) -> None:
    """`jetbook bots`, `gateway` and `tui` with bad arguments: an exit with a message, never a traceback or a hang."""
    slots = asyncio.Semaphore(4)  # the runs are independent: four at a time, not one after another

    async def run(args: list[str]) -> tuple[list[str], int | None, bytes]:
        async with slots:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jetbook", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            return args, proc.returncode, out

    for args, code, out in await asyncio.gather(*(run(list(a)) for a in HOSTILE_ARGS)):
        assert b"Traceback" not in out, (args, out.decode()[-2000:])
        assert code in (0, 1, 2), (args, code)
    await create_markets(stack.url)
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as c:
        r = await c.post("/commands", json={"market_id": PAIR, "account_id": "zed", "command": {
            "type": "place_order", "client_order_id": "ok", "side": "buy", "price": 10, "qty": 2}})  # fmt: skip
    assert r.status_code == 200 and r.json()["events"][0]["type"] == "order_accepted", r.text


# --- the figures: python -m tests.integration.test_bots [seconds] -------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample over the series whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _measure(seconds: float) -> None:
    """`jetbook up` (its own processes) and `jetbook bots --high-throughput` as another, with and without --no-ack;
    rates from the deltas of the gateway's and the engine's /metrics over `seconds` of steady trading."""
    import subprocess
    import tempfile
    import time

    from tests.integration.gateway_harness import free_port

    with tempfile.TemporaryDirectory() as tmp:
        http, base = free_port(), 20000 + free_port() % 20000
        url, engine = f"http://127.0.0.1:{http}", f"http://127.0.0.1:{base}/metrics"
        with open(f"{tmp}/up.log", "wb") as log:
            up = subprocess.Popen([sys.executable, "-m", "jetbook", "up", "--data-dir", f"{tmp}/data", "--port", "0",
                                   "--http-port", str(http), "--metrics-port-base", str(base)],
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:

            async def ready() -> bool:
                if up.poll() is not None:
                    raise SystemExit(f"jetbook up exited; see {tmp}/up.log")
                try:
                    async with httpx.AsyncClient() as http:
                        return (await http.get(f"{url}/ready", timeout=1)).status_code == 200
                except httpx.HTTPError:
                    return False

            asyncio.run(wait_until(ready, timeout=60, what="jetbook up to be ready"))
            asyncio.run(create_markets(url))
            print(f"{'mode':<8} {'bot frames/s':>12} {'engine cmds/s':>13} {'events/s':>9} {'fills/s':>8} "
                  f"{'gw frames/s':>11} {'backlog':>8}")  # fmt: skip
            for no_ack in (False, True):
                cmd = [sys.executable, "-m", "jetbook.bots_cli", "--url", url, "--duration", str(seconds + 6),
                       "--high-throughput", "--mm", "2", "--noise", "3", "--informed", "1", "--seed", "1"]  # fmt: skip
                bots = subprocess.Popen([*cmd, *(["--no-ack"] if no_ack else [])], stdout=subprocess.PIPE, text=True)
                # The sleep is the event itself: the warm-up before the window, not a wait for an outcome.
                time.sleep(WARM_UP_S)
                t0, e0, g0 = time.monotonic(), httpx.get(engine).text, httpx.get(f"{url}/metrics").text
                # The sleep is the event itself: the window the rates are taken over.
                time.sleep(seconds)
                t1, e1, g1 = time.monotonic(), httpx.get(engine).text, httpx.get(f"{url}/metrics").text
                out, _ = bots.communicate(timeout=60)
                total = next(line for line in out.splitlines() if line.startswith("total")).split()
                dt = t1 - t0
                cmds = _metric(e1, "jetbook_engine_commands_total") - _metric(e0, "jetbook_engine_commands_total")
                evts = _metric(e1, "jetbook_engine_events_total") - _metric(e0, "jetbook_engine_events_total")
                fills = (_metric(e1, "jetbook_engine_events_total", kind="fill")
                         - _metric(e0, "jetbook_engine_events_total", kind="fill"))  # fmt: skip
                frames = (_metric(g1, "jetbook_gateway_ws_frames_total", endpoint="/ws_ctl")
                          - _metric(g0, "jetbook_gateway_ws_frames_total", endpoint="/ws_ctl"))  # fmt: skip
                backlog = _metric(e1, "jetbook_engine_cmd_backlog")
                sent = int(total[1]) / (seconds + 6)
                print(f"{'no_ack' if no_ack else 'ack':<8} {sent:>12.0f} {cmds / dt:>13.0f} {evts / dt:>9.0f} "
                      f"{fills / dt:>8.0f} {frames / dt:>11.0f} {backlog:>8.0f}")  # fmt: skip
                print("   bots:", out.strip().splitlines()[-2])
        finally:
            up.terminate()
            up.wait(30)


if __name__ == "__main__":
    _measure(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
