"""The fan-out worker: JB_EVT -> per-account copies (JB_ACCT) and a public trade tape (JB_TAPE).

JB_EVT is the log and keeps every field: accounts, client order ids, both
sides of every fill. Only services may read it. A trader gets its own share
from JB_ACCT, under `jb.acct.<account>.<market>.<kind>`, which permissions can
bind to one account (a consumer created with the `$JS.API.CONSUMER.CREATE.
JB_ACCT.<name>.jb.acct.<account>.>` form, see events/private.py); everyone
gets trades from JB_TAPE under `jb.tape.<market>`, without accounts or ids.

Why a worker and not the stream's own republish: a stream republishes each
message once, to one subject made from its own subject, and a fill concerns
two accounts that the subject `jb.evt.<market>.fill` does not name; it cannot
drop fields either. Changing the event subjects to carry accounts would
change the protocol and still not strip the other side. A worker can copy one
event to several subjects and shape each copy; and its output is stored, so a
trader can read from a position, not only live.

Exactly once, across crashes and a second worker:
- every output message carries the JB_EVT sequence it came from (`Jb-Evt-Seq`)
  and a `Nats-Msg-Id` made from it (`<seq>.<account>` in JB_ACCT, `<seq>` in
  JB_TAPE);
- the outputs of an event are in a fixed order (`outputs` is a pure function),
  and each publish expects the stream's last sequence to be the one before it
  (`Nats-Expected-Last-Sequence`), so a stream always holds a prefix of the
  worker's output: a message that did not land makes every later one fail too,
  and nothing is stored out of order or with a hole;
- at start, and after any failure, the worker reads the last message of each
  output stream, starts reading JB_EVT at the older of their `Jb-Evt-Seq`, and
  skips every output up to and including each stream's last one.
It never relies on the duplicate window, which a long stop would outlast; the
msg ids are a second guard for two workers racing (the loser's publish fails
its expected sequence, and it reads the tails again).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import nats.errors
import nats.js.errors
from msgspec.structs import replace as struct_replace

from events.logged import decode_logged
from events.model import (
    Event,
    Fill,
    MarketSettled,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrdersCancelled,
    Rejected,
    RiskLimitsSet,
    encode,
)
from events.stream_readers import ResumableReader
from projections.metrics import FanOutMetrics
from protocol.errors import TRANSIENT, JetbookError
from protocol.streams import ensure_fanout_streams
from protocol.subjects import (
    ACCT_STREAM,
    EVT_STREAM,
    HDR_EVT_SEQ,
    HDR_EXPECTED_LAST_SEQ,
    HDR_MSG_ID,
    TAPE_STREAM,
    acct_subject,
    is_id,
    tape_subject,
)

log = logging.getLogger("jetbook.fanout")

OUTPUT_STREAMS: Final = (ACCT_STREAM, TAPE_STREAM)
ACK_TIMEOUT_S: Final = 10.0
TRADE: Final = "trade"  # the tape's one message type


@dataclass(frozen=True, slots=True)
class Out:
    stream: str
    subject: str
    data: bytes
    msg_id: str


def private_fill(fill: Fill, side: str) -> Fill:
    """One side's copy of a fill: the counterparty's account, order and client order id are blanked."""
    if side == "maker":
        return struct_replace(fill, taker_account="", taker_order_id=0, taker_client_order_id="", taker_remaining=0)
    return struct_replace(fill, maker_account="", maker_order_id=0, maker_client_order_id="", maker_remaining=0)


def trade(seq: int, fill: Fill) -> dict[str, Any]:
    """A fill as the public tape shows it: what traded, never who.

    An implied fill adds `implied` and the maker's runner (its `price` is the odds there), never an account;
    a direct one has no such keys, so the tape of every other market keeps its bytes.
    """
    out = {
        "type": TRADE, "market_id": fill.market_id, "runner": fill.runner, "trade_id": fill.trade_id,
        "price": fill.price, "qty": fill.qty, "taker_side": fill.taker_side, "ts": fill.ts, "evt_seq": seq,
    }  # fmt: skip
    if fill.implied:
        out |= {"implied": True, "maker_runner": fill.maker_runner}
    return out


def _acct(seq: int, account: str, event: Event, data: bytes) -> Out:
    return Out(ACCT_STREAM, acct_subject(account, event.market_id, event.type), data, f"{seq}.{account}")


def outputs(seq: int, event: Event, raw: bytes) -> list[Out]:
    """Everything JB_EVT message `seq` becomes, in a fixed order. Pure: the resume logic depends on it.

    An account's copy is the event itself when all of it is that account's; a
    fill is copied to both sides, each without the other; orders_cancelled and
    market_settled are cut to the account's own entries.
    """
    if isinstance(event, OrderAccepted | OrderAmended | OrderCancelled | RiskLimitsSet):
        return [_acct(seq, event.account_id, event, raw)] if is_id(event.account_id) else []
    if isinstance(event, Rejected):  # a control command's has no account; an unparsable subject's may be junk
        account = event.account_id
        return [_acct(seq, account, event, raw)] if account is not None and is_id(account) else []
    if isinstance(event, Fill):
        out: list[Out] = []
        if event.maker_account == event.taker_account:  # both sides are one account's: the whole fill is theirs
            if is_id(event.maker_account):
                out.append(_acct(seq, event.maker_account, event, raw))
        else:
            for side, account in (("maker", event.maker_account), ("taker", event.taker_account)):
                if is_id(account):
                    out.append(_acct(seq, account, event, encode(private_fill(event, side))))
        tape = msgpack.packb(trade(seq, event), use_bin_type=True)
        out.append(Out(TAPE_STREAM, tape_subject(event.market_id), tape, str(seq)))
        return out
    if isinstance(event, OrdersCancelled):
        by_account: dict[str, list[list[Any]]] = {}  # insertion order: first appearance in the event
        for entry in event.orders:
            by_account.setdefault(str(entry[1]), []).append(entry)
        return [
            _acct(seq, account, event, encode(struct_replace(event, orders=entries)))
            for account, entries in by_account.items()
            if is_id(account)
        ]
    if isinstance(event, MarketSettled):
        return [
            _acct(seq, str(line[0]), event, encode(struct_replace(event, pnl=[line])))
            for line in event.pnl
            if is_id(line[0])
        ]
    return []  # market-wide facts (created, state changes, runners) and checkpoints: JB_EVT only


@dataclass(slots=True)
class Tail:
    """The last message of an output stream: where the worker's output to it stopped."""

    stream: str
    last_seq: int  # the stream's last sequence (0: empty)
    evt_seq: int  # the JB_EVT sequence that message came from (0: none)
    msg_id: str


