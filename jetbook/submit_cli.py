"""`jetbook submit ...`: publish one command and print the events it caused.

Every sub-command builds the command, encodes it exactly as it will be sent,
and runs the engine's own `parse` on those bytes first: a command the engine
would reject for its shape is refused here, before connecting, with the same
reason code, and there is no second copy of the validation rules.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from jetbook.cli_common import Account, Market, Url, client_call
from jetbook.settings import DEFAULT_URL

submit_app = typer.Typer(no_args_is_help=True, help="Publish one command and print the events it caused.")

Wait = Annotated[bool, typer.Option(help="Wait for and print the events the command caused.")]
OrderId = Annotated[int | None, typer.Option(help="Engine-assigned order id.")]
ClientOrderId = Annotated[str | None, typer.Option(help="Your id for the order.")]
Runner = Annotated[str | None, typer.Option(help="Runner id (odds markets).")]


def _print_outcome(events: list[Any]) -> int:
    from events.model import Rejected, to_wire

    for event in events:
        typer.echo(json.dumps(to_wire(event)))
    return 1 if any(isinstance(e, Rejected) for e in events) else 0


def _send(url: str, market: str, account: str | None, command: Any, wait: bool) -> None:
    """Check the command with the engine's parser, publish it, and (with wait) print its events."""
    from commands.client import CommandClient
    from commands.model import Invalid, encode, parse
    from commands.subjects import cmd_subject, ctl_subject
    from events.watch import EventWatcher, past_events

    subject = ctl_subject(market) if account is None else cmd_subject(market, account)
    parsed = parse(subject, encode(command))
    if isinstance(parsed, Invalid):
        typer.echo(f"error: invalid command: {parsed.reason} ({parsed.detail})", err=True)
        raise typer.Exit(2)

    async def body(js: Any) -> int:
        client = CommandClient(js)

        async def send() -> int:
            if account is None:
                return await client.control(market, command)
            return await client.trade(market, account, command)

        if not wait:
            typer.echo(f"cmd_seq {await send()}")
            return 0
        async with EventWatcher(js) as watcher:
            seq = await send()
            typer.echo(f"cmd_seq {seq}", err=True)
            if client.last_was_duplicate:
                # The broker kept the first copy (same msg id within 120 s); its events may be long out.
                typer.echo(f"duplicate of cmd_seq {seq}: showing the original's events", err=True)
                past = await past_events(js, seq)
                if past:
                    return _print_outcome(past)
            return _print_outcome((await watcher.wait([seq], timeout=10))[seq])

    client_call(url, body)


