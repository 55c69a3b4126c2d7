"""Where a command's milliseconds go: `jetbook bench`'s per-stage breakdown of one latency run.

No stage subtracts times taken on two clocks that nobody synchronised:

- send lag: the command's intended send time -> its publish; the bench's monotonic clock.
- publish -> JB_CMD: its publish -> its JetStream timestamp in JB_CMD; wall clock (bench and server on one host).
- JB_CMD -> JB_EVT: its JetStream timestamp -> its first event's in JB_EVT; the server's wall clock.
- JB_EVT -> seen: the first event's JetStream timestamp -> the subscriber's receive; wall clock, one host.
- engine wait / decide / send / commit: per batch of commands, from the engine's /metrics; its monotonic clock.

The engine's stages are histograms (jetbook_engine_stage_seconds, engine/metrics.py): their quantiles are
interpolated within a bucket, as Prometheus' histogram_quantile does, and are per *batch*, not per command.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

from engine.metrics import STAGES
from events.stream_readers import BulkReader

STAGE_FAMILY = "jetbook_engine_stage_seconds"
Buckets = dict[str, list[tuple[float, float]]]  # stage -> [(upper bound, cumulative count)], ascending


def free_port() -> int:
    """A TCP port nobody listens on right now (for the engine's /metrics)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_stages(port: int) -> Buckets:
    """The engine's stage histograms, as served on 127.0.0.1:port/metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != STAGE_FAMILY:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                out.setdefault(s.labels["stage"], []).append((float(s.labels["le"]), float(s.value)))
    for rows in out.values():
        rows.sort()
    return out


def delta(after: Buckets, before: Buckets) -> Buckets:
    """What was observed between two scrapes."""
    out: Buckets = {}
    for stage, rows in after.items():
        old = dict(before.get(stage, []))
        out[stage] = [(le, n - old.get(le, 0.0)) for le, n in rows]
    return out


def bucket_quantile(rows: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in; NaN for an empty histogram."""
    if not rows or rows[-1][1] <= 0:
        return float("nan")
    rank = q * rows[-1][1]
    lower, below = 0.0, 0.0
    for le, n in rows:
        if n >= rank:
            if le == float("inf"):
                return lower  # the highest finite bound, as Prometheus does
            return lower + (le - lower) * ((rank - below) / (n - below) if n > below else 1.0)
        lower, below = le, n
    return lower


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile of raw values (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def summary_ms(values: Iterable[float]) -> dict[str, float]:
    """p50 and p99 of seconds, in ms (3 decimals)."""
    v = list(values)
    return {"p50_ms": round(percentile(v, 0.5) * 1000, 3), "p99_ms": round(percentile(v, 0.99) * 1000, 3)}


async def stream_ts(js: Any, stream: str, start: int, end: int) -> tuple[list[int], list[int], list[bytes]]:
    """(sequences, JetStream timestamps in ns, payloads) of `stream` from start to end."""
    seqs: list[int] = []
    ts: list[int] = []
    data: list[bytes] = []
    async with BulkReader(js, stream, start, end, chunk=10_000) as reader:
        async for chunk in reader:
            seqs += chunk.seqs
            ts += chunk.ts
            data += chunk.data
    return seqs, ts, data


def first_event_ts(seqs: list[int], ts: list[int], data: list[bytes]) -> dict[int, int]:
    """cmd_seq -> the JetStream timestamp (ns) of its first event in JB_EVT."""
    import msgpack

    first: dict[int, int] = {}
    for _seq, t, d in zip(seqs, ts, data, strict=True):
        cmd = msgpack.unpackb(d, raw=False).get("cmd_seq")
        if isinstance(cmd, int) and cmd not in first:
            first[cmd] = t
    return first


def breakdown(
    *,
    cmd_seqs: Sequence[int],
    intended: Sequence[float],
    actual: Sequence[float],
    seen: Sequence[float],
    wall_offset: float,
    cmd_ts: dict[int, int],
    evt_ts: dict[int, int],
    engine: Buckets | None,
) -> dict[str, dict[str, float]]:
    """Per stage p50/p99 in ms. `intended`, `actual` and `seen` are the bench's monotonic times per command;
    wall_offset turns them into wall-clock seconds on this host (time.time() - time.perf_counter())."""
    out: dict[str, dict[str, float]] = {}
    out["send lag"] = summary_ms(a - i for i, a in zip(intended, actual, strict=True))
    cmd = [cmd_ts.get(s) for s in cmd_seqs]
    evt = [evt_ts.get(s) for s in cmd_seqs]
    out["publish -> JB_CMD"] = summary_ms(
        c / 1e9 - (a + wall_offset) for c, a in zip(cmd, actual, strict=True) if c is not None
    )
    out["JB_CMD -> JB_EVT"] = summary_ms(
        (e - c) / 1e9 for c, e in zip(cmd, evt, strict=True) if c is not None and e is not None
    )
    out["JB_EVT -> seen"] = summary_ms(
        s + wall_offset - e / 1e9 for e, s in zip(evt, seen, strict=True) if e is not None
    )
    engine = engine or {}
    for stage in [s for s in STAGES if s in engine] + sorted(set(engine) - set(STAGES)):
        rows = engine[stage]
        out[f"engine {stage}"] = {
            "p50_ms": round(bucket_quantile(rows, 0.5) * 1000, 3),
            "p99_ms": round(bucket_quantile(rows, 0.99) * 1000, 3),
            "batches": rows[-1][1] if rows else 0,
        }
    return out
