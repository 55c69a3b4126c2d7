"""`jetbook bench`: the command's options. Everything heavy is imported when it runs, not when `jetbook` starts."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from jetbook.cli_common import check_nats_url

QUICK_RESTING = 100_000
QUICK_LATENCY_S = 1.0


def bench(
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats-url",
            callback=check_nats_url,
            help="Use this (scratch) server instead of starting one; its JB_* streams are deleted.",
        ),
    ] = None,
    orders: Annotated[
        int, typer.Option(help="Commands in the measured flow (after one create_market per market).")
    ] = 100_000,
    markets: Annotated[int, typer.Option(help="Markets; one publishing client each (see --clients).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the flow: the same seed gives the same commands.")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every figure here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG: throughput over time, latency percentiles.")] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help=f"Short latency runs ({QUICK_LATENCY_S:g} s), one core run, {QUICK_RESTING:,} resting orders."
        ),
    ] = False,
    resting: Annotated[
        int | None, typer.Option(help="Resting orders for the memory figure [default: 1,000,000].")
    ] = None,
    clients: Annotated[int, typer.Option(help="Concurrent publishing clients (0: one per market).")] = 0,
    window: Annotated[int, typer.Option(help="Un-acked publishes in flight per client.")] = 500,
    latency_seconds: Annotated[float | None, typer.Option(help="Length of each latency run [default: 5].")] = None,
    core_repeat: Annotated[
        int | None, typer.Option(help="Runs of each core loop; the best counts [default: 3].")
    ] = None,
    runs: Annotated[
        int | None, typer.Option(help="Floor and end-to-end runs, alternated; the best of each counts [default: 3].")
    ] = None,
    floor_inflight: Annotated[
        int, typer.Option(help="Atomic-batch commits in flight in the floor (the engine's: 1).")
    ] = 1,
    py_spy: Annotated[Path | None, typer.Option(help="Record the engine and projection with py-spy into DIR.")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the temporary directory (server store, logs, read models).")] = False,
    tls: Annotated[
        bool, typer.Option(help="TLS on every connection to the bench's own server (a throwaway CA; needs trustme).")
    ] = False,
    peer: Annotated[
        bool,
        typer.Option(
            help="Only the core beside the PyPI peer matching-engine 0.1.1 on its own workload (--orders, --runs"
            " [default: 2], --seed); fetches it with pip, exit 2 without network."
        ),
    ] = False,
    batch: Annotated[
        int | None,
        typer.Option(
            help="Instead: a quoting flow sent one order per command and K per batch command (place_orders,"
            " cancel_orders), side by side; --orders of it [default: 20,000], --runs alternated [default: 2]."
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            help="Instead: the flow through N shard engines for each N of a list (e.g. 1,2,4), on a fresh server"
            " each; aggregate orders/s, each engine's CPU per command, the broker's CPU per message; --runs"
            " alternated [default: 2], --markets rounded up so each shard gets its share [default: 8]."
        ),
    ] = None,
) -> None:
    """Measure the pipeline against the transport floor: throughput, latency, core, projection, memory."""
    if peer:
        from jetbook.bench.peer import main as peer_main

        raise typer.Exit(peer_main(["--commands", str(orders), "--runs", str(runs or 2), "--seed", str(seed)]))
    from jetbook.bench.procs import BenchError
    from jetbook.bench.report import print_report
    from jetbook.bench.run import Options, run

    opts = Options(
        nats_url=nats_url,
        orders=orders,
        markets=markets,
        seed=seed,
        clients=clients,
        window=window,
        resting=resting if resting is not None else (QUICK_RESTING if quick else 1_000_000),
        quick=quick,
        latency_seconds=latency_seconds if latency_seconds is not None else (QUICK_LATENCY_S if quick else 5.0),
        core_repeat=core_repeat if core_repeat is not None else (1 if quick else 3),
        runs=runs if runs is not None else (1 if quick else 3),
        floor_inflight=floor_inflight,
        json_path=json_path,
        plot_path=plot,
        py_spy=py_spy,
        keep=keep,
        tls=tls,
        command=["jetbook", *sys.argv[1:]],
    )
    if min(opts.orders, opts.markets, opts.resting, opts.window, opts.runs) < 1:
        typer.echo("error: --orders, --markets, --resting, --window and --runs must be at least 1", err=True)
        raise typer.Exit(2)
    if shards is not None:
        _shards(opts, shards, markets_given="--markets" in sys.argv, runs_given=runs is not None)
    if batch is not None:
        _batch(opts, batch, orders_given="--orders" in sys.argv, runs_given=runs is not None)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finally blocks that stop our children

    signal.signal(signal.SIGTERM, interrupted)
    try:
        doc = run(opts)
    except BenchError as err:
        typer.echo(f"benchmark failed: {err}", err=True)
        raise typer.Exit(1) from err
    except KeyboardInterrupt as err:
        typer.echo(f"interrupted ({err}); the benchmark's processes were stopped", err=True)
        raise typer.Exit(130) from err
    print_report(doc)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        from jetbook.bench.plot import plot as write_plot

        write_plot(doc, plot)
        typer.echo(f"wrote {plot}")
    if py_spy is not None:
        typer.echo(f"py-spy profiles in {py_spy}; summarise with: python -m jetbook.bench.spy {py_spy}/engine.txt")
    raise typer.Exit(1 if doc["problems"] else 0)


def _batch(opts: Any, k: int, *, orders_given: bool, runs_given: bool) -> None:
    """`jetbook bench --batch K`: jetbook/bench/batch.py's comparison, its table, and --json."""
    from jetbook.bench.batch import print_batch_report, run_batch
    from jetbook.bench.procs import BenchError

    if not orders_given:
        opts.orders = 20_000
    if not runs_given:
        opts.runs = 2
    _report(opts, lambda: run_batch(opts, k), print_batch_report, BenchError)


def _shards(opts: Any, spec: str, *, markets_given: bool, runs_given: bool) -> None:
    """`jetbook bench --shards 1,2,4`: jetbook/bench/shards.py's runs, its table, and --json."""
    from jetbook.bench.procs import BenchError
    from jetbook.bench.shards import print_shards_report, run_shards

    if opts.nats_url:
        typer.echo("error: --shards starts its own servers (it needs their mappings and CPU): no --nats-url", err=True)
        raise typer.Exit(2)
    try:
        counts = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        typer.echo(f"error: --shards takes shard counts such as 1,2,4, not {spec!r}", err=True)
        raise typer.Exit(2) from None
    if not markets_given:
        opts.markets = 8
    if not runs_given:
        opts.runs = 2
    _report(opts, lambda: run_shards(opts, counts), print_shards_report, BenchError)


def _report(
    opts: Any, measure: Callable[[], dict[str, Any]], show: Callable[[dict[str, Any]], None], fails: type[Exception]
) -> None:
    """Run one of the bench's own comparisons, print its table, write --json; exit 1 on a failure or a problem."""
    try:
        doc = measure()
    except fails as err:
        typer.echo(f"benchmark failed: {err}", err=True)
        raise typer.Exit(1) from err
    show(doc)
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(doc, indent=1) + "\n")
        typer.echo(f"wrote {opts.json_path}")
    raise typer.Exit(1 if doc.get("problems") else 0)
