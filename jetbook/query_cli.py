"""`jetbook query-service` (answer queries on jb.qry.> from a read model) and `jetbook query NAME` (ask one).

Both connect as the `query` user of a locked-down `jetbook up`: the service
answers with it, and the CLI asks with it, so asking needs no more than the
service's own rights (a trader may not ask: the answers hold every account).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from jetbook.cli_common import Url
from jetbook.settings import DEFAULT_URL, log_level
from protocol.subjects import is_id

ROLE = "query"  # the NATS user (jetbook/server.py, deploy/accounts.conf)


async def query_role(
    url: str, db: Path, stop: asyncio.Event, *, metrics_port: int = 0, metrics_host: str = "127.0.0.1"
) -> None:
    """One query service instance until `stop`; run several to share the load (the micro queue group).

    It waits for the venue's streams, to learn how many shards it has (strong reads wait for each shard's tail).
    """
    from jetbook.roles import metrics_served, wait_for_venue
    from jetbook.wiring import close_quietly, connect
    from projections.query_service import QueryService
    from protocol.streams import venue_shards

    nc = await connect(url, "jetbook-query", role=ROLE)
    shards = await wait_for_venue(nc.jetstream(), stop, probe=venue_shards)
    if shards is None:
        await close_quietly(nc)
        return
    service = QueryService(nc, db, shards=shards)
    try:
        with metrics_served("query service", metrics_port, service.metrics.registry, metrics_host):
            await service.run(stop)
    finally:
        await close_quietly(nc)


def query_service(
    nats_url: Url = DEFAULT_URL,
    db: Annotated[Path, typer.Option(help="SQLite file of the read model.")] = Path(".jetbook/read_model.db"),
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus /metrics on this port (0: off).")] = 0,
    metrics_host: Annotated[str, typer.Option(help="Address /metrics listens on.")] = "127.0.0.1",
) -> None:
    """Answer queries on jb.qry.<name> from the read model (a nats.micro service; docs/QUERIES.md)."""
    from jetbook.wiring import run_until_signal, setup_logging

    setup_logging(log_level())
    run_until_signal(lambda stop: query_role(nats_url, db, stop, metrics_port=metrics_port, metrics_host=metrics_host))


def _value(text: str) -> Any:
    """A field's value: JSON when it parses (5, "x", ["open","filled"]), else the text itself (ETH-USDC)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def query(
    name: Annotated[
        str,
        typer.Argument(
            help="top_of_book, snapshot, fills, order_count, orders, order, completed_orders, risk or markets."
        ),
    ],
    fields: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE fields, e.g. market_id=ETH-USDC depth=5.")
    ] = None,
    nats_url: Url = DEFAULT_URL,
    consistency: Annotated[
        str, typer.Option(help="weak (the replica as it is) or strong (sees every command stored before the query).")
    ] = "weak",
    min_seq: Annotated[int, typer.Option(help="Wait until the replica has folded this JB_EVT sequence.")] = 0,
    timeout_ms: Annotated[int, typer.Option(help="How long the service may wait for a position.")] = 5000,
) -> None:
    """Ask the query service once and print its answer as JSON (exit 1 on an error answer)."""
    import nats.errors

    from jetbook.wiring import connect

    if not is_id(name):  # it becomes a subject token: a wildcard, a dot or a space would ask something else
        typer.echo(f"error: {name[:80]!r} is not a query name", err=True)
        raise typer.Exit(2)
    body: dict[str, Any] = {"consistency": consistency, "min_seq": min_seq, "timeout_ms": timeout_ms}
    for item in fields or []:
        key, sep, text = item.partition("=")
        if not sep:
            typer.echo(f"error: {item!r} is not KEY=VALUE", err=True)
            raise typer.Exit(2)
        body[key] = _value(text)

    async def ask() -> dict[str, Any]:
        nc = await connect(nats_url, "jetbook-query-cli", reconnect=False, role=ROLE)
        try:
            msg = await nc.request(
                f"jb.qry.{name}", json.dumps(body).encode(), timeout=timeout_ms / 1000 + 2,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            answer: dict[str, Any] = json.loads(msg.data)
            return answer
        finally:
            await nc.close()

    try:
        answer = asyncio.run(ask())
    except nats.errors.NoRespondersError as err:
        typer.echo(f"error: no query service answers on jb.qry.{name} (is `jetbook query-service` running?)", err=True)
        raise typer.Exit(2) from err
    except (OSError, nats.errors.Error, TimeoutError) as err:
        typer.echo(f"error: {type(err).__name__}: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(json.dumps(answer, indent=2))
    raise typer.Exit(1 if "error" in answer else 0)
