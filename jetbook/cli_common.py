"""What every `jetbook` sub-command that talks to NATS shares: the --nats-url option and one way to run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer


def check_nats_url(value: str | None) -> str | None:
    """A --nats-url (or JETBOOK_NATS_URL) that parses, each of its comma-separated servers; else a usage error.

    The URL is parsed deep inside the connect (the login, nats-py's server pool), where a malformed one
    ('nats://[::1', a port that is not a number) raised ValueError and every command died with a traceback.
    """
    from urllib.parse import urlsplit

    for part in (value or "").split(","):
        try:
            if urlsplit(part.strip()).port == 0:  # the port is parsed lazily: a bad one raises only here
                raise ValueError("port 0")
        except ValueError as err:
            raise typer.BadParameter(f"{part.strip()[:100]!r} is not a NATS URL ({err})") from err
    return value


Url = Annotated[
    str,
    typer.Option(
        "--nats-url",
        callback=check_nats_url,
        envvar="JETBOOK_NATS_URL",
        help="NATS server URL (nats:// or tls://); several, comma-separated, for a cluster; user:password@ for "
        "auth [default user: the role's, from the credentials file of the `jetbook up` at this address].",
    ),
]
Market = Annotated[str, typer.Option("--market", "-m", help="Market id.")]
Account = Annotated[str, typer.Option("--account", "-a", help="Account id (the last subject token).")]


class _Unreachable(Exception):
    pass


class _Refused(Exception):
    pass


def client_call(url: str, body: Callable[[Any], Awaitable[int]], name: str = "jetbook-cli") -> None:
    """Connect once, run body(js), exit with its status; what stops it from running at all is one clear line."""
    from nats.errors import ConnectionClosedError, NoServersError, UnexpectedEOF
    from nats.errors import Error as NatsError

    from jetbook.wiring import REFUSALS, connect
    from protocol.errors import JetbookError

    refusals: list[str] = []

    async def main() -> int:
        try:
            nc = await connect(url, name, reconnect=False)
        except (OSError, NoServersError) as err:
            raise _Unreachable(str(err)) from err
        except NatsError as err:
            if "authorization" in str(err).lower():
                raise _Refused(str(err)) from err
            raise
        try:
            return await body(nc.jetstream())
        finally:
            refusals.extend(REFUSALS.get(nc, []))
            await nc.close()

    try:
        code = asyncio.run(main())
    except _Unreachable as err:
        typer.echo(f"error: cannot reach NATS at {url}: {err}", err=True)
        raise typer.Exit(2) from err
    except _Refused as err:
        typer.echo(
            f"error: NATS at {url} refused the login ({err}). A locked-down `jetbook up` keeps its users in "
            "<data dir>/credentials.json: pass --credentials FILE, or --nats-user/--nats-password, before the "
            "sub-command (or JETBOOK_CREDENTIALS, JETBOOK_NATS_USER/JETBOOK_NATS_PASSWORD).",
            err=True,
        )
        raise typer.Exit(2) from err
    except TimeoutError as err:
        if refusals:  # the server refused what we asked, and said so only on the side
            typer.echo(f"error: refused by the server: {refusals[0]}. This user may not do that.", err=True)
        else:
            typer.echo(f"error: {err}. Is the engine running (`jetbook up` or `jetbook engine`)?", err=True)
        raise typer.Exit(2) from err
    except (ConnectionClosedError, UnexpectedEOF) as err:
        typer.echo(f"error: lost the connection to NATS at {url} ({type(err).__name__}); run it again", err=True)
        raise typer.Exit(2) from err
    except JetbookError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    raise typer.Exit(code)
