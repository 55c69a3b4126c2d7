"""The gateway's HTTP routes: reads through the query service, commands into JB_CMD, and the service probes.

Every read takes `consistency` (weak | strong), `min_seq` and `timeout_ms`, and answers `{"at_seq", "result"}`
from the query service (`jb.qry.<name>`), which does the waiting (docs/QUERIES.md). Commands go through
Gateway.command, which checks them with the engine's own parser, publishes, and waits for their events.

Who may do what (gateway/auth.py): public market data (markets, snapshot, top_of_book, order counts of a market)
to any valid key; an account's orders, fills, risk and completed orders only to that account or an operator,
defaulting to the caller's own account when it names none; trading commands only for the caller's own
account; control commands only to operators. A trader who names another account is refused (403), never
quietly re-pointed, so a client bug shows instead of returning someone else's empty page.

Every refusal is `{"error": <reason>, "detail": ...}` with a 4xx status; a 500 is a bug and is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from events.stream_readers import last_seq
from gateway import models as m
from gateway.auth import Auth, Principal
from gateway.core import MAX_BODY_BYTES, Gateway, GatewayError, Outcome, is_control
from gateway.metrics import COMMAND_ROUND_TRIP, REQUESTS, WS_CLIENTS
from protocol.subjects import EVT_STREAM

log = logging.getLogger("jetbook.gateway")

MAX_HTTP_BODY: Final = 2 * MAX_BODY_BYTES  # JSON is bulkier than the msgpack a command becomes
DEFAULT_READY_MAX_LAG: Final = 1000  # JB_EVT events the read model may be behind and still be "ready"
READY_CHECK_S: Final = 2.0
MAX_LIVE_COUNT_MARKETS: Final = 200  # /debug/live_counts counts open orders per market for at most this many
STATUSES = Literal["open", "partially_filled", "filled", "cancelled", "all"]

router = APIRouter()

# --- errors -----------------------------------------------------------------------------------------------

ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": m.ErrorBody, "description": d}
    for s, d in (
        (401, "no key, or an unknown one"),
        (403, "this key may not do that (`forbidden`)"),
        (404, "no such market or order"),
        (413, "the body is too large"),
        (422, "a field is missing, unknown, of the wrong type or out of range; or the engine rejected the command"),
        (503, "the query service or JetStream is not there"),
        (504, "a wait passed its deadline; gives the position reached and the one asked for"),
    )
}
READ_ERRORS = {k: v for k, v in ERRORS.items() if k != 413}


async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors as the gateway's shape; the input itself is never echoed (it may be huge)."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    reason = "invalid_field"
    for err in exc.errors()[:20]:
        loc = [p if isinstance(p, int) else str(p)[:64] for p in err.get("loc", ())]
        kind = str(err.get("type", ""))
        if kind == "union_tag_invalid":
            reason = "unknown_command"
        problems.append({"loc": loc, "type": kind, "msg": str(err.get("msg", ""))[:300]})
    return JSONResponse({"error": reason, "detail": problems}, status_code=422)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    reason = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "bad_request")
    return JSONResponse({"error": reason, "detail": str(exc.detail)[:300]}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))  # fmt: skip


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal", "detail": f"{type(exc).__name__} (a bug; logged)"}, status_code=500)


def install(app: FastAPI) -> None:
    """The error handlers and the middleware every HTTP route relies on."""
    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(Guard)


# --- middleware -------------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Guard:
    """Caps the body (read whole, at most MAX_HTTP_BODY bytes) and counts each request by route template.

    Pure ASGI rather than BaseHTTPMiddleware: it adds no task per request, and it sees the status even of a
    response an exception handler wrote. The route label is the template (`/orders/{market_id}/{order_id}`),
    or `unmatched`, so a scan of random paths cannot grow the metric without bound.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            body = await self._body(scope, receive)
            if body is None:
                status = 413
                await refuse(send, 413, "too_large", f"a request body is at most {MAX_HTTP_BODY} bytes")
                return
            delivered = False

            async def replay() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, sending)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(label, scope.get("method", "?"), str(status)).inc()

    @staticmethod
    async def _body(scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the cap (said up front, or found while reading)."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > MAX_HTTP_BODY:
                        return None
                except ValueError:
                    pass  # the server refuses a malformed length itself
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""  # the client went away; the route will find out
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_HTTP_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def refuse(send: Send, status: int, reason: str, detail: str) -> None:
    response = JSONResponse({"error": reason, "detail": detail}, status_code=status, headers={"Connection": "close"})
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# --- who is asking ----------------------------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>`")


async def caller(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    key: Annotated[str | None, Depends(api_key_header)],
) -> Principal:
    auth: Auth = request.app.state.auth
    principal = auth.identify(key or (creds.credentials if creds is not None else None))
    if principal is None:
        raise GatewayError(401, "unauthorized", "give a valid key: `Authorization: Bearer <key>` or `X-API-Key`")
    return principal


Caller = Annotated[Principal, Depends(caller)]


def own_account(who: Principal, asked: str | None) -> str | None:
    """The account a read is about: an operator's choice (None: every account), a trader's own."""
    if who.role == "operator":
        return asked
    if asked is not None and asked != who.account:
        raise GatewayError(403, "forbidden", f"this key reads account {who.account} only")
    return who.account


def operator_only(who: Caller) -> Principal:
    if not who.may_control:
        raise GatewayError(403, "forbidden", "operators only")
    return who


def redact(row: dict[str, Any], who: Principal) -> dict[str, Any]:
    """A trader sees its own side of a trade, not who was on the other side (as gateway/ws.py does)."""
    if who.role == "operator" or "maker_account" not in row:
        return row
    out = dict(row)
    for side in ("maker", "taker"):
        if out.get(f"{side}_account") != who.account:
            out[f"{side}_account"] = None
            out[f"{side}_client_order_id"] = None
    return out


# --- strict query strings ---------------------------------------------------------------------------------

_ALLOWED: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> set[str]:
    names = {str(p.alias) for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def known_params(request: Request) -> None:
    """A query parameter the route does not take is refused: `acount_id=bob` must not read every account."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    allowed = _ALLOWED.get(id(route))
    if allowed is None:
        allowed = frozenset(_query_names(route.dependant))
        _ALLOWED[id(route)] = allowed
    unknown = sorted({k for k in request.query_params if k not in allowed})
    if unknown:
        names = ", ".join(repr(k[:64]) for k in unknown[:10])
        detail = f"unknown query parameter(s) {names}; this route takes {sorted(allowed)}"
        raise GatewayError(422, "invalid_field", detail)


router.dependencies.append(Depends(known_params))

# --- reads ------------------------------------------------------------------------------------------------

MarketQ = Annotated[str, Query(pattern=m.ID_PATTERN, description="a market id")]
MarketOptQ = Annotated[str | None, Query(pattern=m.ID_PATTERN, description="a market id (all markets if absent)")]
AccountQ = Annotated[
    str | None, Query(pattern=m.ID_PATTERN, description="an account id (a trader's own by default; operators: any)")
]
RunnerQ = Annotated[str | None, Query(pattern=m.ID_PATTERN, description="one runner of an odds market")]
DepthQ = Annotated[int, Query(ge=1, le=1000, description="price levels a side")]
StatusQ = Annotated[
    list[STATUSES] | None,
    Query(description="open (open or partially filled; the default), all, or statuses (repeat the parameter)"),
]


def read_options(
    consistency: Annotated[
        Literal["weak", "strong"],
        Query(description="weak: the replica as it is; strong: sees every command stored before the request"),
    ] = "weak",
    min_seq: Annotated[int, Query(ge=0, le=m.INT64_MAX, description="wait until the replica has this JB_EVT seq")] = 0,
    timeout_ms: Annotated[int, Query(ge=1, le=60_000, description="how long a wait may take")] = 5000,
) -> dict[str, Any]:
    return {"consistency": consistency, "min_seq": min_seq, "timeout_ms": timeout_ms}


Options = Annotated[dict[str, Any], Depends(read_options)]


def gw(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def ask(request: Request, name: str, options: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return await gw(request).query(name, {**{k: v for k, v in fields.items() if v is not None}, **options})


def status_field(status: list[Any] | None) -> str | list[str] | None:
    if not status:
        return None
    if "all" in status:
        return "all"
    return status[0] if len(status) == 1 else sorted(set(status))


@router.get("/markets", response_model=m.MarketsAnswer, responses=READ_ERRORS, tags=["market data"])
async def markets(request: Request, who: Caller, options: Options) -> dict[str, Any]:
    """Every market: id, kind, state, phase, limits, last trade, runners."""
    return await ask(request, "markets", options)


@router.get("/snapshot", response_model=m.SnapshotAnswer, responses=READ_ERRORS, tags=["market data"])
async def snapshot(
    request: Request, who: Caller, options: Options, market_id: MarketQ, depth: DepthQ = 10, runner: RunnerQ = None
) -> dict[str, Any]:
    """A market as a screen shows it: state, phase, runners, last trade, and a ladder per book."""
    return await ask(request, "snapshot", options, market_id=market_id, depth=depth, runner=runner)


@router.get("/top_of_book", response_model=m.TopOfBookAnswer, responses=READ_ERRORS, tags=["market data"])
async def top_of_book(
    request: Request, who: Caller, options: Options, market_id: MarketQ, depth: DepthQ = 10, runner: RunnerQ = None
) -> dict[str, Any]:
    """The ladder of each book of a market, `depth` levels a side, best price first."""
    return await ask(request, "top_of_book", options, market_id=market_id, depth=depth, runner=runner)


@router.get("/order_count", response_model=m.CountAnswer, responses=READ_ERRORS, tags=["market data"])
async def order_count(
    request: Request,
    who: Caller,
    options: Options,
    market_id: MarketOptQ = None,
    account_id: Annotated[str | None, Query(pattern=m.ID_PATTERN, description="one account (traders: own)")] = None,
    status: StatusQ = None,
) -> dict[str, Any]:
    """How many orders (open by default), in a market or all; counting one account's is private to it."""
    if account_id is not None:
        own_account(who, account_id)
    return await ask(request, "order_count", options, market_id=market_id, account_id=account_id,
                     status=status_field(status))  # fmt: skip


@router.get("/risk", response_model=m.RiskAnswer, responses=READ_ERRORS, tags=["account"])
async def risk(request: Request, who: Caller, options: Options, market_id: MarketQ, account_id: AccountQ = None) -> Any:
    """Per account: position, open exposure, realised P&L, P&L if each runner wins, limits."""
    return await ask(request, "risk", options, market_id=market_id, account_id=own_account(who, account_id))


@router.get("/completed_orders", response_model=m.OrdersAnswer, responses=READ_ERRORS, tags=["account"])
async def completed_orders(
    request: Request,
    who: Caller,
    options: Options,
    market_id: MarketQ,
    account_id: AccountQ = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """Filled and cancelled orders, most recently completed first."""
    return await ask(request, "completed_orders", options, market_id=market_id,
                     account_id=own_account(who, account_id), limit=limit)  # fmt: skip


@router.get("/fills", response_model=m.FillsAnswer, responses=READ_ERRORS, tags=["account"])
async def fills(
    request: Request,
    who: Caller,
    options: Options,
    market_id: MarketQ,
    account_id: AccountQ = None,
    from_seq: Annotated[int, Query(ge=0, le=m.INT64_MAX, description="JB_EVT sequence to start from")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Trades from a JB_EVT sequence on, oldest first; with an account, its trades on either side."""
    answer = await ask(request, "fills", options, market_id=market_id, account_id=own_account(who, account_id),
                       from_seq=from_seq, limit=limit)  # fmt: skip
    answer["result"] = [redact(row, who) for row in answer["result"]]
    return answer


@router.get("/orders", response_model=m.OrdersAnswer, responses=READ_ERRORS, tags=["account"])
async def orders(
    request: Request,
    who: Caller,
    options: Options,
    market_id: MarketOptQ = None,
    account_id: AccountQ = None,
    status: StatusQ = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Orders (open by default), by market and order id."""
    return await ask(request, "orders", options, market_id=market_id, account_id=own_account(who, account_id),
                     status=status_field(status), limit=limit)  # fmt: skip


MarketP = Annotated[str, Path(pattern=m.ID_PATTERN)]


@router.get("/orders/{market_id}/{order_id}", response_model=m.OrderAnswer, responses=READ_ERRORS, tags=["account"])
async def order(
    request: Request, who: Caller, options: Options, market_id: MarketP,
    order_id: Annotated[int, Path(ge=1, le=m.INT64_MAX)],
) -> dict[str, Any]:  # fmt: skip
    """One order by its id. A trader asking for another account's order is told there is none."""
    answer = await ask(request, "order", options, market_id=market_id, order_id=order_id)
    if who.role != "operator" and answer["result"].get("account_id") != who.account:
        raise GatewayError(404, "not_found", f"no such order in {market_id}", at_seq=answer["at_seq"])
    return answer


@router.get(
    "/orders/{market_id}/client/{client_order_id}", response_model=m.OrderAnswer, responses=READ_ERRORS,
    tags=["account"],
)  # fmt: skip
async def order_by_client_id(
    request: Request, who: Caller, options: Options, market_id: MarketP,
    client_order_id: Annotated[str, Path(pattern=m.ID_PATTERN)], account_id: AccountQ = None,
) -> dict[str, Any]:  # fmt: skip
    """One order by its account's client_order_id."""
    account = own_account(who, account_id)
    if account is None:
        raise GatewayError(422, "invalid_field", "account_id: required with a client_order_id")
    return await ask(request, "order", options, market_id=market_id, account_id=account,
                     client_order_id=client_order_id)  # fmt: skip


# --- commands ---------------------------------------------------------------------------------------------

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", pattern=r"^[\x21-\x7e]{1,200}$",
        description="a retried request with the same key (same account, within 120 s) does not act twice",
    ),
]  # fmt: skip
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"model": m.ErrorBody, "description": "this Idempotency-Key was used for a different command"},
}


async def run_command(
    request: Request, who: Principal, market_id: str, account_id: str | None, body: dict[str, Any], key: str | None
) -> dict[str, Any]:
    """Authorise, publish, wait for the events; a rejection is a 422 that still carries cmd_seq and the events."""
    ctype = str(body.get("type"))
    if is_control(ctype):
        if not who.may_control:
            raise GatewayError(403, "forbidden", f"{ctype} is a control command: operators only")
        account = None
    else:
        account = account_id if account_id is not None else who.account
        if account is None:
            raise GatewayError(422, "invalid_field", f"account_id: required for {ctype[:64]}")
        if not who.may_act_for(account):
            raise GatewayError(403, "forbidden", f"this key acts for account {who.account} only")
    start = time.perf_counter()
    outcome: Outcome = await gw(request).command(market_id, account, body, idempotency_key=key)
    COMMAND_ROUND_TRIP.labels(via="http").observe(time.perf_counter() - start)
    events = [redact(e, who) for e in outcome.events]
    rejected = outcome.rejected
    if rejected is not None:
        raise GatewayError(422, str(rejected.get("reason")), str(rejected.get("detail") or rejected.get("reason")),
                           cmd_seq=outcome.cmd_seq, events=events, duplicate=outcome.duplicate)  # fmt: skip
    return {"cmd_seq": outcome.cmd_seq, "events": events, "duplicate": outcome.duplicate}


@router.post("/commands", response_model=m.CommandResult, responses=COMMAND_RESPONSES, tags=["commands"])
async def commands(request: Request, who: Caller, req: m.CommandRequest, key: IdempotencyKey = None) -> Any:
    """Any protocol command, as JSON: published to JB_CMD, answered with the events it caused."""
    body = req.command.model_dump(exclude_unset=True)
    return await run_command(request, who, req.market_id, req.account_id, body, key)


@router.post("/orders", response_model=m.CommandResult, responses=COMMAND_RESPONSES, tags=["commands"])
async def place_order(request: Request, who: Caller, req: m.PlaceOrderRequest, key: IdempotencyKey = None) -> Any:
    """Place an order (the fields of place_order, plus market_id and account_id)."""
    fields = req.model_dump(exclude_unset=True, exclude={"market_id", "account_id"})
    return await run_command(request, who, req.market_id, req.account_id, {"type": "place_order", **fields}, key)


@router.delete("/orders/{market_id}/{order_id}", response_model=m.CommandResult, responses=COMMAND_RESPONSES,
               tags=["commands"])  # fmt: skip
async def cancel_order(
    request: Request, who: Caller, market_id: MarketP, order_id: Annotated[int, Path(ge=1, le=m.INT64_MAX)],
    account_id: AccountQ = None, key: IdempotencyKey = None,
) -> Any:  # fmt: skip
    """Cancel one order by id."""
    body = {"type": "cancel_order", "order_id": order_id}
    return await run_command(request, who, market_id, account_id, body, key)


@router.post("/orders/{market_id}/{order_id}/amend", response_model=m.CommandResult, responses=COMMAND_RESPONSES,
             tags=["commands"])  # fmt: skip
async def amend_order(
    request: Request, who: Caller, market_id: MarketP, order_id: Annotated[int, Path(ge=1, le=m.INT64_MAX)],
    req: m.AmendRequest, key: IdempotencyKey = None,
) -> Any:  # fmt: skip
    """Amend an order's open quantity and/or price."""
    body = {"type": "amend_order", "order_id": order_id, **req.model_dump(exclude_unset=True, exclude={"account_id"})}
    return await run_command(request, who, market_id, req.account_id, body, key)


@router.delete("/orders/{market_id}", response_model=m.CommandResult, responses=COMMAND_RESPONSES,
               tags=["commands"])  # fmt: skip
async def cancel_all(
    request: Request, who: Caller, market_id: MarketP, account_id: AccountQ = None,
    side: Annotated[str | None, Query(max_length=16, description="only this side")] = None,
    runner: RunnerQ = None, key: IdempotencyKey = None,
) -> Any:  # fmt: skip
    """Cancel all of an account's open orders in a market (`_all`: every market), optionally one side or runner."""
    body: dict[str, Any] = {"type": "cancel_all"}
    if side is not None:
        body["side"] = side
    if runner is not None:
        body["runner"] = runner
    return await run_command(request, who, market_id, account_id, body, key)


# --- the service itself -----------------------------------------------------------------------------------


@router.get("/health", response_model=m.Health, tags=["service"])
async def health(request: Request) -> dict[str, Any]:
    """Liveness: 200 while the process serves."""
    return {"status": "ok", "uptime_s": round(time.monotonic() - gw(request).started, 3)}


@router.get("/ready", response_model=m.Readiness, responses={503: {"model": m.Readiness}}, tags=["service"])
async def ready(request: Request) -> JSONResponse:
    """Readiness: NATS connected, JB_CMD and JB_EVT there, an engine holds the lease, the read model not far behind."""
    import asyncio

    gateway = gw(request)
    max_lag: int = request.app.state.ready_max_lag
    reasons: list[str] = []
    checks: dict[str, Any] = {"nats_connected": bool(gateway.nc.is_connected), "max_lag": max_lag}
    if not checks["nats_connected"]:
        reasons.append("NATS is not connected")
    evt_seqs: dict[str, int] = {}  # every shard's event stream (JB_EVT alone for one shard)
    for cmd_stream, evt_stream in gateway.streams:
        for stream in (cmd_stream, evt_stream):
            try:
                seq = await asyncio.wait_for(last_seq(gateway.js, stream), READY_CHECK_S)
            except Exception as err:  # not found, no permission, timeout: each is a reason, none a crash
                checks[stream] = None
                reasons.append(f"stream {stream}: {type(err).__name__} {str(err)[:120]}".strip())
                continue
            checks[stream] = seq
            if stream == evt_stream:
                evt_seqs[stream] = seq
    leases = await gateway.lease_holders()
    if gateway.shards == 1:
        checks["lease"] = leases["engine"]
    else:
        checks["leases"] = leases
    for key, lease in leases.items():
        if lease is None:
            reasons.append("no engine holds the lease" + (f" {key}" if gateway.shards > 1 else ""))
    try:
        answer = await gateway.query("markets", {"timeout_ms": int(READY_CHECK_S * 1000)})
        checks["read_model_seq"] = answer["at_seq"]
        # one shard: JB_EVT's position; with shards, each shard stream's (`at`), and the largest lag counts
        at = answer.get("at") or {EVT_STREAM: int(answer["at_seq"] or 0)}
        if gateway.shards > 1:
            checks["read_model_at"] = at
        lags = {s: max(seq - int(at.get(s, 0)), 0) for s, seq in evt_seqs.items()}
        if lags:
            worst = max(lags, key=lambda s: lags[s])
            checks["lag"] = lags[worst]
            if lags[worst] > max_lag:
                reasons.append(f"the read model is {lags[worst]} events behind {worst} (bound {max_lag})")
    except GatewayError as err:
        checks["read_model_seq"] = None
        reasons.append(f"query service: {err.reason}: {err.detail}"[:200])
    body = {"ready": not reasons, "reasons": reasons, "checks": checks}
    return JSONResponse(body, status_code=200 if not reasons else 503)


@router.get("/debug/live_counts", response_model=m.LiveCounts, responses=READ_ERRORS, tags=["service"])
async def live_counts(
    request: Request, who: Annotated[Principal, Depends(operator_only)], options: Options
) -> dict[str, Any]:
    """Sizes of the live tables (the reference's meaning): markets, runners, orders by status, sockets.

    The counts come from several queries, the first at `at_seq` (as `consistency`/`min_seq` ask) and the
    others at or after it: a debug view, not one consistent cut.
    """
    gateway = gw(request)
    listed = await gateway.query("markets", options)
    at = listed["at_seq"]
    counts: dict[str, int] = {}
    # With shards there is no one sequence for a query without a market: those ask at whatever the model has.
    since = {"min_seq": at} if at is not None else {}
    for label, status in (("orders", "all"), ("open_orders", "open"), ("filled_orders", "filled"),
                          ("cancelled_orders", "cancelled")):  # fmt: skip
        counts[label] = int((await gateway.query("order_count", {"status": status, **since}))["result"])
    by_market: dict[str, int] = {}
    for market in listed["result"][:MAX_LIVE_COUNT_MARKETS]:
        answer = await gateway.query("order_count", {"market_id": market["market_id"], **since})
        by_market[market["market_id"]] = int(answer["result"])
    ws: dict[str, int] = {}
    for metric in WS_CLIENTS.collect():
        for sample in metric.samples:
            ws[sample.labels.get("endpoint", "?")] = int(sample.value)
    return {
        "at_seq": at,
        "markets": len(listed["result"]),
        "runners": sum(len(x.get("runners", [])) for x in listed["result"]),
        **counts,
        "open_orders_by_market": by_market,
        "ws_clients": ws,
        "evt_tail_seq": gateway.tail.position,
        "commands_tracked": len(gateway.tail.by_cmd),
    }


@router.get(
    "/metrics", response_class=Response, tags=["service"],
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)  # fmt: skip
async def metrics() -> Response:
    """Prometheus metrics of this process (the gateway's are jetbook_gateway_*)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
