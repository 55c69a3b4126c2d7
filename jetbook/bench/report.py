"""The table `jetbook bench` prints, from the result document (the same one --json writes)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

STAGE_NOTES = {  # which clock each stage is on (jetbook/bench/stages.py)
    "send lag": "p50 / p99 ms; intended -> actual publish, bench clock",
    "publish -> JB_CMD": "publish -> JetStream timestamp; wall clock, one host",
    "JB_CMD -> JB_EVT": "command's -> first event's JetStream timestamp; server clock",
    "JB_EVT -> seen": "first event's JetStream timestamp -> subscriber; wall clock, one host",
    "engine": "engine monotonic clock, from its /metrics (bucket-interpolated)",
}


def _n(v: float) -> str:
    return f"{v:,.0f}"


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(section, figure, value, detail) per line of the table."""
    f, e, lat, core = doc["floor"], doc["end_to_end"], doc["latency"], doc["core"]
    live, rebuild, mem = doc["projection"]["live"], doc["projection"]["rebuild"], doc["memory"]
    out = [
        ("1 transport floor", "orders/s", _n(f["orders_per_s"]),
         f"{_n(f['events_per_s'])} events/s; {f['seconds']} s; publish {_n(f['publish_per_s'])}/s;"
         f" other processes {f['cpu_s'].get('others', 0)} CPU-s"),
        ("2 end to end", "orders/s", _n(e["orders_per_s"]),
         f"{_n(e['events_per_s'])} events/s; {e['seconds']} s; publish {_n(e['publish_per_s'])}/s;"
         f" other processes {e['cpu_s'].get('others', 0)} CPU-s"),
        ("", "ratio to floor", f"{e['ratio_to_floor']:.2f}", "end-to-end orders/s / floor orders/s"),
        ("", "engine CPU µs / command", f"{e.get('engine_cpu_us_per_command', 0):,.1f}",
         f"user+sys of the engine process ÷ commands; the floor's null engine "
         f"{f.get('null_engine_cpu_us_per_command', 0):,.1f} µs"),
    ]  # fmt: skip
    for level in lat["levels"]:
        out.append((
            f"3 latency at {level['load']:.0%}",
            "p50 / p99 / p99.9 ms",
            f"{_ms(level['p50_ms'])} / {_ms(level['p99_ms'])} / {_ms(level['p99_9_ms'])}",
            f"{_n(level['achieved_per_s'])}/s sent (target {_n(level['target_per_s'])}); "
            f"{_n(level['commands'])} commands; max {_ms(level['max_ms'])} ms;"
            f" send lag p99 {_ms(level['send_lag_p99_ms'])} ms; others {level['cpu_s'].get('others', 0)} CPU-s"
            + ("; THE SENDER LAGGED MORE THAN THE LATENCY IT MEASURES: the client's figure, not the engine's"
               if level.get("sender_lagged") else ""),
        ))  # fmt: skip
    for level, floor in zip(lat["levels"], lat.get("floor_levels", []), strict=False):
        out.append((
            f"  floor at {floor['load']:.0%}", "p50 / p99 ms",
            f"{_ms(floor['p50_ms'])} / {_ms(floor['p99_ms'])}",
            f"the null engine, same commands and rate; the engine is {level.get('p50_x_floor')}x / "
            f"{level.get('p99_x_floor')}x the floor; send lag p99 {_ms(floor['send_lag_p99_ms'])} ms"
            + ("; THE SENDER LAGGED" if floor.get("sender_lagged") else ""),
        ))  # fmt: skip
    first = lat["levels"][0] if lat["levels"] else {}
    for i, (stage, q) in enumerate(first.get("stages", {}).items()):
        out.append((
            f"3 stages at {first['load']:.0%}" if i == 0 else "", stage, f"{_ms(q['p50_ms'])} / {_ms(q['p99_ms'])}",
            STAGE_NOTES.get(stage.split(" ", 1)[0] if stage.startswith("engine") else stage, "")
            + (f"; per batch, {q['batches']:,.0f} batches" if "batches" in q else ""),
        ))  # fmt: skip
    h, d = core["handle"], core["decode"]
    out += [
        ("4 engine core", "Engine.handle orders/s", _n(h["orders_per_s"]),
         f"{h['us_per_order']} µs/order; {_n(h.get('events_per_s', 0))} events/s; best of {h['runs']}"),
        ("", "msgpack decode only, /s", _n(d["orders_per_s"]),
         f"{d['us_per_order']} µs/order; the core costs {h['x_decode']}x a bare decode"),
        ("5 projection", "live, events/s", _n(live["events_per_s"]),
         f"first publish -> all folded, {live['seconds']} s"),
        ("", "lag at end of (2)", f"{_n(live['lag_events_at_end'])} ev",
         f"caught up {live['lag_seconds_at_end']} s after the engine finished"),
        ("", "rebuild, events/s", _n(rebuild["events_per_s"]),
         f"{_n(rebuild['events'])} events from 0 into a new file; {rebuild['seconds_from_spawn']} s from spawn"),
        ("6 memory", "bytes per resting order", _n(mem["bytes_per_order"]),
         f"{_n(mem['resting_orders'])} orders: RSS {mem['rss_before_bytes'] / 2**20:.0f} -> "
         f"{mem['rss_after_bytes'] / 2**20:.0f} MiB (peak {mem['rss_peak_bytes'] / 2**20:.0f})"),
    ]  # fmt: skip
    return out


def print_report(doc: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        console.width = max(console.width, 150)  # a pipe or a log file gets the whole table, not 80 columns
    m, w = doc["machine"], doc["workload"]
    table = Table(
        title=f"jetbook bench, {doc['date']}",
        caption=f"{doc['command']}\n{m['cpus']} CPUs, Python {m['python']}, nats-server {m['nats_server']}; "
        f"{w['commands'] - len(w['markets']):,} commands over {len(w['markets'])} markets "
        f"({w['place_crossing']:,} crossing places, {w['cancel']:,} cancels), {w['clients']} clients",
    )
    for name, justify in (("", "left"), ("figure", "left"), ("value", "right"), ("detail", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows(doc):
        table.add_row(*r)
    console.print(table)
    problems = doc["problems"]
    if problems:
        console.print("[bold red]checks failed:[/] " + "; ".join(problems))
    else:
        console.print(f"checks: ok ({len(doc['checks'])} checks: every command and event accounted for)")