async def read_tail(js: Any, stream: str) -> Tail:
    last = int((await js.stream_info(stream)).state.last_seq)
    if not last:
        return Tail(stream, 0, 0, "")
    msg = await js.get_msg(stream, last)
    headers = msg.headers or {}
    try:
        return Tail(stream, last, int(headers[HDR_EVT_SEQ]), str(headers[HDR_MSG_ID]))
    except (KeyError, ValueError) as err:
        raise JetbookError(f"{stream} seq {last} has no {HDR_EVT_SEQ}/{HDR_MSG_ID}: not the fan-out's") from err


class FanOut:
    def __init__(self, nc: Any, *, batch: int = 1000, replicas: int = 1, metrics: FanOutMetrics | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.batch = batch
        self.replicas = replicas
        self.position = 0  # every JB_EVT message up to here has all its outputs stored
        self.published = 0  # output messages stored by this worker
        self.resyncs = 0  # times the tails were read again after a failure
        self.metrics = metrics if metrics is not None else FanOutMetrics()
        self.metrics.attach(self)

    async def run(self, stop: asyncio.Event, until_seq: int | None = None) -> int:
        """Copy until `stop` is set or the position reaches `until_seq`; returns the position."""
        await ensure_fanout_streams(self.js, self.replicas)
        while not stop.is_set() and (until_seq is None or self.position < until_seq):
            try:
                await self._run_from_tails(stop, until_seq)
            except (*TRANSIENT, nats.js.errors.APIError, _Resync) as err:
                # a refused or unanswered publish, a lost connection: the streams say where we really are
                self.resyncs += 1
                log.warning("fan-out: %r; reading the output streams' tails again", err)
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)  # back off before asking the server again
                except TimeoutError:
                    pass
        return self.position

    async def _run_from_tails(self, stop: asyncio.Event, until_seq: int | None) -> None:
        tails = {s: await read_tail(self.js, s) for s in OUTPUT_STREAMS}
        expected = {s: t.last_seq for s, t in tails.items()}
        start = max(1, min(t.evt_seq for t in tails.values()))
        self.position = start - 1
        log.info("fan-out reading JB_EVT from %d (%s)", start,
                 ", ".join(f"{s} at {t.last_seq} from evt {t.evt_seq}" for s, t in tails.items()))  # fmt: skip
        reader = ResumableReader(self.nc, EVT_STREAM)
        try:
            while not stop.is_set() and (until_seq is None or self.position < until_seq):
                msgs = await reader.next_batch(self.position + 1, self.batch, 0.25)
                if not msgs:
                    continue
                self.metrics.batch_read(msgs[-1].seq, msgs[-1].pending)
                outs = [
                    o
                    for m in msgs
                    for o in _skip(tails, m.seq, outputs(m.seq, decode_logged(m.seq, m.subject, m.data), m.data))
                ]
                await self._publish(outs, expected)
                self.position = msgs[-1].seq
        finally:
            await reader.stop()

    async def _publish(self, outs: list[tuple[int, Out]], expected: dict[str, int]) -> None:
        """Pipelined, each publish chained to the one before in its stream; raises if any did not land."""
        futures = []
        for evt_seq, o in outs:
            headers = {
                HDR_MSG_ID: o.msg_id, HDR_EXPECTED_LAST_SEQ: str(expected[o.stream]), HDR_EVT_SEQ: str(evt_seq),
            }  # fmt: skip
            futures.append(await self.js.publish_async(o.subject, o.data, headers=headers))
            expected[o.stream] += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT_S
        for future in futures:
            while not future.done():  # an ack lost with the connection never comes: do not wait it out
                if self.nc.is_closed:
                    raise nats.errors.ConnectionClosedError
                if loop.time() > deadline:
                    raise TimeoutError(f"no PubAck within {ACK_TIMEOUT_S}s")
                await asyncio.wait({future}, timeout=0.25)
            ack = future.result()
            if ack.duplicate:  # another worker stored it: our chain of expected sequences is off
                raise _Resync(f"{ack.stream} seq {ack.seq} was already there")
            self.published += 1


