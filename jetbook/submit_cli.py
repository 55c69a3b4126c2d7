"""`jetbook submit ...`: publish one command and print the events it caused.

Every sub-command builds the command, encodes it exactly as it will be sent,
and runs the engine's own `parse` on those bytes first: a command the engine
would reject for its shape is refused here, before connecting, with the same
reason code, and there is no second copy of the validation rules.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

import typer

from jetbook.cli_common import Account, Market, Url, client_call
from jetbook.settings import DEFAULT_URL
from protocol.vocab import BookType, MarketKind, OrderType, Persistence, SettableState, Side, Stp, Tif

submit_app = typer.Typer(no_args_is_help=True, help="Publish one command and print the events it caused.")

Wait = Annotated[bool, typer.Option(help="Wait for and print the events the command caused.")]
OrderId = Annotated[int | None, typer.Option(help="Engine-assigned order id.")]
ClientOrderId = Annotated[str | None, typer.Option(help="Your id for the order.")]
Runner = Annotated[str | None, typer.Option(help="Runner id (odds markets).")]
MsgId = Annotated[
    str | None,
    typer.Option(help="Retry: the msg id an earlier attempt printed (stored at most once); a new random id if absent."),
]


def _print_outcome(events: list[Any]) -> int:
    from events.model import Rejected, to_wire

    for event in events:
        typer.echo(json.dumps(to_wire(event)))
    return 1 if any(isinstance(e, Rejected) for e in events) else 0


def _send(url: str, market: str, account: str | None, command: Any, wait: bool, msg_id: str | None = None) -> None:
    """Check the command with the engine's parser, publish it, and (with wait) print its events.

    The msg id is random (commands.client.new_msg_id) and printed, so that a run whose ack was lost can be
    repeated with `--msg-id` and is then stored once.
    """
    from commands.client import CommandClient, new_msg_id
    from commands.model import Invalid, encode, parse
    from events.watch import EventWatcher, past_events
    from protocol.streams import market_evt_stream
    from protocol.subjects import cmd_subject, ctl_subject

    subject = ctl_subject(market) if account is None else cmd_subject(market, account)
    parsed = parse(subject, encode(command))
    if isinstance(parsed, Invalid):
        typer.echo(f"error: invalid command: {parsed.reason} ({parsed.detail})", err=True)
        raise typer.Exit(2)

    request_id = msg_id or new_msg_id()

    async def body(js: Any) -> int:
        client = CommandClient(js)
        typer.echo(f"msg_id {request_id}", err=True)

        async def send() -> int:
            if account is None:
                return await client.control(market, command, request_id)
            return await client.trade(market, account, command, request_id)

        if not wait:
            typer.echo(f"cmd_seq {await send()}")
            return 0
        stream = await market_evt_stream(js, market)
        async with EventWatcher(js, stream) as watcher:
            seq = await send()
            typer.echo(f"cmd_seq {seq}", err=True)
            if client.last_was_duplicate:
                # The broker kept the first copy (same msg id within 120 s); its events may be long out.
                typer.echo(f"duplicate of cmd_seq {seq}: showing the original's events", err=True)
                past = await past_events(js, seq, stream)
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
    book_type: Annotated[
        str,
        typer.Option(help="Odds markets: multi_runner (direct matching) or two_runner (implied matching, 2 runners)."),
    ] = "multi_runner",
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Create a pair or odds market (control subject jb.ctl.<market>)."""
    from commands.model import MAX_QTY, CreateMarket

    runners = None
    if runner:
        runners = [list(r.split("=", 1)) if "=" in r else [r, r] for r in runner]
    command = CreateMarket(
        market_id=market, base=base if kind == "pair" else "", quote=quote, kind=cast(MarketKind, kind),
        tick_size=tick_size,
        lot_size=lot_size, min_qty=min_qty, max_qty=max_qty or MAX_QTY, min_price=min_price, max_price=max_price,
        band_bps=band_bps, runners=runners, book_type=cast(BookType, book_type),
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
    command = commands.get(to) or SetMarketState(state=cast(SettableState, to))  # parse checks it before sending
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
    msg_id: MsgId = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Place an order."""
    from nats.nuid import NUID

    from commands.model import PlaceOrder

    # The option values are plain strings here; _send checks the whole command with the engine's own parse
    # before connecting, so the casts only carry them to that check.
    command = PlaceOrder(
        client_order_id=client_order_id or f"cli-{NUID().next().decode()}", side=cast(Side, side), qty=qty,
        price=price, order_type=cast(OrderType, order_type), protection_price=protection_price,
        tif=cast(Tif | None, tif), stp=cast(Stp, stp or "cancel_resting"),
        persistence=cast(Persistence, persistence or "lapse"), runner=runner,
    )  # fmt: skip
    _send(nats_url, market, account, command, wait, msg_id)


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
    from protocol.subjects import ALL_MARKETS

    _send(nats_url, market or ALL_MARKETS, account, CancelAll(side=side, runner=runner), wait)


# A batch's file is read whole: a JSON form of 200 instructions is far below this, and the command itself is
# bounded by JB_CMD's 64 KiB message size.
MAX_BATCH_FILE = 1 << 20
FromFile = Annotated[
    str,
    typer.Option("--from-file", "-f", help="A JSON list of instruction maps, or JSON lines (one a line); - is stdin."),
]


def _read_instructions(path: str) -> list[Any]:
    """The instructions in a file, or exit 2 with why: a file from anywhere must not take the CLI down."""
    import sys

    try:
        if path == "-":
            text = sys.stdin.read(MAX_BATCH_FILE + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_BATCH_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        typer.echo(f"error: cannot read {path}: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from None
    if len(text) > MAX_BATCH_FILE:
        typer.echo(f"error: {path} is over {MAX_BATCH_FILE} characters", err=True)
        raise typer.Exit(2)
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            items = json.loads(text)
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError) as exc:
        typer.echo(f"error: {path} is neither a JSON list nor JSON lines: {str(exc)[:200]}", err=True)
        raise typer.Exit(2) from None
    if not isinstance(items, list):
        typer.echo(f"error: {path}: expected a list of instructions", err=True)
        raise typer.Exit(2)
    return items


def _send_batch(
    url: str, market: str, account: str, ctype: str, path: str, wait: bool, msg_id: str | None, **extra: Any
) -> None:
    """Read, check with the engine's parse (the whole command and every instruction), then send as one command."""
    import msgpack

    from commands.model import Invalid, parse
    from protocol.subjects import cmd_subject

    body = {"type": ctype, "instructions": _read_instructions(path), **extra}
    try:
        data = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an int past 64 bits
        typer.echo(f"error: invalid command: {type(exc).__name__}: {str(exc)[:200]}", err=True)
        raise typer.Exit(2) from None
    parsed = parse(cmd_subject(market, account), data)
    if isinstance(parsed, Invalid):
        typer.echo(f"error: invalid command: {parsed.reason} ({parsed.detail})", err=True)
        raise typer.Exit(2)
    bad = [(i, x) for i, x in enumerate(getattr(parsed.command, "instructions", [])) if isinstance(x, Invalid)]
    for i, x in bad:
        typer.echo(f"error: instruction {i}: {x.reason} ({x.detail})", err=True)
    if bad:
        raise typer.Exit(2)
    _send(url, market, account, parsed.command, wait, msg_id)


@submit_app.command("place-orders")
def place_orders(
    market: Market,
    account: Account,
    from_file: FromFile,
    all_or_none: Annotated[
        bool, typer.Option(help="Refuse every instruction if any would be refused (nothing happens).")
    ] = False,
    msg_id: MsgId = None,
    nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:
    """Place up to 200 orders as one command: each instruction is a place_order without "type".

    Sent compact (v1.3): each run of orders that rest untouched comes back as one orders_accepted.
    """
    extra = {"all_or_none": True} if all_or_none else {}
    _send_batch(nats_url, market, account, "place_orders", from_file, wait, msg_id, compact=True, **extra)


@submit_app.command("cancel-orders")
def cancel_orders(
    market: Market, account: Account, from_file: FromFile, msg_id: MsgId = None, nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:  # fmt: skip
    """Cancel up to 200 orders as one command: each instruction has an order_id and/or a client_order_id.

    Sent compact (v1.3): each run of successful cancels comes back as one orders_cancelled (reason user).
    """
    _send_batch(nats_url, market, account, "cancel_orders", from_file, wait, msg_id, compact=True)


@submit_app.command("replace-orders")
def replace_orders(
    market: Market, account: Account, from_file: FromFile, msg_id: MsgId = None, nats_url: Url = DEFAULT_URL,
    wait: Wait = True,
) -> None:  # fmt: skip
    """Amend up to 200 orders as one command: each instruction has an id and a price and/or qty."""
    _send_batch(nats_url, market, account, "replace_orders", from_file, wait, msg_id)


def fills(
    account: Annotated[
        str | None, typer.Option("--account", "-a", help="Your account's own fills, from JB_ACCT.")
    ] = None,
    tape: Annotated[bool, typer.Option("--tape", help="The public trade feed (JB_TAPE): no accounts, no ids.")] = False,
    market: Annotated[str | None, typer.Option("--market", "-m", help="One market; all if absent.")] = None,
    from_seq: Annotated[
        int, typer.Option(help="Sequence to start at: of JB_ACCT with --account, JB_TAPE with --tape, else JB_EVT.")
    ] = 1,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new fills.")] = False,
    all_events: Annotated[
        bool, typer.Option("--all", help="With --account: every event of the account (orders, cancels, rejects).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    nats_url: Url = DEFAULT_URL,
) -> None:
    """Print fills from any sequence, then live with --follow: your own (--account), the public tape (--tape),
    or, for operators allowed to read JB_EVT, every fill with both sides.

    Not registered here: jetbook/cli.py's `fills` command calls this (`app.command()(submit_cli.fills)`).
    """
    import sys

    from events.fills import fills as log_fills
    from events.model import Fill, to_wire
    from events.private import account_events
    from events.private import tape as tape_feed

    if account is not None and tape:
        typer.echo("error: --account or --tape, not both", err=True)
        raise typer.Exit(2)

    def show(seq: int, body: dict[str, Any], line: str) -> None:
        typer.echo(json.dumps({"seq": seq, **body}) if as_json else line)
        sys.stdout.flush()

    def traded(f: dict[str, Any]) -> str:
        """`qty @ price`; an implied fill (two_runner) names both runners, as its price is the maker's odds."""
        if f.get("implied"):
            return f"{f['qty']} on {f['runner']} implied via {f['maker_runner']} @ {f['price']}"
        return f"{f['qty']} @ {f['price']}"

    async def body(js: Any) -> int:
        if tape:
            async for seq, t in tape_feed(js._nc, market_id=market, from_seq=from_seq, follow=follow):
                show(seq, t, f"{seq:>8}  {t['market_id']}  trade {t['trade_id']}  {traded(t)}  "
                             f"taker {t['taker_side']}  (JB_EVT {t['evt_seq']})")  # fmt: skip
        elif account is not None:
            events = account_events(js._nc, account, market_id=market, from_seq=from_seq, follow=follow)
            async for seq, evt_seq, event in events:
                if isinstance(event, Fill):
                    mine = "maker" if event.maker_account == account else "taker"
                    coid = event.maker_client_order_id if mine == "maker" else event.taker_client_order_id
                    oid = event.maker_order_id if mine == "maker" else event.taker_order_id
                    show(seq, {"evt_seq": evt_seq, **to_wire(event)},
                         f"{seq:>8}  {event.market_id}  trade {event.trade_id}  {traded(to_wire(event))}  "
                         f"{mine} #{oid} ({coid})  taker {event.taker_side}  (JB_EVT {evt_seq})")  # fmt: skip
                elif all_events:
                    show(seq, {"evt_seq": evt_seq, **to_wire(event)}, f"{seq:>8}  {json.dumps(to_wire(event))}")
        else:
            from protocol.shards import evt_stream_name, partition
            from protocol.streams import venue_shards

            # A sharded venue: a market's fills are in its shard's JB_EVT_k; all markets, shard after shard.
            shards = await venue_shards(js) or 1
            if shards > 1 and market is None and follow:
                typer.echo("error: with market shards, --follow needs --market (or use --tape)", err=True)
                return 2
            which = range(shards) if market is None else [partition(market, shards)]
            for k in which:
                stream = evt_stream_name(k, shards)
                extra = {} if shards == 1 else {"evt_stream": stream}
                async for seq, f in log_fills(js, market, from_seq, follow, stream):
                    show(seq, {**to_wire(f), **extra},
                         f"{seq:>8}  {f.market_id}  trade {f.trade_id}  {traded(to_wire(f))}  "
                         f"taker {f.taker_account} {f.taker_side} #{f.taker_order_id}  "
                         f"maker {f.maker_account} #{f.maker_order_id}")  # fmt: skip
        return 0

    try:
        client_call(nats_url, body)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
