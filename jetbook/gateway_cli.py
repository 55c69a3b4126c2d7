"""`jetbook gateway`: HTTP and WebSocket in front of the exchange (gateway/, docs/GATEWAY.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from jetbook.cli_common import Url
from jetbook.settings import DEFAULT_URL, log_level

ROLE = "gateway"  # the NATS user (jetbook/server.py, deploy/accounts.conf)


def gateway(
    nats_url: Url = DEFAULT_URL,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0: any free one).", min=0, max=65535)] = 3000,
    api_keys: Annotated[
        Path | None,
        typer.Option(
            envvar="JETBOOK_API_KEYS",
            help='JSON key file {"keys": [{"key", "account", "role": trader|operator}]}; without it, development '
            "mode (any caller may act for any account).",
        ),
    ] = None,
    ready_max_lag: Annotated[
        int, typer.Option(help="/ready fails when the read model is more than this many events behind.", min=0)
    ] = 1000,
) -> None:
    """Serve HTTP and WebSocket on 127.0.0.1:3000 (docs/GATEWAY.md) until SIGINT or SIGTERM."""
    from gateway.auth import KeyFileError
    from gateway.serve import GatewayStartError, serve
    from jetbook.wiring import connect, setup_logging

    setup_logging(log_level())

    async def connect_nats() -> Any:
        return await connect(nats_url, "jetbook-gateway", role=ROLE)

    try:
        serve(connect_nats, host, http_port, api_keys, ready_max_lag=ready_max_lag)
    except KeyFileError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    except GatewayStartError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
