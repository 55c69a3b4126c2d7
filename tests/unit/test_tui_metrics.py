"""tui/metrics.py on fixed /metrics texts: parsing, windowed rates, quantiles from histogram deltas, stickiness."""

from __future__ import annotations

import pytest

from tui.metrics import Metrics, Sticky, buckets, default_sources, delta, parse, quantile, seconds, total

TEXT = """# HELP jetbook_engine_events_total Events
# TYPE jetbook_engine_events_total counter
jetbook_engine_events_total{kind="fill"} 10.0
jetbook_engine_events_total{kind="order_accepted"} 30.0
# TYPE jetbook_gateway_command_round_trip_seconds histogram
jetbook_gateway_command_round_trip_seconds_bucket{le="0.001",via="ws"} 1.0
jetbook_gateway_command_round_trip_seconds_bucket{le="0.01",via="ws"} 3.0
jetbook_gateway_command_round_trip_seconds_bucket{le="+Inf",via="ws"} 4.0
jetbook_gateway_command_round_trip_seconds_count{via="ws"} 4.0
jetbook_gateway_command_round_trip_seconds_sum{via="ws"} 0.5
jetbook_gateway_command_round_trip_seconds_bucket{le="0.001",via="http"} 0.0
jetbook_gateway_command_round_trip_seconds_bucket{le="0.01",via="http"} 2.0
jetbook_gateway_command_round_trip_seconds_bucket{le="+Inf",via="http"} 2.0
"""


def engine(events: int, decide: tuple[int, int, int]) -> str:
    """An engine scrape: `events` in total, decide buckets (<=1ms, <=10ms, +Inf) cumulative."""
    return f"""# TYPE jetbook_engine_events counter
jetbook_engine_events_total{{kind="fill"}} {events}
# TYPE jetbook_engine_commands counter
jetbook_engine_commands_total{{type="place_order"}} {events // 2}
# TYPE jetbook_engine_decide_seconds histogram
jetbook_engine_decide_seconds_bucket{{le="0.001"}} {decide[0]}
jetbook_engine_decide_seconds_bucket{{le="0.01"}} {decide[1]}
jetbook_engine_decide_seconds_bucket{{le="+Inf"}} {decide[2]}
jetbook_engine_decide_seconds_count {decide[2]}
jetbook_engine_decide_seconds_sum 0.1
"""


def test_parse_totals_and_buckets() -> None:
    series = parse(TEXT)
    assert total(series, "jetbook_engine_events_total") == 40.0
    assert total(series, "jetbook_nothing_total") is None
    ws = buckets(series, "jetbook_gateway_command_round_trip_seconds", ("via", "ws"))
    assert ws == {0.001: 1.0, 0.01: 3.0, float("inf"): 4.0}
    both = buckets(series, "jetbook_gateway_command_round_trip_seconds")
    assert both == {0.001: 1.0, 0.01: 5.0, float("inf"): 6.0}


