"""The main screen from fixed frames, no network, frozen clocks: an SVG snapshot (pytest-textual-snapshot).

Everything volatile is pinned: the app does not connect (`connect=False`), its frames are fed through `on_frame` as
the connection would deliver them, the metrics are fed fixed /metrics texts at fixed times, and the bots are a
seeded fleet whose counters are set by hand (they never run). Regenerate with
`pytest tests/tui/test_tui_snapshot.py --snapshot-update` after a deliberate change of the screen.
"""

from __future__ import annotations

from typing import Any

from tui.app import Options, TradingApp

SIZE = (150, 44)
NS = 1_796_083_588_000_000_000  # a fixed wall time, in ns

RUNNERS = [{"runner_id": "HOME", "label": "Home"}, {"runner_id": "DRAW", "label": "Draw"},
           {"runner_id": "AWAY", "label": "Away"}]  # fmt: skip


def market(mid: str, kind: str = "odds", **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "market_id": mid, "kind": kind, "base": "" if kind == "odds" else "BTC", "quote": "GBP" if kind == "odds"
        else "USD", "state": "open", "phase": "pre", "tick_size": 1, "lot_size": 1, "min_qty": 1,
        "max_qty": 1_000_000_000, "min_price": 101 if kind == "odds" else 1,
        "max_price": 100_000 if kind == "odds" else 1_000_000_000, "band_bps": 0, "last_trade_id": 0,
        "last_price": None, "volume": 0, "created_seq": 1, "state_seq": None, "settled_winner": None,
        "settled_price": None, "runners": RUNNERS if kind == "odds" else [],
    }  # fmt: skip
    m.update(over)
    return m