class _Resync(JetbookError):
    """Our picture of an output stream's end is stale: read the tails again."""


def _skip(tails: dict[str, Tail], seq: int, outs: list[Out]) -> list[tuple[int, Out]]:
    """The outputs of JB_EVT `seq` that are not stored yet, given where each output stream ends."""
    stored: dict[str, int] = {}  # per stream: how many of this event's outputs it already holds
    for stream, tail in tails.items():
        mine = [o.msg_id for o in outs if o.stream == stream]
        if seq < tail.evt_seq:
            stored[stream] = len(mine)
        elif seq == tail.evt_seq:
            if tail.msg_id not in mine:
                raise JetbookError(f"{stream} ends with msg id {tail.msg_id}, which JB_EVT seq {seq} does not make")
            stored[stream] = mine.index(tail.msg_id) + 1
    keep: list[tuple[int, Out]] = []
    seen: dict[str, int] = {}
    for o in outs:
        seen[o.stream] = seen.get(o.stream, 0) + 1
        if seen[o.stream] > stored.get(o.stream, 0):
            keep.append((seq, o))
    return keep


async def run_fanout(nc: Any, stop: asyncio.Event, *, replicas: int = 1, batch: int = 1000) -> int:
    """Copy JB_EVT to JB_ACCT and JB_TAPE until `stop` is set; returns the JB_EVT position reached."""
    return await FanOut(nc, batch=batch, replicas=replicas).run(stop)
