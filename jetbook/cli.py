"""The `jetbook` command. Each sub-command is a thin call into a role, a client or a read model."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer

from jetbook.bots_cli import bots as bots_command
from jetbook.cli_common import Market, Url, check_nats_url, client_call
from jetbook.gateway_cli import gateway as gateway_command
from jetbook.query_cli import query as query_command
from jetbook.query_cli import query_service as query_service_command
from jetbook.replay_cli import replay_app
from jetbook.settings import DEFAULT_URL, log_level
from jetbook.status_cli import status as status_command
from jetbook.submit_cli import fills as fills_command
from jetbook.submit_cli import submit_app
from jetbook.tui_cli import tui as tui_command

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="jetbook: an event-sourced exchange on NATS JetStream."
)


@app.callback()
def connection(
    nats_user: Annotated[
        str | None, typer.Option(envvar="JETBOOK_NATS_USER", help="NATS user (default: from the credentials file).")
    ] = None,
    nats_password: Annotated[str | None, typer.Option(envvar="JETBOOK_NATS_PASSWORD", help="Its password.")] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            envvar="JETBOOK_CREDENTIALS",
            help="A credentials.json written by `jetbook up` [default: the one of the stack at --nats-url].",
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(envvar="JETBOOK_TLS_CA", help="CA bundle to verify the server (tls:// URLs).")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(envvar="JETBOOK_TLS_CERT", help="Client certificate, if the server asks for one.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(envvar="JETBOOK_TLS_KEY", help="Its private key.")] = None,
) -> None:
    """Who every sub-command connects as, and over what. Given before the sub-command: `jetbook --tls-ca ca.pem demo`.

    They go into the environment, where jetbook.wiring.connect reads them, so
    the engine, projection and bench processes a command starts inherit them.
    """
    import os

    for var, value in (
        ("JETBOOK_NATS_USER", nats_user), ("JETBOOK_NATS_PASSWORD", nats_password),
        ("JETBOOK_CREDENTIALS", credentials), ("JETBOOK_TLS_CA", tls_ca),
        ("JETBOOK_TLS_CERT", tls_cert), ("JETBOOK_TLS_KEY", tls_key),
    ):  # fmt: skip
        if value is not None:
            os.environ[var] = str(value)


app.add_typer(submit_app, name="submit")
app.add_typer(replay_app, name="replay")

MaybeUrl = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        callback=check_nats_url,
        envvar="JETBOOK_NATS_URL",
        help="Use this server instead of starting one.",
    ),
]
Replicas = Annotated[int, typer.Option(envvar="JETBOOK_REPLICAS", help="Stream replicas (3 on a cluster).")]
MetricsPort = Annotated[int, typer.Option(help="Serve Prometheus /metrics on this port (0: off; docs/METRICS.md).")]
MetricsHost = Annotated[str, typer.Option(help="Address /metrics listens on.")]


@app.command()
def up(
    data_dir: Annotated[
        Path, typer.Option(envvar="JETBOOK_DATA_DIR", help="Where the server store and read model live.")
    ] = Path(".jetbook"),
    nats_url: MaybeUrl = None,
    port: Annotated[int, typer.Option(envvar="JETBOOK_PORT", help="Embedded server port (0 = any free port).")] = 4222,
    replicas: Replicas = 1,
    insecure: Annotated[
        bool, typer.Option(help="An open embedded server: no users, anyone may do anything. For experiments.")
    ] = False,
    trader: Annotated[
        list[str] | None,
        typer.Option(help="A trader user for this account (repeat) [default: alice, bob, carol, dave]."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", envvar="JETBOOK_UP_TLS_CERT", help="Server certificate: TLS for every client."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", envvar="JETBOOK_UP_TLS_KEY", help="The server certificate's key.")
    ] = None,
    http_port: Annotated[int, typer.Option(help="The gateway's HTTP and WebSocket port, on 127.0.0.1.")] = 3000,
    no_http: Annotated[bool, typer.Option("--no-http", help="Do not start the gateway.")] = False,
    api_keys: Annotated[
        Path | None, typer.Option(help="The gateway's API keys file (without it: local development mode).")
    ] = None,
    metrics_port_base: Annotated[
        int,
        typer.Option(help="/metrics of engine, projection, fan-out, query service on this port and the next 3."),
    ] = 9464,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Serve no /metrics (the gateway's stays).")] = False,
    shards: Annotated[
        int, typer.Option(help="Market shards: one engine and one pair of streams each. Fixed when the venue is made.")
    ] = 1,
) -> None:
    """Start nats-server (embedded, unless --nats-url), the engine, a projection worker, the fan-out worker, the
    query service and the HTTP gateway.

    The embedded server is locked down: a user per role and per trader, passwords in
    <data dir>/credentials.json (0600). With --tls-cert its clients need `jetbook --tls-ca CA ...`.
    """
    from jetbook.settings import DEFAULT_TRADERS, valid_trader
    from jetbook.up import up as run_up
    from protocol.errors import JetbookError
    from protocol.shards import MAX_SHARDS
    from protocol.streams import ShardsMismatch

    if not 1 <= shards <= MAX_SHARDS:
        typer.echo(f"error: --shards must be 1..{MAX_SHARDS}", err=True)
        raise typer.Exit(2)
    traders = list(DEFAULT_TRADERS) if trader is None else trader
    if bad := [t for t in traders if not valid_trader(t)]:
        typer.echo(f"error: not a trader account name (one subject token, not a role name): {bad}", err=True)
        raise typer.Exit(2)
    try:
        run_up(
            data_dir, nats_url, port, replicas,
            insecure=insecure, traders=traders, tls_cert=tls_cert, tls_key=tls_key,
            http_port=None if no_http else http_port, api_keys=api_keys,
            metrics_port_base=None if no_metrics else metrics_port_base, shards=shards,
        )  # fmt: skip
    except ShardsMismatch as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except JetbookError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


@app.command()
def engine(
    nats_url: Url = DEFAULT_URL,
    replicas: Replicas = 1,
    snapshot_every: Annotated[
        int, typer.Option(help="Write a snapshot to the JB_SNAP object store every N events (0: never).")
    ] = 100_000,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            help="A checkpoint event every N events. Part of the log's bytes: keep it for the log's life, "
            "and give `replay verify` the same value."
        ),
    ] = 100_000,
    lease_ttl: Annotated[
        float, typer.Option(help="Writer lease TTL, s: a standby takes over about this long after the active dies.")
    ] = 1.0,
    metrics_port: MetricsPort = 0,
    metrics_host: MetricsHost = "127.0.0.1",
    shard: Annotated[int, typer.Option(help="The market shard this engine decides (0..shards-1).")] = 0,
    shards: Annotated[
        int, typer.Option(help="How many market shards the venue has: fixed when its streams are created.")
    ] = 1,
    standby: Annotated[
        bool, typer.Option("--standby", help="Wait until another engine holds this shard's lease, then follow it.")
    ] = False,
) -> None:
    """Run the matching engine: JB_CMD in, JB_EVT out (shard K's JB_CMD_K and JB_EVT_K with --shards N > 1).
    Started twice, the second one is a hot standby."""
    from functools import partial

    from jetbook.roles import engine_role
    from jetbook.wiring import run_until_signal, setup_logging
    from protocol.errors import Fenced, JetbookError
    from protocol.shards import MAX_SHARDS

    if not 1 <= shards <= MAX_SHARDS or not 0 <= shard < shards:
        typer.echo(f"error: --shard must be 0..{shards - 1} and --shards 1..{MAX_SHARDS}", err=True)
        raise typer.Exit(2)
    setup_logging(log_level())
    try:
        role = partial(
            engine_role, snapshot_every=snapshot_every, checkpoint_every=checkpoint_every, lease_ttl=lease_ttl,
            metrics_port=metrics_port, metrics_host=metrics_host, shard=shard, shards=shards, standby=standby,
        )  # fmt: skip
        run_until_signal(lambda stop: role(nats_url, stop, replicas))
    except Fenced as err:
        typer.echo(f"engine fenced off: {err}", err=True)
        raise typer.Exit(3) from err
    except JetbookError as err:
        typer.echo(f"engine stopped: {err}", err=True)
        raise typer.Exit(4) from err


@app.command()
def project(
    nats_url: Url = DEFAULT_URL,
    db: Annotated[Path, typer.Option(help="SQLite file of the read model.")] = Path(".jetbook/read_model.db"),
    from_seq: Annotated[int | None, typer.Option(help="JB_EVT sequence to start at, for a new file.")] = None,
    metrics_port: MetricsPort = 0,
    metrics_host: MetricsHost = "127.0.0.1",
    shards: Annotated[
        int | None, typer.Option(help="Shards the venue has (default: what its streams were created with).")
    ] = None,
) -> None:
    """Run a projection worker: fold JB_EVT (every shard's JB_EVT_k) into an SQLite read model."""
    from jetbook.roles import project_role
    from jetbook.wiring import run_until_signal, setup_logging
    from protocol.errors import JetbookError

    setup_logging(log_level())
    try:
        run_until_signal(
            lambda stop: project_role(
                nats_url, db, stop, from_seq, metrics_port=metrics_port, metrics_host=metrics_host, shards=shards
            )
        )
    except (JetbookError, ValueError) as err:
        typer.echo(f"projection stopped: {err}", err=True)
        raise typer.Exit(4) from err


@app.command()
def fanout(
    nats_url: Url = DEFAULT_URL,
    replicas: Replicas = 1,
    metrics_port: MetricsPort = 0,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Run the fan-out worker: JB_EVT into each account's private feed (JB_ACCT) and the public tape (JB_TAPE)."""
    from jetbook.roles import fanout_role
    from jetbook.wiring import run_until_signal, setup_logging
    from protocol.errors import JetbookError

    setup_logging(log_level())
    try:
        run_until_signal(
            lambda stop: fanout_role(nats_url, stop, replicas, metrics_port=metrics_port, metrics_host=metrics_host)
        )
    except JetbookError as err:
        typer.echo(f"fan-out stopped: {err}", err=True)
        raise typer.Exit(4) from err


from jetbook.bench.cli import bench as bench_command  # noqa: E402  (its heavy imports load when it runs)

app.command("bench")(bench_command)


@app.command()
def demo(nats_url: Url = DEFAULT_URL, market: Market = "ETH-USDC") -> None:
    """Run the order-book reference scenario against a running stack."""
    from jetbook.demo import run_demo

    async def body(js: Any) -> int:
        await run_demo(js, market)
        return 0

    client_call(nats_url, body)


app.command("fills")(fills_command)
app.command("query-service")(query_service_command)
app.command("query")(query_command)
app.command("gateway")(gateway_command)
app.command("tui")(tui_command)
app.command("bots")(bots_command)
app.command("status")(status_command)


@app.command()
def book(
    market: Market,
    db: Annotated[Path, typer.Option(help="SQLite file of the read model.")] = Path(".jetbook/read_model.db"),
    depth: int = 10,
    runner: Annotated[str | None, typer.Option(help="Odds markets: one runner; all if absent.")] = None,
) -> None:
    """Print a market's book from the read model (what the projection has folded so far)."""
    from projections import queries

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        queries.position(con)
    except sqlite3.Error as err:
        typer.echo(f"error: no read model at {db} ({err}); is `jetbook up` or `jetbook project` running?", err=True)
        raise typer.Exit(2) from err
    with queries.reading(con):  # the book and the positions it reflects, from one commit
        streams = queries.stream_positions(con)
        snap = queries.snapshot(con, market, depth, runner)
    # One stream: its sequence; a sharded venue's file: the position of each shard stream it has folded from.
    if set(streams) <= {"JB_EVT"}:
        at = f"JB_EVT seq {streams.get('JB_EVT', 0)}"
    else:
        at = ", ".join(f"{stream} {seq}" for stream, seq in streams.items())
    if snap is None:
        typer.echo(f"{market}: no such market at {at}")
        raise typer.Exit(1)
    m = snap["market"]
    typer.echo(f"{market} ({m['kind']}, {m['state']}, {m['phase']}) at {at}")
    for ladder in snap["ladders"]:
        if ladder["runner"]:
            typer.echo(f" {ladder['runner']} ({ladder['label']})")
        for level in reversed(ladder["asks"]):
            typer.echo(f"  {ladder['ask_side']:<4} {level['price']:>12} {level['qty']:>10}  ({level['orders']} orders)")
        for level in ladder["bids"]:
            typer.echo(f"  {ladder['bid_side']:<4} {level['price']:>12} {level['qty']:>10}  ({level['orders']} orders)")
