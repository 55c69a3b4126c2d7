"""`jetbook bots`: the TUI's bots without a screen, for load and demos (tui/bots.py, docs/BOTS.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Annotated

import typer

from jetbook.settings import log_level


def bots(
    url: Annotated[str, typer.Option(help="The gateway's base URL (HTTP; the WebSocket is its /ws_ctl).")] = (
        "http://127.0.0.1:3000"
    ),
    mm: Annotated[int, typer.Option("--mm", help="Market makers.", min=0, max=100)] = 2,
    noise: Annotated[int, typer.Option("--noise", help="Noise traders.", min=0, max=100)] = 3,
    informed: Annotated[int, typer.Option("--informed", help="Informed traders.", min=0, max=100)] = 1,
    duration: Annotated[float, typer.Option(help="Seconds to trade (0: until Ctrl-C).", min=0)] = 60.0,
    market: Annotated[str | None, typer.Option(help="Trade only this market (default: every open market).")] = None,
    seed: Annotated[int, typer.Option(help="Bot i draws from random.Random(seed + i): runs are reproducible.")] = 1,
    depth: Annotated[int, typer.Option(help="Ladder levels per snapshot.", min=1, max=1000)] = 10,
    no_ack: Annotated[bool, typer.Option("--no-ack", help="Fire and forget (no ack/order_response): throughput.")] = (
        False
    ),
    high_throughput: Annotated[
        bool, typer.Option("--high-throughput", help="Step every 5 ms instead of 200 ms, bigger queues.")
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="JETBOOK_API_KEY", help="An operator key (bots act for their own accounts and set limits)."
        ),
    ] = None,
) -> None:
    """Run market makers, noise and informed traders against a gateway; print each bot's figures at the end."""
    from jetbook.wiring import setup_logging
    from tui.bots import Fleet

    setup_logging(log_level())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per /risk poll is noise
    if mm + noise + informed == 0:
        typer.echo("error: no bots (--mm, --noise, --informed are all 0)", err=True)
        raise typer.Exit(2)
    fleet = Fleet(url, mm=mm, noise=noise, informed=informed, seed=seed, market=market, no_ack=no_ack,
                  high_throughput=high_throughput, api_key=api_key, depth=depth)  # fmt: skip

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if duration > 0:
            loop.call_later(duration, stop.set)
        await fleet.run(stop)

    asyncio.run(main())
    typer.echo(f"{'bot':<14} {'sent':>9} {'trades':>8} {'rejects':>8} {'dropped':>8} {'pnl':>14}")
    for bot in fleet.bots:
        pnl = "-" if bot.pnl is None else str(bot.pnl)
        typer.echo(f"{bot.name:<14} {bot.sent:>9} {bot.trades:>8} {bot.rejects:>8} {bot.dropped:>8} {pnl:>14}")
    sent, trades, rejects, pnl_sum = fleet.totals
    dropped = sum(b.dropped for b in fleet.bots)
    typer.echo(f"{'total':<14} {sent:>9} {trades:>8} {rejects:>8} {dropped:>8} {pnl_sum:>14}")
    typer.echo(f"markets {len(fleet.feeds)}: {' '.join(sorted(fleet.feeds)) or '-'}")


if __name__ == "__main__":  # until `jetbook bots` is registered: python -m jetbook.bots_cli
    typer.run(bots)
