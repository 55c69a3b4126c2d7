"""`jetbook tui`: the terminal trading screen (tui/app.py, docs/TUI.md), a client of a gateway's /ws_ctl."""

from __future__ import annotations

from typing import Annotated

import typer

DEFAULT_BOTS = (2, 3, 1)  # market makers, noise traders, informed traders when no count is given (paused until `B`)


def split_bots(total: int) -> tuple[int, int, int]:
    """`--bots N` as kinds: a third market makers (rounded up), a sixth informed, the rest noise (6 -> 2, 3, 1)."""
    mm = -(-total // 3)
    informed = total // 6
    return mm, max(total - mm - informed, 0), informed


def tui(
    url: Annotated[str, typer.Option(help="The gateway's /ws_ctl.")] = "ws://127.0.0.1:3000/ws_ctl?depth=10",
    depth: Annotated[
        int | None, typer.Option(help="Ladder levels a side (overrides the URL's depth).", min=1, max=1000)
    ] = None,
    no_ack: Annotated[bool, typer.Option("--no-ack", help="Throughput mode: no ack/order_response for commands.")] = (
        False
    ),
    high_throughput: Annotated[
        bool, typer.Option("--high-throughput", help="Faster bots and bigger client buffers.")
    ] = False,
    bots: Annotated[
        int | None, typer.Option(help="Start N bots trading at once (a third market makers, a sixth informed).", min=0)
    ] = None,
    mm_bots: Annotated[int | None, typer.Option(help="Market makers (starts the bots at once).", min=0)] = None,
    noise_bots: Annotated[int | None, typer.Option(help="Noise traders (starts the bots at once).", min=0)] = None,
    informed_bots: Annotated[
        int | None, typer.Option(help="Informed traders (starts the bots at once).", min=0)
    ] = None,
    seed: Annotated[int, typer.Option(help="The bots' seed: the same seed and snapshots, the same orders.")] = 1,
    account: Annotated[str, typer.Option(help="The account the user trades as (`a` switches).")] = "me",
    api_key: Annotated[
        str | None, typer.Option(envvar="JETBOOK_API_KEY", help="The gateway's API key (sent as ?api_key=).")
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            help="A /metrics URL besides the gateway's (repeatable); default: the engine's, projection's and query "
            "service's of `jetbook up` (127.0.0.1:9464, 9465, 9467). Missing ones are shown as unavailable."
        ),
    ] = None,
) -> None:
    """A terminal trading screen: markets, ladder, tape, own orders, bots and engine metrics (docs/TUI.md).

    Without any bot flag the bots (2 market makers, 3 noise, 1 informed) wait paused: `B` starts them.
    """
    from tui.app import Options, TradingApp

    kinds = (mm_bots, noise_bots, informed_bots)
    if any(k is not None for k in kinds):
        mm, noise, informed = (k or 0 for k in kinds)
    elif bots is not None:
        mm, noise, informed = split_bots(bots)
    else:
        mm, noise, informed = DEFAULT_BOTS
    start = any(k is not None for k in (*kinds, bots)) and mm + noise + informed > 0
    opts = Options(
        url=url, depth=depth, no_ack=no_ack, high_throughput=high_throughput, account=account, api_key=api_key,
        metrics=list(metrics or []), mm=mm, noise=noise, informed=informed, bots_start=start, seed=seed,
    )  # fmt: skip
    TradingApp(opts).run()
