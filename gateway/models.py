"""The HTTP gateway's request and response models: what /openapi.json and /docs show, and what clients may send.

Requests are strict (no coercion: `"5"` is not 5, `1.0` is not 1, `true` is not 1) and a field the route does not
take is refused, so a typo never trades differently from what was meant. Command bodies are typed for the docs,
but their values are left for the engine's own parser to judge (commands/model.py): a bad side is
`invalid_side`, an unknown field `unknown_field`, exactly as over NATS, not a second vocabulary made up here.

Responses allow fields the models do not name: the query service may add columns, and a client that reads
more than the docs promise should get them rather than a gateway that quietly drops them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
INT64_MAX = 2**63 - 1

Id = Annotated[str, Field(pattern=ID_PATTERN, description="1-64 characters of A-Z a-z 0-9 _ -")]
Int = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Open(BaseModel):
    """A response object: documented fields, and any others the read model adds."""

    model_config = ConfigDict(extra="allow")


# --- errors -----------------------------------------------------------------------------------------------


class ErrorBody(Open):
    """Every refusal: a machine-readable `error`, a human `detail`, and positions or events where they apply."""

    error: str = Field(description="invalid_field, unauthorized, forbidden, not_found, timeout, unavailable, ...")
    detail: Any = Field(description="what was wrong (text, or a list of field problems)")


# --- reads ------------------------------------------------------------------------------------------------


class Runner(Open):
    runner_id: str
    label: str


class Market(Open):
    market_id: str
    kind: str = Field(description="pair | odds")
    base: str
    quote: str
    state: str
    phase: str
    tick_size: int
    lot_size: int
    min_qty: int
    max_qty: int
    min_price: int
    max_price: int
    band_bps: int
    book_type: str = Field(
        "multi_runner", description="multi_runner | two_runner (odds: also matches through the implied price)"
    )
    last_trade_id: int
    last_price: int | None
    volume: int
    created_seq: int
    state_seq: int | None
    settled_winner: str | None
    settled_price: int | None
    runners: list[Runner]


def _implied_qty(schema: dict[str, Any]) -> None:
    """Listed in the schema but not a model field: a field would add `"implied_qty": null` to every other market."""
    schema["properties"]["implied_qty"] = {
        "type": "integer",
        "description": "two_runner markets only (every level there has it): whole units the other runner's orders"
        " offer here through the implied price (its back shows here as a lay rounded up a tick, its lay as a back"
        " rounded down); 0 if none",
    }


class Level(Open):
    model_config = ConfigDict(extra="allow", json_schema_extra=_implied_qty)

    price: int
    qty: int = Field(description="resting on this book (direct); 0 on a level that is implied only")
    orders: int = Field(description="direct orders at this price")


class Ladder(Open):
    runner: str = Field(description="'' in pair markets")
    label: str
    bid_side: str = Field(description="buy (pairs) or lay (odds)")
    ask_side: str = Field(description="sell (pairs) or back (odds)")
    bids: list[Level]
    asks: list[Level]


class Snapshot(Open):
    market: Market
    ladders: list[Ladder]


class TopOfBook(Open):
    market_id: str
    kind: str
    books: list[Ladder]


class Order(Open):
    market_id: str
    order_id: int
    account_id: str
    client_order_id: str
    runner: str
    side: str
    order_type: str
    price: int | None
    qty: int
    filled_qty: int
    cancelled_qty: int
    open_qty: int
    status: str = Field(description="open | partially_filled | filled | cancelled")
    tif: str
    stp: str
    persistence: str
    amends: int
    created_seq: int
    created_ts: int
    updated_seq: int


class Fill(Open):
    market_id: str
    trade_id: int
    runner: str
    price: int
    qty: int
    taker_side: str
    maker_order_id: int
    taker_order_id: int
    maker_account: str | None = Field(description="null for a trader: the other side's account is private")
    taker_account: str | None
    maker_client_order_id: str | None
    taker_client_order_id: str | None
    seq: int = Field(description="JB_EVT sequence of the fill event; page with from_seq = last seq + 1")
    cmd_seq: int
    ts: int
    implied: bool = Field(False, description="two_runner: matched through the implied price (PROTOCOL 11.1)")
    maker_runner: str | None = Field(None, description="implied: the maker's runner (price is its odds there)")
    maker_qty: int | None = Field(None, description="implied: what the maker's order gave up; else null")
    maker_stake: int | None = Field(None, description="implied: the maker's stake, hundredths of a unit")
    taker_stake: int | None = Field(None, description="implied: the taker's stake, hundredths of a unit")


class RunnerPnl(Open):
    runner: str
    pnl: int


class AccountRisk(Open):
    market_id: str
    account_id: str
    net_qty: int
    cash: int
    open_orders: int
    open_exposure: int
    realised_pnl: int | None
    if_wins: list[RunnerPnl]
    max_order_qty: int | None
    max_open_orders: int | None
    max_open_exposure: int | None


class Position(Open):
    market_id: str
    account_id: str
    runner: str
    net_qty: int
    cash: int
    if_win: int
    if_lose: int


class Risk(Open):
    accounts: list[AccountRisk]
    positions: list[Position]


class At(Open):
    at_seq: int | None = Field(
        description="the JB_EVT sequence this answer reflects; with market shards, that of the market's shard"
        " (JB_EVT_k), and null for a query without a market. A sharded venue's answers also carry `at`"
        " ({stream: sequence}, every shard's event stream), passed through as the query service gives it"
    )


class MarketsAnswer(At):
    result: list[Market]


class SnapshotAnswer(At):
    result: Snapshot


class TopOfBookAnswer(At):
    result: TopOfBook


class FillsAnswer(At):
    result: list[Fill]


class OrdersAnswer(At):
    result: list[Order]


class OrderAnswer(At):
    result: Order


class CountAnswer(At):
    result: int


class RiskAnswer(At):
    result: Risk


# --- service ----------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]
    uptime_s: float


class Readiness(BaseModel):
    ready: bool
    reasons: list[str] = Field(description="why not ready; empty when ready")
    checks: dict[str, Any]


class LiveCounts(BaseModel):
    at_seq: int | None = Field(description="the read model position the counts reflect (null with shards)")
    markets: int
    runners: int
    orders: int
    open_orders: int
    filled_orders: int
    cancelled_orders: int
    open_orders_by_market: dict[str, int]
    ws_clients: dict[str, int]
    evt_tail_seq: int = Field(description="the last JB_EVT sequence this gateway's tail has read")
    commands_tracked: int = Field(description="commands whose events the gateway keeps for late requests")


# --- commands ---------------------------------------------------------------------------------------------
# Values are typed loosely on purpose (str for enums, no ranges): the engine's parser gives the reasons.


class Cmd(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # unknown fields reach the engine: `unknown_field`

    v: int | None = Field(default=None, description="schema version; only 1")


class CreateMarket(Cmd):
    type: Literal["create_market"]
    market_id: str
    quote: str
    base: str | None = None
    kind: str | None = Field(default=None, description="pair | odds")
    book_type: str | None = Field(
        default=None, description="odds: multi_runner (default) | two_runner (exactly two runners, implied matching)"
    )
    tick_size: int | None = None
    lot_size: int | None = None
    min_qty: int | None = None
    max_qty: int | None = None
    min_price: int | None = None
    max_price: int | None = None
    band_bps: int | None = None
    runners: list[dict[str, Any]] | None = Field(default=None, description='odds: [{"runner_id", "label"}]')


class AddRunner(Cmd):
    type: Literal["add_runner"]
    runner_id: str
    label: str


class SetMarketState(Cmd):
    type: Literal["set_market_state"]
    state: str = Field(description="open | suspended | halted")


class AwaitLive(Cmd):
    type: Literal["await_live"]


class GoLive(Cmd):
    type: Literal["go_live"]


class CloseMarket(Cmd):
    type: Literal["close_market"]


class SettleMarket(Cmd):
    type: Literal["settle_market"]
    winner: str | None = None
    price: int | None = None


class VoidMarket(Cmd):
    type: Literal["void_market"]


class SetRiskLimits(Cmd):
    type: Literal["set_risk_limits"]
    account_id: str
    max_order_qty: int | None = None
    max_open_orders: int | None = None
    max_open_exposure: int | None = None


class PlaceOrderFields(BaseModel):
    client_order_id: str
    side: str = Field(description="buy | sell (pairs), back | lay (odds)")
    qty: int
    price: int | None = None
    order_type: str | None = Field(default=None, description="limit | market")
    protection_price: int | None = None
    tif: str | None = Field(default=None, description="gtc | ioc | fok | post_only")
    stp: str | None = None
    persistence: str | None = Field(default=None, description="lapse | persist")
    runner: str | None = None


class PlaceOrder(Cmd, PlaceOrderFields):
    type: Literal["place_order"]
    market_id: str | None = None
    account_id: str | None = None


class CancelOrder(Cmd):
    type: Literal["cancel_order"]
    order_id: int | None = None
    client_order_id: str | None = None
    market_id: str | None = None
    account_id: str | None = None


class AmendOrder(Cmd):
    type: Literal["amend_order"]
    order_id: int | None = None
    client_order_id: str | None = None
    qty: int | None = None
    price: int | None = None
    market_id: str | None = None
    account_id: str | None = None


class CancelAll(Cmd):
    type: Literal["cancel_all"]
    side: str | None = None
    runner: str | None = None
    market_id: str | None = None
    account_id: str | None = None


# Batches: the instructions are left to the engine's parser (each as its single command, without `type`), so a
# bad one is that instruction's reject, with its index, as on every other way in (docs/PROTOCOL.md section 6.14).
_INSTRUCTIONS = "up to 200 instructions, each the fields of {} without `type`; decided in order as one command"
_COMPACT = "v1.3: report each run of consecutive instructions whose {1} as one {0} event (PROTOCOL.md 6.14)"


class PlaceOrders(Cmd):
    type: Literal["place_orders"]
    instructions: list[Any] = Field(description=_INSTRUCTIONS.format("place_order"))
    all_or_none: bool | None = Field(default=None, description="if any instruction would be refused, refuse all")
    market_id: str | None = None
    account_id: str | None = None
    compact: bool | None = Field(default=None, description=_COMPACT.format("orders_accepted", "orders rest untouched"))


class CancelOrders(Cmd):
    type: Literal["cancel_orders"]
    instructions: list[Any] = Field(description=_INSTRUCTIONS.format("cancel_order"))
    market_id: str | None = None
    account_id: str | None = None
    compact: bool | None = Field(
        default=None, description=_COMPACT.format("orders_cancelled (reason user)", "cancels succeed")
    )


class ReplaceOrders(Cmd):
    type: Literal["replace_orders"]
    instructions: list[Any] = Field(description=_INSTRUCTIONS.format("amend_order"))
    market_id: str | None = None
    account_id: str | None = None


Command = Annotated[
    CreateMarket | AddRunner | SetMarketState | AwaitLive | GoLive | CloseMarket | SettleMarket | VoidMarket
    | SetRiskLimits | PlaceOrder | CancelOrder | AmendOrder | CancelAll | PlaceOrders | CancelOrders | ReplaceOrders,
    Field(discriminator="type"),
]  # fmt: skip


class CommandRequest(Strict):
    market_id: Id
    account_id: Id | None = Field(default=None, description="trading commands: the account (a trader's own by default)")
    command: Command = Field(description="any protocol command (docs/PROTOCOL.md section 6), as JSON")


class PlaceOrderRequest(Strict, PlaceOrderFields):
    market_id: Id
    account_id: Id | None = None


class AmendRequest(Strict):
    account_id: Id | None = None
    qty: int | None = Field(default=None, description="the new open quantity")
    price: int | None = None


class CommandResult(BaseModel):
    cmd_seq: int = Field(description="the command's JB_CMD sequence")
    events: list[dict[str, Any]] = Field(description="the events it caused, in log order (docs/PROTOCOL.md section 8)")
    duplicate: bool = Field(description="true: the Idempotency-Key was seen before; these are the first request's")
