"""The trading screen driven by keys and clicks (Textual's Pilot) against a real stack.

Engine, projection, query service and gateway (uvicorn) run in this process on a real nats-server, as in
tests/integration/gateway_harness.py; the gateway here can be stopped and started again on the same port, to see
the screen lose its connection and come back on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import uvicorn
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import Static

from gateway.app import create_app
from gateway.auth import Auth
from gateway.ws import WS_MAX_SIZE
from tests.conftest import wait_until
from tests.integration.gateway_harness import free_port, running_query_service
from tests.integration.harness import running_engine, running_projection
from tui.app import Options, TradingApp

SIZE = (150, 44)
NO_METRICS = ["http://127.0.0.1:1/metrics"]  # nothing listens there: shown as unavailable, never fatal


class RestartableGateway:
    """The gateway on uvicorn at a fixed port, which a test may stop and start again."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.port = free_port()
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = create_app(lambda: nats.connect(self.nats_url), Auth(None))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                access_log=False, ws_max_size=WS_MAX_SIZE)  # fmt: skip
        server = self.server = uvicorn.Server(config)
        task = self.task = asyncio.create_task(server.serve())

        async def started() -> bool:
            if task.done():
                task.result()
            return bool(server.started)

        await wait_until(started, what="uvicorn to start")

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.wait_for(self.task, 15)
        self.server = self.task = None


