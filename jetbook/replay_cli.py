"""`jetbook replay`: rebuild a projection, verify the log, look at any past sequence."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.core import CHECKPOINT_EVERY
from engine.exchange import APP as EXCHANGE
from jetbook.cli_common import Url, client_call
from jetbook.settings import DEFAULT_URL

replay_app = typer.Typer(
    no_args_is_help=True,
    help="Rebuild read models from JB_EVT, re-decide JB_CMD to prove the log, and look at any past sequence.",
)


def _run(url: str, body: Callable[[Any], Awaitable[int]]) -> None:
    try:
        client_call(url, body, "jetbook-replay")
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


class _Reporter:
    """A rich progress bar (events/s, ETA) on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, what: str, every_s: float = 2.0) -> None:
        self.what = what
        self.every_s = every_s
        self.tty = sys.stderr.isatty()
        self._started = time.perf_counter()
        self._last_line = self._started
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Reporter:
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                Task,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            class Rate(ProgressColumn):
                def render(self, task: Task) -> Text:
                    speed = task.finished_speed or task.speed
                    return Text(f"{speed:,.0f} events/s" if speed else "- events/s")

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task(self.what, total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            elapsed = now - self._started
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else 0.0
            typer.echo(f"{self.what}: {done}/{total} events, {rate:,.0f} events/s, ETA {eta:.0f}s", err=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


@replay_app.command("rebuild")
def rebuild_cmd(
    projection: Annotated[str, typer.Argument(help="Which projection (see `replay list`).")] = "read_model",
    from_seq: Annotated[int, typer.Option(help="First JB_EVT sequence to fold.")] = 1,
    to_seq: Annotated[int | None, typer.Option(help="Last JB_EVT sequence to fold (default: the tail).")] = None,
    db: Annotated[Path, typer.Option(help="The projection's path; the new file is swapped in here.")] = Path(
        ".jetbook/read_model.db"
    ),
    at: Annotated[
        str | None,
        typer.Option(help="A sharded venue: the last sequence of every shard stream, JB_EVT_0=120,JB_EVT_1=88."),
    ] = None,
    nats_url: Url = DEFAULT_URL,
) -> None:
    """Rebuild a projection into a new SQLite file beside --db, then swap it in atomically.

    A projection worker running on --db picks the new file up by itself and
    carries on from its position. A sharded venue is folded from the start of
    every shard stream, to its tail or to the positions --at gives.
    """
    from replay.rebuild import PROJECTIONS, Progress, rebuild

    if projection not in PROJECTIONS:
        typer.echo(f"error: unknown projection {projection!r}; known: {', '.join(sorted(PROJECTIONS))}", err=True)
        raise typer.Exit(2)

    async def body(js: Any) -> int:
        from projections.runner import shard_streams
        from protocol.streams import venue_shards
        from replay.at import parse_at
        from replay.rebuild import rebuild_shards

        shards = await venue_shards(js) or 1
        if shards == 1 and at is not None:
            typer.echo("error: --at names a position per shard stream: a one-shard venue takes --to-seq", err=True)
            return 2
        if shards > 1:  # every shard's JB_EVT_k into the one file, each to its tail now or to --at
            if from_seq != 1 or to_seq is not None:
                typer.echo(
                    "error: --from-seq/--to-seq name one stream's sequences: a sharded venue takes --at", err=True
                )
                return 2
            until = None
            if at is not None:
                try:
                    until = parse_at(at, shard_streams(EXCHANGE, shards))
                except ValueError as err:
                    typer.echo(f"error: this venue has {shards} shards: {err}", err=True)
                    return 2
            result = await rebuild_shards(js, db, shards, until=until)
            where = "" if until is None else " to " + ", ".join(f"{s} {q}" for s, q in until.items())
            typer.echo(
                f"rebuilt {projection} from {shards} shards{where}: {result.events} events in {result.seconds:.2f}s"
            )
            typer.echo(f"swapped in: {result.target} -> {result.generation.name}")
            return 0
        with _Reporter(f"rebuild {projection}") as reporter:

            def progress(p: Progress) -> None:
                reporter.update(p.done, p.total)

            result = await rebuild(js, db, projection, from_seq=from_seq, to_seq=to_seq, on_progress=progress)
        typer.echo(
            f"rebuilt {projection}: JB_EVT {result.from_seq}..{result.position}, {result.events} events"
            f" in {result.seconds:.2f}s ({result.rate:,.0f} events/s)"
        )
        typer.echo(f"swapped in: {result.target} -> {result.generation.name}")
        return 0

    _run(nats_url, body)


@replay_app.command("verify")
def verify_cmd(
    from_seq: Annotated[
        int, typer.Option(help="JB_CMD sequence to re-decide from; the state before it is folded from JB_EVT.")
    ] = 1,
    checkpoint_every: Annotated[
        int, typer.Option(help="The engine's checkpoint interval (checkpoint events are part of the log).")
    ] = CHECKPOINT_EVERY,
    shard: Annotated[int | None, typer.Option(help="Only this shard (a sharded venue; default: every shard).")] = None,
    nats_url: Url = DEFAULT_URL,
) -> None:
    """Re-decide every command of JB_CMD through a fresh core and compare with JB_EVT, event by event.

    Exit 0 and "identical" with a sha256 digest of the events, or exit 1 and
    the first divergence with both payloads. A sharded venue: each shard's
    JB_CMD_k against its JB_EVT_k, one verdict per shard.
    """
    from protocol.streams import venue_shards
    from replay.verify import describe, describe_shards, verify, verify_shards

    async def body(js: Any) -> int:
        shards = await venue_shards(js) or 1
        if shard is not None and not 0 <= shard < shards:
            typer.echo(f"error: this venue has {shards} shard(s): --shard must be 0..{shards - 1}", err=True)
            return 2
        with _Reporter("verify") as reporter:
            if shards == 1:
                result = await verify(js, from_seq, checkpoint_every=checkpoint_every, on_progress=reporter.update)
                results = [result]
            else:
                try:
                    results = await verify_shards(
                        js, shards, only=shard, from_seq=from_seq, checkpoint_every=checkpoint_every,
                        on_progress=reporter.update,
                    )  # fmt: skip
                except ValueError as err:
                    typer.echo(f"error: {err}", err=True)
                    return 2
        for line in describe(results[0]) if shards == 1 else describe_shards(results):
            typer.echo(line)
        return 0 if all(r.identical for r in results) else 1

    _run(nats_url, body)


@replay_app.command("at")
def at_cmd(
    seq: Annotated[
        int | None, typer.Option(help="JB_EVT sequence: the answer is as of right after this event.")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="A sharded venue: every shard stream's position, e.g. JB_EVT_0=120,JB_EVT_1=88."),
    ] = None,
    market: Annotated[str | None, typer.Option("--market", "-m", help="One market; all if absent.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    nats_url: Url = DEFAULT_URL,
) -> None:
    """Top of book, open orders and positions as they were right after JB_EVT event --seq.

    A sharded venue has no one sequence: give --at (every shard stream's position).
    """
    from projections.runner import shard_streams
    from protocol.streams import venue_shards
    from replay.at import parse_at, render, state_at

    async def body(js: Any) -> int:
        shards = await venue_shards(js) or 1
        positions = None
        if shards == 1 and seq is None:
            typer.echo("error: give --seq (the JB_EVT sequence)", err=True)
            return 2
        if shards > 1:
            try:
                positions = parse_at(at or "", shard_streams(EXCHANGE, shards))
            except ValueError as err:
                typer.echo(f"error: this venue has {shards} shards: {err}", err=True)
                return 2
        view = await state_at(js, seq or 0, market, positions)
        if as_json:
            typer.echo(json.dumps(view.as_json()))
        else:
            for line in render(view):
                typer.echo(line)
        return 0

    _run(nats_url, body)


@replay_app.command("list")
def list_cmd() -> None:
    """The projections `replay rebuild` knows."""
    from replay.rebuild import PROJECTIONS

    for name in sorted(PROJECTIONS):
        typer.echo(name)