def test_quantile_interpolates_like_prometheus() -> None:
    b = {0.001: 10.0, 0.002: 20.0, 0.004: 40.0, float("inf"): 40.0}
    assert quantile(0.5, b) == pytest.approx(0.002)  # rank 20: the top of the second bucket
    assert quantile(0.75, b) == pytest.approx(0.003)  # rank 30: halfway through (2 ms, 4 ms]
    assert quantile(0.25, b) == pytest.approx(0.001)
    assert quantile(0.125, b) == pytest.approx(0.0005)
    assert quantile(0.99, {0.001: 1.0, float("inf"): 100.0}) == 0.001  # in +Inf: the largest finite bound
    assert quantile(0.5, {0.001: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.5, {}) is None


def test_delta_and_restart() -> None:
    assert delta({1.0: 5.0, 2.0: 9.0}, {1.0: 3.0, 2.0: 4.0}) == {1.0: 2.0, 2.0: 5.0}
    assert delta({1.0: 1.0, 2.0: 2.0}, {1.0: 3.0, 2.0: 4.0}) == {1.0: 1.0, 2.0: 2.0}  # went down: counts from 0


def test_sticky_moves_only_for_a_real_change_or_after_the_hold() -> None:
    s = Sticky(ratio=0.25, hold=5.0)
    assert s.update(None, 0.0) is None
    assert s.update(1.0, 0.0) == 1.0
    assert s.update(1.2, 1.0) == 1.0  # 20 %: held
    assert s.update(0.8, 2.0) == 1.0
    assert s.update(1.3, 3.0) == 1.3  # 30 %: moves
    assert s.update(1.35, 4.0) == 1.3
    assert s.update(1.35, 8.0) == 1.35  # held 5 s: takes the estimate
    assert s.update(None, 20.0) == 1.35  # nothing observed: keeps what it showed


def test_rates_and_quantiles_over_the_window() -> None:
    m = Metrics([("engine", "http://e/metrics"), ("projection", "http://p/metrics")], window=10.0, hold=5.0)
    v = m.feed(0.0, {"engine": engine(100, (10, 10, 10)), "projection": None})
    assert v.events_per_s is None  # one scrape: no rate yet
    assert [s.name for s in v.stages] == ["decide"]
    assert m.sources[1].up is False and m.sources[0].up is True
    v = m.feed(5.0, {"engine": engine(600, (10, 110, 110)), "projection": None})
    assert v.events_per_s == pytest.approx(100.0)
    assert v.commands_per_s == pytest.approx(50.0)
    (decide,) = v.stages
    assert decide.count == 100  # the delta of the window, not the 110 since start
    assert decide.p50 == pytest.approx(0.001 + 0.009 * 0.5)  # every new observation in (1 ms, 10 ms]
    shown = decide.p50
    # a small change within the hold time is held; later, with the oldest scrapes out of the window, a big one shows
    v = m.feed(9.0, {"engine": engine(1100, (15, 210, 210)), "projection": None})
    assert v.stages[0].p50 == shown
    v = m.feed(16.0, {"engine": engine(1700, (1000, 1000, 1000)), "projection": None})
    assert v.events_per_s == pytest.approx((1700 - 600) / 11.0)
    assert v.stages[0].p50 is not None and v.stages[0].p50 < 0.001  # everything fast now: moves at once
    # a restart inside the window (counters fell) does not show a negative rate
    v = m.feed(17.0, {"engine": engine(50, (5, 5, 5)), "projection": None})
    assert v.events_per_s is not None and v.events_per_s >= 0


def test_unparsable_source_is_unavailable_not_fatal() -> None:
    m = Metrics([("gateway", "http://g/metrics")])
    m.feed(0.0, {"gateway": "<html>not metrics{"})
    assert m.sources[0].up is False and m.sources[0].error


def test_default_sources_and_formatting() -> None:
    assert default_sources("http://10.0.0.5:3000") == [
        ("gateway", "http://10.0.0.5:3000/metrics"), ("engine", "http://10.0.0.5:9464/metrics"),
        ("projection", "http://10.0.0.5:9465/metrics"), ("query", "http://10.0.0.5:9467/metrics"),
    ]  # fmt: skip
    assert default_sources("http://h:3000", ["http://h:9999/metrics"]) == [
        ("gateway", "http://h:3000/metrics"), ("h:9999", "http://h:9999/metrics")
    ]  # fmt: skip
    assert [seconds(x) for x in (None, 0.00025, 0.0123, 2.5)] == ["—", "250µs", "12.3ms", "2.5s"]


def test_a_source_given_by_port_is_named_by_its_metrics() -> None:
    m = Metrics(default_sources("http://h:3000", ["http://h:7001/metrics", "http://h:7002/metrics"]))
    assert [s.name for s in m.sources] == ["gateway", "h:7001", "h:7002"]
    m.feed(0.0, {"gateway": TEXT, "h:7001": engine(1, (1, 1, 1)), "h:7002": engine(1, (1, 1, 1))})
    assert [s.name for s in m.sources] == ["gateway", "engine", "h:7002"]  # never two of one name
