"""The engine pane's numbers, from the Prometheus text of every role's `/metrics`.

A screen that redraws several times a second must not flicker: rates are taken over a sliding window of scrapes
(not between two adjacent ones), and each stage's p50/p99 comes from the *deltas* of its histogram over that window
(what happened lately, not since the process started), then is held "sticky": a shown quantile moves only when the
new estimate differs from it by more than a ratio, or when it has been shown for longer than a hold time.

Nothing here is fatal: a role whose /metrics does not answer is shown as unavailable, and its series simply stop.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx
from prometheus_client.parser import text_string_to_metric_families

WINDOW_S: Final = 10.0  # rates and quantiles describe the last this-many seconds
STICKY_RATIO: Final = 0.25  # a quantile moves when the new estimate is this far (relative) from the shown one
STICKY_HOLD_S: Final = 5.0  # ...or when the shown one is older than this
SCRAPE_TIMEOUT_S: Final = 1.0

Labels = tuple[tuple[str, str], ...]
Series = dict[tuple[str, Labels], float]  # (sample name, its labels sorted) -> value

# Histograms the pane names, in its order: (shown name, metric, label that must match or None for the sum of all).
STAGES: Final[tuple[tuple[str, str, tuple[str, str] | None], ...]] = (
    ("decide", "jetbook_engine_decide_seconds", None),
    ("commit", "jetbook_engine_commit_seconds", None),
    ("fold", "jetbook_projection_fold_seconds", None),
    ("query", "jetbook_query_duration_seconds", None),
    ("round trip ws", "jetbook_gateway_command_round_trip_seconds", ("via", "ws")),
    ("round trip http", "jetbook_gateway_command_round_trip_seconds", ("via", "http")),
)
KNOWN_PORTS: Final = {"9464": "engine", "9465": "projection", "9466": "fanout", "9467": "query"}
EVENTS: Final = "jetbook_engine_events_total"
COMMANDS: Final = "jetbook_engine_commands_total"


def parse(text: str) -> Series:
    """Prometheus text format into {(sample name, labels): value}; NaN and +Inf values are kept as floats."""
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def total(series: Mapping[tuple[str, Labels], float], name: str) -> float | None:
    """The sum of a sample over all its label sets; None when no such sample exists."""
    values = [v for (n, _), v in series.items() if n == name]
    return sum(values) if values else None


def buckets(
    series: Mapping[tuple[str, Labels], float], metric: str, match: tuple[str, str] | None = None
) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound, summed over the label sets that `match` allows."""
    out: dict[float, float] = {}
    name = metric + "_bucket"
    for (n, labels), value in series.items():
        if n != name:
            continue
        d = dict(labels)
        if match is not None and d.get(match[0]) != match[1]:
            continue
        le = float(d.get("le", "+Inf"))
        out[le] = out.get(le, 0.0) + value
    return out


def quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket that holds rank q*count; None without samples.

    A rank that falls in the +Inf bucket answers the largest finite bound (we know only that it is above it).
    """
    bounds = sorted(cumulative)
    if not bounds:
        return None
    count = cumulative[bounds[-1]]
    if count <= 0:
        return None
    rank = q * count
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        c = cumulative[bound]
        if c >= rank:
            if math.isinf(bound):
                return prev_bound
            if c == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = bound, c
    return prev_bound


def delta(new: Mapping[float, float], old: Mapping[float, float]) -> dict[float, float]:
    """Bucket counts between two scrapes; a counter that went down (the process restarted) counts from zero."""
    if any(new.get(b, 0.0) < v for b, v in old.items()):
        return dict(new)
    return {b: v - old.get(b, 0.0) for b, v in new.items()}


@dataclass
class Sticky:
    """A shown value that moves only for a real change (`ratio`) or after `hold` seconds: steady to read."""

    ratio: float = STICKY_RATIO
    hold: float = STICKY_HOLD_S
    shown: float | None = None
    since: float = -math.inf

    def update(self, estimate: float | None, now: float) -> float | None:
        if estimate is None:
            return self.shown  # nothing happened lately: keep what we showed
        if (
            self.shown is None
            or now - self.since >= self.hold
            or abs(estimate - self.shown) > self.ratio * max(abs(self.shown), 1e-12)
        ):
            self.shown, self.since = estimate, now
        return self.shown


@dataclass
class Source:
    """One /metrics URL and what its last scrape said."""

    name: str
    url: str
    up: bool | None = None  # None: not scraped yet
    error: str = ""
    series: Series = field(default_factory=dict)


@dataclass
class StageView:
    name: str
    p50: float | None
    p99: float | None
    count: float  # observations in the window


@dataclass
class EngineView:
    """What the engine pane shows."""

    events_per_s: float | None = None
    commands_per_s: float | None = None
    stages: list[StageView] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


class Metrics:
    """Scrapes (or is fed) /metrics texts and keeps a window of them; `view()` is the pane's content."""

    def __init__(
        self, sources: Iterable[tuple[str, str]], *, window: float = WINDOW_S, ratio: float = STICKY_RATIO,
        hold: float = STICKY_HOLD_S,
    ) -> None:  # fmt: skip
        self.sources = [Source(name, url) for name, url in sources]
        self.window = window
        self.ratio, self.hold = ratio, hold
        self.history: deque[tuple[float, Series]] = deque()  # (time, every source's series merged)
        self.sticky: dict[tuple[str, str], Sticky] = {}
        self._client: httpx.AsyncClient | None = None
        self.current = EngineView(sources=self.sources)

    # --- feeding ----------------------------------------------------------------------------------------------

    def feed(self, now: float, texts: Mapping[str, str | None]) -> EngineView:
        """One scrape round: each source's text by name (None: it did not answer). Returns the new view."""
        merged: Series = {}
        for source in self.sources:
            text = texts.get(source.name)
            if text is None:
                if source.up is not False and not source.error:
                    source.error = "no answer"
                source.up = False
                source.series = {}
                continue
            try:
                source.series = parse(text)
            except ValueError as err:  # not Prometheus text (a wrong URL)
                source.up, source.error, source.series = False, f"unparsable: {str(err)[:60]}", {}
                continue
            source.up, source.error = True, ""
            if ":" in source.name:  # a URL given by port only: name it by the role its metrics belong to
                role = _role_of(source.series, source.name)
                if role not in {s.name for s in self.sources}:
                    source.name = role
            for (name, labels), value in source.series.items():
                key = (name, (("_source", source.name), *labels))
                merged[key] = value
        self.history.append((now, merged))
        while len(self.history) > 2 and now - self.history[1][0] >= self.window:
            self.history.popleft()
        self.current = self._view(now)
        return self.current

    async def scrape(self, now: float) -> EngineView:
        """Fetch every source (concurrently, with a short timeout) and feed the answers."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)
        client = self._client

        async def one(source: Source) -> str | None:
            try:
                r = await client.get(source.url)
            except httpx.HTTPError as err:
                source.error = type(err).__name__
                return None
            if r.status_code != 200:
                source.error = f"HTTP {r.status_code}"
                return None
            return r.text

        answers = await asyncio.gather(*(one(s) for s in self.sources))
        return self.feed(now, {s.name: a for s, a in zip(self.sources, answers, strict=True)})

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- the view ---------------------------------------------------------------------------------------------

    def _rate(self, name: str) -> float | None:
        """A counter's increase per second across the window; None until the window holds it twice."""
        if len(self.history) < 2:
            return None
        (t0, old), (t1, new) = self.history[0], self.history[-1]
        a, b = total(old, name), total(new, name)
        if a is None or b is None or t1 <= t0:
            return None
        if b < a:  # the process restarted inside the window: its counter started again from zero
            a = 0.0
        return (b - a) / (t1 - t0)

    def _view(self, now: float) -> EngineView:
        view = EngineView(self._rate(EVENTS), self._rate(COMMANDS), [], self.sources)
        if not self.history:
            return view
        old = self.history[0][1]
        new = self.history[-1][1]
        for stage, metric, match in self._stages(new):
            b_new = buckets(new, metric, match)
            if not b_new:
                continue
            b_old = buckets(old, metric, match) if len(self.history) > 1 else {}
            d = delta(b_new, b_old)
            count = max(d.values()) if d else 0.0
            p50 = self._sticky(stage, "p50").update(quantile(0.5, d), now)
            p99 = self._sticky(stage, "p99").update(quantile(0.99, d), now)
            view.stages.append(StageView(stage, p50, p99, count))
        return view

    def _stages(self, series: Series) -> list[tuple[str, str, tuple[str, str] | None]]:
        """The named stages first, then any other histogram the sources expose (summed over its labels)."""
        known = {metric for _, metric, _ in STAGES}
        out = list(STAGES)
        seen: set[str] = set()
        for name, _ in series:
            if name.endswith("_bucket"):
                metric = name[: -len("_bucket")]
                if metric not in known and metric not in seen:
                    seen.add(metric)
                    short = metric.removeprefix("jetbook_").removesuffix("_seconds").replace("_", " ")
                    out.append((short, metric, None))
        return out

    def _sticky(self, stage: str, q: str) -> Sticky:
        key = (stage, q)
        s = self.sticky.get(key)
        if s is None:
            s = self.sticky[key] = Sticky(self.ratio, self.hold)
        return s


def default_sources(http_base: str, extra: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The gateway's /metrics, plus `extra` or else the engine's, projection's and query service's of `jetbook up`."""
    host = http_base.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0] or "127.0.0.1"
    others = list(extra) or [f"http://{host}:{port}/metrics" for port in (9464, 9465, 9467)]
    out = [("gateway", http_base.rstrip("/") + "/metrics")]
    for url in others:
        name = _name_of(url)
        while name in {n for n, _ in out}:
            name += "'"
        out.append((name, url))
    return out


def _name_of(url: str) -> str:
    """engine/projection/fanout/query by `jetbook up`'s default ports, else host:port."""
    where = url.split("://", 1)[-1].split("/", 1)[0]
    return KNOWN_PORTS.get(where.rsplit(":", 1)[-1], where)


def _role_of(series: Series, default: str) -> str:
    """The `<role>` of the `jetbook_<role>_*` samples a scrape holds most of."""
    counts: dict[str, int] = {}
    for name, _ in series:
        if name.startswith("jetbook_"):
            role = name.split("_")[1]
            counts[role] = counts.get(role, 0) + 1
    return max(counts, key=lambda r: counts[r]) if counts else default


def seconds(value: float | None) -> str:
    """A duration for the pane: µs, ms or s with three significant digits; '—' for unknown."""
    if value is None:
        return "—"
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1.0:
        return f"{value * 1e3:.3g}ms"
    return f"{value:.3g}s"
