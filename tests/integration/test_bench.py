"""`jetbook bench` once, at a tiny size, on a real nats-server it starts itself: it runs, and its figures are sane.

A benchmark is not a test of speed: nothing here looks at how fast anything
was, only that every figure is there, is positive, hangs together (p50 <=
p99 <= p99.9, the ratio is end-to-end over floor) and that the run checked
every command and event it sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ORDERS = 2000
RESTING = 20_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    out = tmp_path_factory.mktemp("bench")
    json_path, png = out / "bench.json", out / "bench.png"
    argv = [sys.executable, "-m", "jetbook", "bench", "--orders", str(ORDERS), "--resting", str(RESTING), "--quick",
            "--latency-seconds", "0.5",
            "--json", str(json_path), "--plot", str(png)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"jetbook bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(json_path.read_text()), png, proc.stdout


def positive(*values: Any) -> None:
    for v in values:
        assert isinstance(v, int | float) and v > 0, values


def test_every_figure_is_there_and_sane(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    doc, _, stdout = bench_run
    assert doc["problems"] == []
    assert all(got == want for got, want in doc["checks"].values()), doc["checks"]

    # the record of the run: when, where, how
    assert doc["date"] and doc["command"].startswith("jetbook bench --orders 2000")
    m = doc["machine"]
    positive(m["cpus"])
    assert m["python"].count(".") == 2 and m["nats_server"].count(".") == 2

    floor, e2e = doc["floor"], doc["end_to_end"]
    positive(floor["orders_per_s"], floor["events_per_s"], e2e["orders_per_s"], e2e["events_per_s"])
    assert floor["events"] == e2e["events"] > ORDERS  # the same messages through both
    assert e2e["ratio_to_floor"] == pytest.approx(e2e["orders_per_s"] / floor["orders_per_s"], abs=0.001)

    levels = doc["latency"]["levels"]
    assert [lv["load"] for lv in levels] == [0.1, 0.5, 0.9]
    for lv in levels:
        positive(lv["p50_ms"], lv["commands"], lv["target_per_s"])
        assert lv["p50_ms"] <= lv["p99_ms"] <= lv["p99_9_ms"] <= lv["max_ms"]
        assert lv["from_send_p50_ms"] <= lv["from_send_p99_ms"] <= lv["from_send_p99_9_ms"]
    assert levels[0]["target_per_s"] < levels[1]["target_per_s"] < levels[2]["target_per_s"]
    # Where the milliseconds go (jetbook/bench/stages.py): every stage has figures, p50 <= p99.
    stages = levels[0]["stages"]
    for name in ("send lag", "publish -> JB_CMD", "JB_CMD -> JB_EVT", "JB_EVT -> seen", "engine wait", "engine decide",
                 "engine send", "engine commit"):  # fmt: skip
        assert stages[name]["p50_ms"] <= stages[name]["p99_ms"], (name, stages[name])
    assert stages["JB_CMD -> JB_EVT"]["p50_ms"] > 0  # one clock (the server's) on both ends: never negative
    assert all(isinstance(lv["sender_lagged"], bool) for lv in levels)
    # The floor, with the same commands at the same rates, and the engine as a multiple of it.
    floors = doc["latency"]["floor_levels"]
    assert [f["load"] for f in floors] == [0.1, 0.5, 0.9]
    for lv, f in zip(levels, floors, strict=True):
        assert f["commands"] == lv["commands"] and f["target_per_s"] == lv["target_per_s"]
        assert lv["p99_x_floor"] == pytest.approx(lv["p99_ms"] / f["p99_ms"], abs=0.01)
    positive(e2e["engine_cpu_us_per_command"], floor["null_engine_cpu_us_per_command"])

    core = doc["core"]
    positive(core["handle"]["orders_per_s"], core["decode"]["orders_per_s"], core["handle"]["events_per_s"])

    live, rebuild = doc["projection"]["live"], doc["projection"]["rebuild"]
    positive(live["events_per_s"], rebuild["events_per_s"])
    assert live["lag_events_at_end"] >= 0 and live["lag_seconds_at_end"] >= 0

    mem = doc["memory"]
    assert mem["resting_orders"] == RESTING
    positive(mem["bytes_per_order"])
    assert mem["rss_after_bytes"] > mem["rss_before_bytes"]

    for title in ("transport floor", "end to end", "latency at 50%", "floor at 10%", "stages at 10%",
                  "engine CPU µs / command", "engine core", "projection", "memory"):  # fmt: skip
        assert title in stdout


def test_plot_is_a_png(bench_run: tuple[dict[str, Any], Path, str]) -> None:
    _, png, _ = bench_run
    assert png.read_bytes()[:8] == PNG_MAGIC


async def test_refuses_a_server_whose_streams_hold_data(nats_server: Any, js: Any) -> None:
    """With --nats-url it would delete JB_CMD and JB_EVT: never on a server that has anything in them."""
    await js.publish("jb.ctl.BTC-USD", b"not even a command")
    argv = [sys.executable, "-m", "jetbook", "bench", "--nats-url", nats_server.url, "--orders", "10", "--quick"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "JB_CMD on this server holds 1 messages" in proc.stderr
    assert (await js.stream_info("JB_CMD")).state.messages == 1  # untouched


SCRIPTS = {
    "core": ["--orders", "2000", "--repeat", "1"],
    "core_mix": ["--commands", "2000", "--runs", "1"],
    "model_cost": [],
    "atomic_floor": ["--messages", "2000"],
    "latency_probe": ["--orders", "20", "--gap-ms", "5"],
    "engine_phases": ["--orders", "2000"],
    "replay": ["--orders", "2000", "--runs", "1"],
    "recovery": ["--events", "20000", "--tail", "5000"],
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_standalone_benchmark_runs_at_a_tiny_size(name: str) -> None:
    """The `python -m jetbook.bench.<name>` measurements `jetbook bench` does not make: each runs and its checks pass.

    They exit non-zero when a check fails (events missing, a state hash differs), so the exit code is the
    assertion; nothing here looks at a figure.
    """
    argv = [sys.executable, "-m", f"jetbook.bench.{name}", *SCRIPTS[name]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, f"{' '.join(argv[1:])} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


SHARD_ORDERS = 2_000


def test_shards_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """`jetbook bench --shards 1,2`: each shard's engine decides its share, and together exactly one engine's events.

    The bench itself checks every event kind per market against the one-shard generator (a problem exits 1);
    here only that its figures are all there, one per shard, and sane. A process's CPU time comes from /proc in
    10 ms clock ticks, so one shard's share of a tiny run can read 0 (a CI run met it: 300 commands x 30 us); each
    figure must be >= 0 and their sum positive, and 2,000 orders keep each shard above a tick as a rule.
    """
    json_path = tmp_path / "shards.json"
    argv = [sys.executable, "-m", "jetbook", "bench", "--shards", "1,2", "--orders", str(SHARD_ORDERS), "--runs", "1",
            "--json", str(json_path)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"jetbook bench --shards failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    doc = json.loads(json_path.read_text())
    assert doc["problems"] == []
    assert [row["shards"] for row in doc["runs"]] == [1, 2]
    for row in doc["runs"]:
        assert not row["kinds_differing"] and row["fills"] == doc["workload"]["fills"] > 0
        assert len(row["engine_cpu_us_per_command"]) == len(row["commands_per_shard"]) == row["shards"]
        assert sum(row["commands_per_shard"]) == SHARD_ORDERS
        assert all(c >= 0 for c in row["engine_cpu_us_per_command"]), row["engine_cpu_us_per_command"]
        positive(row["orders_per_s"], sum(row["engine_cpu_us_per_command"]), row["broker_cpu_us_per_msg"])
    assert "engine CPU us/command" in proc.stdout