def ladder(runner: str, label: str, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> dict[str, Any]:
    return {"runner": runner, "label": label, "bid_side": "lay", "ask_side": "back",
            "bids": [{"price": p, "qty": q, "orders": 1 + q // 40} for p, q in bids],
            "asks": [{"price": p, "qty": q, "orders": 1 + q // 40} for p, q in asks]}  # fmt: skip


SOCCER = market("SOCCER-1", last_trade_id=3, last_price=250, volume=75)
FRAMES: list[dict[str, Any]] = [
    {"type": "market_list", "correlation_id": "ui:1", "at_seq": 40,
     "markets": [SOCCER, market("PAIR-1", "pair", state="suspended", last_price=1002, volume=12, last_trade_id=2)]},
    {"type": "subscribed", "correlation_id": None, "market_id": "SOCCER-1", "depth": 10, "runner": None},
    {"type": "snapshot", "market_id": "SOCCER-1", "at_seq": 41, "depth": 10, "runner": None, "market": SOCCER,
     "ladders": [
         ladder("HOME", "Home", [(248, 120), (246, 80), (244, 200)], [(252, 90), (254, 150), (256, 40)]),
         ladder("DRAW", "Draw", [(330, 60), (325, 45)], [(340, 75), (345, 30)]),
         ladder("AWAY", "Away", [(290, 100)], [(300, 20), (310, 80)]),
     ]},
    *[{"type": "trade", "market_id": "SOCCER-1", "seq": 30 + i, "cmd_seq": 20 + i, "trade_id": i + 1,
       "runner": "HOME", "price": p, "qty": q, "taker_side": side, "ts": NS + i * 1_250_000_000}
      for i, (p, q, side) in enumerate([(252, 20, "back"), (250, 25, "lay"), (250, 30, "back")])],
    {"type": "orders", "correlation_id": "ui:2", "at_seq": 41, "market_id": "SOCCER-1", "account_id": "me",
     "orders": [
         {"market_id": "SOCCER-1", "order_id": 7, "account_id": "me", "client_order_id": "ui-a-1", "runner": "HOME",
          "side": "lay", "order_type": "limit", "price": 246, "qty": 40, "filled_qty": 0, "cancelled_qty": 0,
          "open_qty": 40, "status": "open"},
         {"market_id": "SOCCER-1", "order_id": 9, "account_id": "me", "client_order_id": "ui-a-2", "runner": "HOME",
          "side": "back", "order_type": "limit", "price": 254, "qty": 50, "filled_qty": 10, "cancelled_qty": 0,
          "open_qty": 40, "status": "partially_filled"},
     ]},
    {"type": "status", "evt_seq": 41, "markets": 2, "projection_seq": 41, "lease": None, "clients": 3},
    {"type": "order_response", "correlation_id": "ui:3", "cmd_seq": 25, "rejected": None, "events": [
        {"type": "order_accepted", "market_id": "SOCCER-1", "order_id": 9, "side": "back", "qty": 50, "price": 254},
        {"type": "fill", "market_id": "SOCCER-1", "qty": 10}]},
]  # fmt: skip


def metrics_text(scale: int) -> dict[str, str | None]:
    """Two scrapes' worth of /metrics: counters and histogram buckets grow with `scale`."""
    engine = f"""# TYPE jetbook_engine_events counter
jetbook_engine_events_total{{kind="fill"}} {40 * scale}
jetbook_engine_events_total{{kind="order_accepted"}} {100 * scale}
# TYPE jetbook_engine_commands counter
jetbook_engine_commands_total{{type="place_order"}} {120 * scale}
# TYPE jetbook_engine_decide_seconds histogram
jetbook_engine_decide_seconds_bucket{{le="0.0001"}} {10 * scale}
jetbook_engine_decide_seconds_bucket{{le="0.0002"}} {50 * scale}
jetbook_engine_decide_seconds_bucket{{le="0.0005"}} {95 * scale}
jetbook_engine_decide_seconds_bucket{{le="0.001"}} {100 * scale}
jetbook_engine_decide_seconds_bucket{{le="+Inf"}} {100 * scale}
jetbook_engine_decide_seconds_count {100 * scale}
jetbook_engine_decide_seconds_sum {0.02 * scale}
# TYPE jetbook_engine_commit_seconds histogram
jetbook_engine_commit_seconds_bucket{{le="0.001"}} {20 * scale}
jetbook_engine_commit_seconds_bucket{{le="0.002"}} {80 * scale}
jetbook_engine_commit_seconds_bucket{{le="0.005"}} {100 * scale}
jetbook_engine_commit_seconds_bucket{{le="+Inf"}} {100 * scale}
jetbook_engine_commit_seconds_count {100 * scale}
jetbook_engine_commit_seconds_sum {0.15 * scale}
"""
    gateway = f"""# TYPE jetbook_gateway_command_round_trip_seconds histogram
jetbook_gateway_command_round_trip_seconds_bucket{{le="0.002",via="ws"}} {5 * scale}
jetbook_gateway_command_round_trip_seconds_bucket{{le="0.005",via="ws"}} {60 * scale}
jetbook_gateway_command_round_trip_seconds_bucket{{le="0.01",via="ws"}} {99 * scale}
jetbook_gateway_command_round_trip_seconds_bucket{{le="0.02",via="ws"}} {100 * scale}
jetbook_gateway_command_round_trip_seconds_bucket{{le="+Inf",via="ws"}} {100 * scale}
jetbook_gateway_command_round_trip_seconds_count{{via="ws"}} {100 * scale}
jetbook_gateway_command_round_trip_seconds_sum{{via="ws"}} {0.5 * scale}
"""
    return {"gateway": gateway, "engine": engine, "projection": None, "query": None}


class FixedBot:
    def __init__(self, name: str, kind: str, running: bool, sent: int, trades: int, rejects: int, pnl: int | None):
        self.name, self.kind, self.account, self.running = name, kind, name, running
        self.sent, self.trades, self.rejects, self.pnl = sent, trades, rejects, pnl


class FixedFleet:
    """A fleet that never runs: the bots pane's rows, fixed."""

    def __init__(self) -> None:
        self.bots = [
            FixedBot("bot-mm-1", "mm", True, 412, 37, 0, 1250),
            FixedBot("bot-mm-2", "mm", True, 398, 41, 1, -300),
            FixedBot("bot-noise-1", "noise", True, 55, 12, 0, -420),
            FixedBot("bot-inf-1", "informed", False, 9, 6, 0, None),
        ]

    def start(self, kind: str | None = None) -> None: ...

    def pause(self, kind: str | None = None) -> int:
        return 0


def demo_app() -> TradingApp:
    """The screen with the fixed frames, metrics and bots above; nothing connects, no clock moves."""
    app = TradingApp(Options(connect=False, account="me", metrics=[]), fleet=FixedFleet(), clock=lambda: 100.0,
                     wall=lambda: 1_796_083_588.0)  # fmt: skip
    app.model.select_market("SOCCER-1")
    for frame in FRAMES:
        app.on_frame(frame)
    app.metrics.feed(90.0, metrics_text(1))
    app.metrics.feed(100.0, metrics_text(3))
    return app


def test_main_screen(snap_compare: Any) -> None:
    assert snap_compare(demo_app(), terminal_size=SIZE)