@submit_app.command("create-market")
def create_market(
    market: Market,
    base: str = "BASE",
    quote: str = "QUOTE",
    kind: Annotated[str, typer.Option(help="pair, or odds (a betting market with runners).")] = "pair",
    tick_size: int = 1,
    lot_size: int = 1,
    min_qty: int | None = None,
    max_qty: int | None = None,
    min_price: int | None = None,
    max_price: int | None = None,
    band_bps: Annotated[int, typer.Option(help="Refuse prices this far (bps) from the last trade; 0: off.")] = 0,
    runner: Annotated[list[str] | None, typer.Option(help="Odds markets: id=Label, repeat per runner.")] = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Create a pair or odds market (control subject jb.ctl.<market>)."""
    from commands.model import MAX_QTY, CreateMarket

    runners = None
    if runner:
        runners = [list(r.split("=", 1)) if "=" in r else [r, r] for r in runner]
    command = CreateMarket(
        market_id=market, base=base if kind == "pair" else "", quote=quote, kind=kind, tick_size=tick_size,
        lot_size=lot_size, min_qty=min_qty, max_qty=max_qty or MAX_QTY, min_price=min_price, max_price=max_price,
        band_bps=band_bps, runners=runners,
    )  # fmt: skip
    _send(nats_url, market, None, command, wait)


@submit_app.command("add-runner")
def add_runner(market: Market, runner_id: str, label: str, nats_url: Url = DEFAULT_URL, wait: Wait = True) -> None:
    """Add a runner to an odds market."""
    from commands.model import AddRunner

    _send(nats_url, market, None, AddRunner(runner_id=runner_id, label=label), wait)


@submit_app.command("market-state")
def market_state(
    market: Market,
    to: Annotated[
        str,
        typer.Argument(help="open | suspended | halted | await-live | go-live | close | void"),
    ],
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Move a market through its lifecycle."""
    from commands.model import AwaitLive, CloseMarket, GoLive, SetMarketState, VoidMarket

    commands: dict[str, Any] = {
        "await-live": AwaitLive(), "go-live": GoLive(), "close": CloseMarket(), "void": VoidMarket(),
    }  # fmt: skip
    command = commands.get(to) or SetMarketState(state=to)
    _send(nats_url, market, None, command, wait)


@submit_app.command("settle")
def settle(
    market: Market,
    price: Annotated[int | None, typer.Option(help="Pair markets: the settlement price.")] = None,
    winner: Annotated[str | None, typer.Option(help="Odds markets: the winning runner.")] = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Settle a closed market; prints realised P&L per account."""
    from commands.model import SettleMarket

    _send(nats_url, market, None, SettleMarket(winner=winner, price=price), wait)


@submit_app.command("risk-limits")
def risk_limits(
    market: Market,
    account: Account,
    max_order_qty: int | None = None,
    max_open_orders: int | None = None,
    max_open_exposure: Annotated[int | None, typer.Option(help="Notional (pairs) or liability x100 (odds).")] = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Set (replace) an account's limits in a market; an absent limit means none."""
    from commands.model import SetRiskLimits

    command = SetRiskLimits(
        account_id=account, max_order_qty=max_order_qty, max_open_orders=max_open_orders,
        max_open_exposure=max_open_exposure,
    )  # fmt: skip
    _send(nats_url, market, None, command, wait)


@submit_app.command("place")
def place(
    market: Market,
    account: Account,
    side: Annotated[str, typer.Option(help="buy or sell; back or lay in odds markets")],
    qty: Annotated[int, typer.Option(help="Quantity in lots (stake in odds markets).")],
    price: Annotated[int | None, typer.Option(help="Limit price in ticks (odds x 100).")] = None,
    client_order_id: Annotated[str | None, typer.Option(help="Your id for the order; generated if absent.")] = None,
    order_type: Annotated[str, typer.Option(help="limit or market")] = "limit",
    protection_price: Annotated[int | None, typer.Option(help="Market orders: worst price to take.")] = None,
    tif: Annotated[str | None, typer.Option(help="gtc | ioc | fok | post_only")] = None,
    stp: Annotated[str | None, typer.Option(help="cancel_resting | cancel_newest | cancel_both")] = None,
    persistence: Annotated[str | None, typer.Option(help="lapse | persist (at going in play)")] = None,
    runner: Runner = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Place an order."""
    from nats.nuid import NUID

    from commands.model import PlaceOrder

    command = PlaceOrder(
        client_order_id=client_order_id or f"cli-{NUID().next().decode()}", side=side, qty=qty, price=price,
        order_type=order_type, protection_price=protection_price, tif=tif, stp=stp or "cancel_resting",
        persistence=persistence or "lapse", runner=runner,
    )  # fmt: skip
    _send(nats_url, market, account, command, wait)


@submit_app.command("amend")
def amend(
    market: Market,
    account: Account,
    order_id: OrderId = None,
    client_order_id: ClientOrderId = None,
    qty: Annotated[int | None, typer.Option(help="The new open quantity.")] = None,
    price: Annotated[int | None, typer.Option(help="The new limit price.")] = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Amend an open order: a smaller qty keeps its place in the queue; a new price or larger qty does not."""
    from commands.model import AmendOrder

    command = AmendOrder(order_id=order_id, client_order_id=client_order_id, qty=qty, price=price)
    _send(nats_url, market, account, command, wait)


@submit_app.command("cancel")
def cancel(
    market: Market,
    account: Account,
    order_id: OrderId = None,
    client_order_id: ClientOrderId = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Cancel an order by order_id or client_order_id."""
    from commands.model import CancelOrder

    _send(nats_url, market, account, CancelOrder(order_id=order_id, client_order_id=client_order_id), wait)


@submit_app.command("cancel-all")
def cancel_all(
    account: Account,
    market: Annotated[str | None, typer.Option("--market", "-m", help="One market; every market if absent.")] = None,
    side: str | None = None,
    runner: Runner = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Cancel all of an account's open orders, optionally in one market, on one side or one runner."""
    from commands.model import CancelAll
    from commands.subjects import ALL_MARKETS

    _send(nats_url, market or ALL_MARKETS, account, CancelAll(side=side, runner=runner), wait)
