"""The PNG of `jetbook bench --plot`: throughput over time during the end-to-end run, and latency percentiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jetbook.bench.procs import BenchError

MIN_WINDOW_S = 0.25  # rates are taken over at least this much time, or they are mostly sampling noise


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise BenchError("--plot needs matplotlib: pip install 'jetbook[bench]'") from err


def rates(timeline: list[list[float]], column: int) -> tuple[list[float], list[float]]:
    """(t, per second) of one timeline column, over windows of at least MIN_WINDOW_S."""
    ts: list[float] = []
    vs: list[float] = []
    i = 0
    for j in range(1, len(timeline)):
        dt = timeline[j][0] - timeline[i][0]
        if dt >= MIN_WINDOW_S:
            ts.append(timeline[j][0])
            vs.append((timeline[j][column] - timeline[i][column]) / dt)
            i = j
    return ts, vs


def plot(doc: dict[str, Any], path: Path) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    e2e, floor = doc["end_to_end"]["timeline"], doc["floor"]["timeline"]
    # timeline columns: t, JB_CMD last seq, JB_EVT last seq, cmd_seq of the newest event, projection position
    for label, tl, col, style in (
        ("commands into JB_CMD /s", e2e, 1, "-"),
        ("orders applied by the engine /s", e2e, 3, "-"),
        ("events into JB_EVT /s", e2e, 2, "-"),
        ("events folded by the projection /s", e2e, 4, "-"),
        ("floor: events into JB_EVT /s", floor, 2, "--"),
    ):
        t, v = rates(tl, col)
        left.plot(t, v, style, label=label, linewidth=1.2)
    left.set_title(
        f"throughput, end to end: {doc['end_to_end']['orders_per_s']:,} orders/s "
        f"(floor {doc['floor']['orders_per_s']:,})"
    )
    left.set_xlabel("seconds since the first publish")
    left.set_ylabel("per second")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    for level in doc["latency"]["levels"]:
        xs = [1 / (1 - min(p, 99.9999) / 100) for p, _ in level["distribution"]]
        ys = [max(ms, 0.001) for _, ms in level["distribution"]]
        right.plot(xs, ys, label=f"{level['load']:.0%} load ({level['achieved_per_s']:,}/s)", linewidth=1.2)
    right.set_xscale("log")
    right.set_yscale("log")
    ticks = [50, 90, 99, 99.9, 99.99]
    right.set_xticks([1 / (1 - p / 100) for p in ticks], [f"{p}%" for p in ticks])
    right.set_title("latency: publish -> first event seen on jb.evt.>")
    right.set_xlabel("percentile")
    right.set_ylabel("ms")
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8)
    fig.suptitle(f"jetbook bench, {doc['date']}: {doc['command']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