@contextlib.asynccontextmanager
async def stack(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> AsyncIterator[RestartableGateway]:
    db = tmp_path / "rm.db"
    gw = RestartableGateway(nats_server.url)
    async with running_engine(nc), running_projection(js, db), running_query_service(nats_server.url, db):
        await gw.start()
        try:
            yield gw
        finally:
            await gw.stop()


def screen_app(gw: RestartableGateway, **over: Any) -> TradingApp:
    opts = Options(url=f"ws://127.0.0.1:{gw.port}/ws_ctl?depth=10", metrics=NO_METRICS, **over)
    return TradingApp(opts)


def text(app: TradingApp, wid: str) -> str:
    """What a pane shows, as plain text."""
    console = Console(width=200, file=io.StringIO(), record=True, color_system=None)
    console.print(app.query_one(f"#{wid}", Static).content)
    return console.export_text()


async def until(pilot: Pilot[Any], cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Let the app process its messages, then check `cond`; fail at the deadline."""

    async def check() -> bool:
        await pilot.pause()
        return cond()

    await wait_until(check, timeout, what)


async def soccer(pilot: Pilot[Any], app: TradingApp, via_button: bool = True) -> str:
    """Create the soccer preset (the control pane's button, or `n`) and wait until it is selected and shown."""
    await until(pilot, lambda: app.conn.state == "connected", "the screen to connect")
    if via_button:
        await pilot.click("#create-soccer")
    else:
        await pilot.press("n")
    await until(pilot, lambda: app.model.market_id is not None and app.model.snapshot is not None, "a snapshot")
    mid = app.model.market_id
    assert mid is not None and mid.startswith("SOCCER-")
    return mid


async def test_soccer_preset_trade_cancel_and_lifecycle(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    async with stack(nats_server, nc, js, tmp_path) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        app = screen_app(gw)
        async with app.run_test(size=SIZE) as pilot:
            mid = await soccer(pilot, app)
            model = app.model
            assert mid == "SOCCER-1"
            assert [r for r, _ in model.runners()] == ["HOME", "DRAW", "AWAY"] and model.runner == "HOME"
            await until(pilot, lambda: "SOCCER-1" in text(app, "markets") and "Draw" in text(app, "markets"),
                        "the markets pane to show the market and its runners")  # fmt: skip

            # alice's lay rests (on the bid side); the user's back at the cursor crosses it
            r = await http.post("/orders", json={"market_id": mid, "account_id": "alice", "client_order_id": "a1",
                                                 "side": "lay", "price": 250, "qty": 10, "runner": "HOME"})  # fmt: skip
            assert r.status_code == 200, r.text
            await until(pilot, lambda: [lv["price"] for lv in (model.ladder() or {}).get("bids", [])] == [250],
                        "alice's lay on the ladder")  # fmt: skip
            await pilot.press("c")  # the cursor to the best price `b` takes
            assert model.cursor == 250
            await pilot.press("minus")
            assert model.size == 5
            await pilot.press("b")
            await until(pilot, lambda: any(t["price"] == 250 and t["qty"] == 5 for t in model.trades),
                        "the trade on the tape")  # fmt: skip
            await until(pilot, lambda: "2.50" in text(app, "tape") and "back" in text(app, "tape"), "the tape pane")
            assert model.trades[0]["taker_side"] == "back"

            # a back at 2.60 rests; `x` cancels it
            for _ in range(5):
                await pilot.press("up")
            assert model.cursor == 260
            await pilot.press("b")
            await until(pilot, lambda: [(o["price"], o["open_qty"]) for o in model.orders] == [(260, 5)],
                        "the resting order in my orders")  # fmt: skip
            await until(pilot, lambda: "2.60" in text(app, "orders"), "the orders pane")
            await pilot.press("x")
            await until(pilot, lambda: model.orders == [] and any("cancelled (user)" in line for line in model.log),
                        "the cancel")  # fmt: skip

            # two more, then `X` cancels all of them; as another account (switched with `a`)
            await pilot.press("a")
            await until(pilot, lambda: type(app.screen).__name__ == "AccountScreen", "the account prompt")
            inp = app.screen.query_one("#account-input")
            inp.value = "bob"  # type: ignore[attr-defined]
            await pilot.press("enter")
            await until(pilot, lambda: model.account == "bob", "the account switch")
            await pilot.press("b", "up", "b")
            await until(pilot, lambda: len(model.orders) == 2 and all(o["account_id"] == "bob" for o in model.orders),
                        "bob's two orders")  # fmt: skip
            await pilot.press("X")
            await until(pilot, lambda: model.orders == [], "cancel all")
            assert any("2 orders cancelled (cancel_all)" in line for line in model.log)

            # the lifecycle from the control pane: suspend, resume, await live, go live, close, settle (HOME)
            def state() -> tuple[str, str]:
                m = model.market or {}
                return m.get("state", ""), m.get("phase", "")

            for button, want in (
                ("#suspend", ("suspended", "pre")), ("#resume", ("open", "pre")),
                ("#await_live", ("suspended", "pre")), ("#go_live", ("open", "in_play")),
                ("#close", ("closed", "in_play")), ("#settle", ("settled", "in_play")),
            ):  # fmt: skip
                await pilot.click(button)
                await until(pilot, lambda w=want: state() == w, f"{button} -> {want}")  # type: ignore[misc]
            assert any("settled (winner HOME" in line for line in model.log)
            await until(pilot, lambda: "settled" in text(app, "markets"), "the markets pane shows settled")

            # a pair market with `N`, and `m` switches between the two; `V` voids it
            await pilot.press("N")
            await until(pilot, lambda: model.market_id == "PAIR-1" and model.snapshot is not None, "the pair market")
            assert model.sides() == ("buy", "sell")
            await pilot.press("m")
            await until(pilot, lambda: model.market_id == "SOCCER-1", "back to the soccer market")
            await pilot.press("m")
            await until(pilot, lambda: model.market_id == "PAIR-1" and model.snapshot is not None, "the pair again")
            await pilot.press("V")
            await until(pilot, lambda: state() == ("voided", "pre"), "the pair voided")

            # `?` lists every key
            await pilot.press("question_mark")
            await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", "the help screen")
            await pilot.press("escape")
            await until(pilot, lambda: type(app.screen).__name__ != "HelpScreen", "the help screen closed")
            # metrics: the gateway's own /metrics answers, the URL given for the rest does not (and is shown so)
            await until(pilot, lambda: "unavailable" in text(app, "engine"), "the unavailable source")
            assert app.metrics.sources[0].up is True


async def test_tennis_preset_shows_implied_liquidity(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    """`t` makes a two_runner market; a back on Player 2 shows on Player 1's ladder as implied (~n), and the
    implied trade on the tape names the maker's runner."""
    async with stack(nats_server, nc, js, tmp_path) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        app = screen_app(gw)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.conn.state == "connected", "the screen to connect")
            await pilot.press("t")
            model = app.model
            await until(
                pilot, lambda: model.market_id == "TENNIS-1" and model.snapshot is not None, "the tennis market"
            )
            assert model.runners() == [("P1", "Player 1"), ("P2", "Player 2")] and model.runner == "P1"
            assert (model.market or {}).get("book_type") == "two_runner"
            r = await http.post("/orders", json={"market_id": "TENNIS-1", "account_id": "alice", "client_order_id": "a",
                                                 "side": "back", "price": 250, "qty": 10, "runner": "P2"})  # fmt: skip
            assert r.status_code == 200, r.text
            await until(pilot, lambda: (model.ladder() or {}).get("bids") == [
                {"price": 167, "qty": 0, "orders": 0, "implied_qty": 15}], "the implied lay on Player 1")  # fmt: skip
            await until(
                pilot, lambda: "~15" in text(app, "ladder") and "1.67" in text(app, "ladder"), "the ladder pane"
            )
            assert "implied" in text(app, "ladder")  # the title says what ~ means
            await pilot.press("c", "down")  # the cursor to 1.66, under the shown 1.67: the exact 1.6667 crosses
            assert model.cursor == 166
            await pilot.press("b")
            await until(pilot, lambda: any(t.get("implied") for t in model.trades), "the implied trade")
            await until(pilot, lambda: "~P2" in text(app, "tape"), "the tape pane marks it")


async def test_bots_trade_and_pause(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    async with stack(nats_server, nc, js, tmp_path) as gw:
        app = screen_app(gw, mm=1, noise=2, informed=1, seed=7)
        async with app.run_test(size=SIZE) as pilot:
            await soccer(pilot, app, via_button=False)
            fleet = app.fleet
            assert fleet is not None and not any(b.running for b in fleet.bots)  # paused until `B`
            await pilot.press("B")
            assert all(b.running for b in fleet.bots)
            await until(pilot, lambda: sum(b.trades for b in fleet.bots) >= 3 and app.model.trades,
                        "the bots to trade", timeout=40)  # fmt: skip
            bots_text = text(app, "bots")
            assert "bot-mm-1" in bots_text and "bot-noise-2" in bots_text and "bot-inf-1" in bots_text
            sent = sum(b.sent for b in fleet.bots)
            await until(pilot, lambda: sum(b.sent for b in fleet.bots) > sent, "the counters to move")
            # one kind, then all: paused bots stop and their queue is drained, the user's queue is untouched
            await pilot.press("2")
            assert [b.running for b in fleet.bots if b.kind == "noise"] == [False, False]
            assert all(b.running for b in fleet.bots if b.kind != "noise")
            await pilot.press("B")
            assert not any(b.running for b in fleet.bots)
            assert all(feed.conn.bot_queued == 0 for feed in fleet.feeds.values())
            await pilot.press("c", "b")  # the user still trades
            await until(pilot, lambda: any("accepted" in line for line in app.model.log), "the user's order")


async def test_reconnects_after_gateway_restart(nats_server: Any, nc: Any, js: Any, tmp_path: Path) -> None:
    async with stack(nats_server, nc, js, tmp_path) as gw:
        app = screen_app(gw)
        async with app.run_test(size=SIZE) as pilot:
            mid = await soccer(pilot, app)
            await gw.stop()
            await until(pilot, lambda: app.conn.state != "connected", "the screen to notice")
            await until(pilot, lambda: "DOWN: reconnecting" in text(app, "status"), "the status line to say so")
            await gw.start()
            await until(pilot, lambda: app.conn.state == "connected" and app.conn.reconnects >= 1, "the reconnect",
                        timeout=30)  # fmt: skip
            await until(pilot, lambda: "connected" in text(app, "status") and "DOWN" not in text(app, "status"),
                        "the status line back to connected")  # fmt: skip
            # it works again: the subscription was renewed and a key-placed order shows up
            app.model.snapshot = None
            await pilot.press("c", "b")
            await until(pilot, lambda: app.model.snapshot is not None and len(app.model.orders) == 1,
                        "a fresh snapshot and the new order after the reconnect")  # fmt: skip
            assert app.model.market_id == mid


# --- the pure parts: prices on the grid, the ladder's window ------------------------------------------------------


def test_cursor_steps_on_the_odds_ladder_and_the_tick() -> None:
    from tui.app import odds_step, step_price

    assert [odds_step(p, True) for p in (101, 199, 200, 298, 395, 990, 99000, 100000)] == [
        102, 200, 202, 300, 400, 1000, 100000, 100000,
    ]  # fmt: skip
    assert [odds_step(p, False) for p in (102, 200, 202, 300, 400, 1000, 101)] == [101, 199, 200, 298, 395, 980, 101]
    assert odds_step(251, True) == 252 and odds_step(251, False) == 250  # off the ladder: the nearest on it
    odds = {"kind": "odds", "min_price": 101, "max_price": 100000}
    assert step_price(odds, 250, 5) == 260 and step_price(odds, 102, -5) == 101
    pair = {"kind": "pair", "tick_size": 100, "min_price": 100, "max_price": 10000}
    assert step_price(pair, 1000, 3) == 1300 and step_price(pair, 200, -5) == 100 and step_price(pair, 9900, 9) == 10000


def test_ladder_shows_a_window_around_the_cursor() -> None:
    from tui.app import Model, render_ladder

    model = Model()
    m = {"market_id": "P", "kind": "pair", "tick_size": 1, "min_price": 1, "max_price": 10**9, "runners": []}
    model.markets = {"P": m}
    model.select_market("P")
    asks = [{"price": 1000 + i, "qty": 1, "orders": 1} for i in range(30)]
    bids = [{"price": 900 - i, "qty": 1, "orders": 1} for i in range(30)]
    book = {"runner": "", "bid_side": "buy", "ask_side": "sell", "bids": bids, "asks": asks}
    model.apply({"type": "snapshot", "market_id": "P", "market": m, "ladders": [book]})
    assert model.cursor == 1000  # centred on the best ask: what `b` would take
    model.cursor = 880
    console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
    console.print(render_ladder(model, rows=9))
    lines = [line for line in console.export_text().splitlines() if any(c.isdigit() for c in line)]
    assert len(lines) == 9 and "▶ 880" in lines[4]
