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

A sharded venue (issue 15): one worker follows every JB_EVT_k (one reader per
shard feeding one queue) and keeps ONE chain per output stream, so the
prefix argument above still holds. What the single-shard worker learns from
an output stream's last message (the last output it made, hence where to
resume) it now needs per shard: so each output says which shard it came from
(`Jb-Evt-Stream`) and what the last output of every OTHER shard in the same
output stream was (`Jb-Evt-At`, "JB_EVT_0=120=0:120.alice;JB_EVT_1=88=1:88":
its shard, sequence and msg id). The last message of an output stream then
gives, for every shard, its last output there, and resuming is the
one-shard rule applied per shard. Msg ids get the shard in front
(`<k>:<seq>.<account>`), the tape's trades their `evt_stream`. One shard: none
of these, the bytes of before.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
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
    OrdersAccepted,
    OrdersCancelled,
    Rejected,
    RiskLimitsSet,
    encode,
)
from events.stream_readers import ResumableReader
from projections.metrics import FanOutMetrics
from protocol.errors import TRANSIENT, JetbookError, raise_if_cancelled
from protocol.shards import evt_stream_name
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
HDR_EVT_STREAM: Final = "Jb-Evt-Stream"  # with shards: the JB_EVT_k an output was made from
HDR_EVT_AT: Final = "Jb-Evt-At"  # with shards: every other shard's position when it was published


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


def trade(seq: int, fill: Fill, stream: str | None = None) -> dict[str, Any]:
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
    if stream is not None:  # a sharded venue: evt_seq is this shard stream's
        out["evt_stream"] = stream
    return out


def _acct(seq: int, account: str, event: Event, data: bytes, shard: str = "") -> Out:
    return Out(ACCT_STREAM, acct_subject(account, event.market_id, event.type), data, f"{shard}{seq}.{account}")


def outputs(seq: int, event: Event, raw: bytes, stream: str | None = None, shard: int = 0) -> list[Out]:
    """Everything JB_EVT message `seq` becomes, in a fixed order. Pure: the resume logic depends on it.

    `stream`, `shard`: a sharded venue's JB_EVT_k and k, which its msg ids and tape trades carry.

    An account's copy is the event itself when all of it is that account's; a
    fill is copied to both sides, each without the other; orders_cancelled and
    market_settled are cut to the account's own entries.
    """
    p = "" if stream is None else f"{shard}:"
    if isinstance(event, OrderAccepted | OrdersAccepted | OrderAmended | OrderCancelled | RiskLimitsSet):
        return [_acct(seq, event.account_id, event, raw, p)] if is_id(event.account_id) else []
    if isinstance(event, Rejected):  # a control command's has no account; an unparsable subject's may be junk
        account = event.account_id
        return [_acct(seq, account, event, raw, p)] if account is not None and is_id(account) else []
    if isinstance(event, Fill):
        out: list[Out] = []
        if event.maker_account == event.taker_account:  # both sides are one account's: the whole fill is theirs
            if is_id(event.maker_account):
                out.append(_acct(seq, event.maker_account, event, raw, p))
        else:
            for side, account in (("maker", event.maker_account), ("taker", event.taker_account)):
                if is_id(account):
                    out.append(_acct(seq, account, event, encode(private_fill(event, side)), p))
        tape = msgpack.packb(trade(seq, event, stream), use_bin_type=True)
        out.append(Out(TAPE_STREAM, tape_subject(event.market_id), tape, f"{p}{seq}"))
        return out
    if isinstance(event, OrdersCancelled):
        by_account: dict[str, list[list[Any]]] = {}  # insertion order: first appearance in the event
        for entry in event.orders:
            by_account.setdefault(str(entry[1]), []).append(entry)
        if len(by_account) == 1:  # one account's (a cancel_all, a compact cancel_orders): the event as it is
            account = next(iter(by_account))
            return [_acct(seq, account, event, raw, p)] if is_id(account) else []
        return [
            _acct(seq, account, event, encode(struct_replace(event, orders=entries)), p)
            for account, entries in by_account.items()
            if is_id(account)
        ]
    if isinstance(event, MarketSettled):
        return [
            _acct(seq, str(line[0]), event, encode(struct_replace(event, pnl=[line])), p)
            for line in event.pnl
            if is_id(line[0])
        ]
    return []  # market-wide facts (created, state changes, runners) and checkpoints: JB_EVT only


@dataclass(slots=True)
class Tail:
    """The last message of an output stream: where the worker's output to it stopped, per shard stream."""

    stream: str
    last_seq: int  # the stream's last sequence (0: empty)
    evt_seq: int  # the JB_EVT sequence that message came from (0: none)
    msg_id: str
    evt_stream: str = EVT_STREAM  # the shard stream it came from (JB_EVT for one shard)
    # shard stream -> (sequence, msg id) of its last output in this stream; the message's own shard included
    last: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.evt_seq:
            self.last.setdefault(self.evt_stream, (self.evt_seq, self.msg_id))

    def of(self, evt: str) -> tuple[int, str]:
        """The last output of shard stream `evt` in this stream: (0, "") if it has none."""
        return self.last.get(evt, (0, ""))


def _at(text: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for item in filter(None, text.split(";")):
        stream, seq, msg_id = item.split("=")
        out[stream] = (int(seq), msg_id)
    return out


async def read_tail(js: Any, stream: str) -> Tail:
    last = int((await js.stream_info(stream)).state.last_seq)
    if not last:
        return Tail(stream, 0, 0, "")
    msg = await js.get_msg(stream, last)
    headers = msg.headers or {}
    try:
        return Tail(
            stream, last, int(headers[HDR_EVT_SEQ]), str(headers[HDR_MSG_ID]),
            headers.get(HDR_EVT_STREAM, EVT_STREAM), _at(headers.get(HDR_EVT_AT, "")),
        )  # fmt: skip
    except (KeyError, ValueError) as err:
        raise JetbookError(f"{stream} seq {last} has no {HDR_EVT_SEQ}/{HDR_MSG_ID}: not the fan-out's") from err


class FanOut:
    def __init__(
        self,
        nc: Any,
        *,
        batch: int = 1000,
        replicas: int = 1,
        metrics: FanOutMetrics | None = None,
        shards: int = 1,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.batch = batch
        self.replicas = replicas
        self.streams = [evt_stream_name(k, shards) for k in range(shards)]
        # per shard stream: every message up to here has all its outputs stored
        self.positions = dict.fromkeys(self.streams, 0)
        self.published = 0  # output messages stored by this worker
        self.resyncs = 0  # times the tails were read again after a failure
        self.metrics = metrics if metrics is not None else FanOutMetrics()
        self.metrics.attach(self)

    @property
    def position(self) -> int:
        """JB_EVT's position; with shards, the sum of theirs (a count that only grows, for progress)."""
        return sum(self.positions.values())

    def _reached(self, until: dict[str, int] | None) -> bool:
        return until is not None and all(self.positions[s] >= seq for s, seq in until.items())

    async def run(
        self, stop: asyncio.Event, until_seq: int | None = None, *, until: dict[str, int] | None = None
    ) -> int:
        """Copy until `stop` is set or the position reaches `until_seq` (one shard) or every stream its `until`
        position; returns the position."""
        if until_seq is not None:
            until = dict.fromkeys(self.streams, until_seq)
        await ensure_fanout_streams(self.js, self.replicas)
        while not stop.is_set() and not self._reached(until):
            raise_if_cancelled()
            try:
                await self._run_from_tails(stop, until)
            except (*TRANSIENT, nats.js.errors.APIError, _Resync) as err:
                raise_if_cancelled()
                # a refused or unanswered publish, a lost connection: the streams say where we really are
                self.resyncs += 1
                log.warning("fan-out: %r; reading the output streams' tails again", err)
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)  # back off before asking the server again
                except TimeoutError:
                    pass
        return self.position

    async def _run_from_tails(self, stop: asyncio.Event, until: dict[str, int] | None) -> None:
        tails = {s: await read_tail(self.js, s) for s in OUTPUT_STREAMS}
        expected = {s: t.last_seq for s, t in tails.items()}
        sharded = len(self.streams) > 1
        queue: asyncio.Queue[tuple[int, list[Any]]] = asyncio.Queue(maxsize=2)
        readers = []
        for k, evt in enumerate(self.streams):
            start = max(1, min(t.of(evt)[0] for t in tails.values()))
            self.positions[evt] = start - 1
            where = ", ".join(f"{s} at {t.last_seq}, last from {evt} {t.of(evt)[0]}" for s, t in tails.items())
            log.info("fan-out reading %s from %d (%s)", evt, start, where)
            readers.append(asyncio.create_task(self._read(k, evt, start, queue)))
        try:
            while not stop.is_set() and not self._reached(until):
                try:
                    k, msgs = await asyncio.wait_for(queue.get(), 0.25)
                except TimeoutError:
                    for task in readers:
                        if task.done():
                            task.result()  # a reader that failed: raise its error here
                    continue
                evt = self.streams[k]
                self.metrics.batch_read(msgs[-1].seq, msgs[-1].pending)
                stream, shard = (evt, k) if sharded else (None, 0)
                outs = [
                    o
                    for m in msgs
                    for o in _skip(tails, evt, m.seq,
                                   outputs(m.seq, decode_logged(m.seq, m.subject, m.data), m.data, stream, shard))
                ]  # fmt: skip
                await self._publish(outs, expected, tails, evt if sharded else None)
                raise_if_cancelled()
                self.positions[evt] = msgs[-1].seq
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, shard: int, evt: str, start: int, queue: asyncio.Queue[tuple[int, list[Any]]]) -> None:
        """One shard stream's batches, in order, into the worker's one queue."""
        reader = ResumableReader(self.nc, evt)
        position = start - 1
        try:
            while True:
                msgs = await reader.next_batch(position + 1, self.batch, 0.25)
                if msgs:
                    await queue.put((shard, msgs))
                    position = msgs[-1].seq
        finally:
            await reader.stop()

    async def _publish(
        self, outs: list[tuple[int, Out]], expected: dict[str, int], tails: dict[str, Tail], evt: str | None = None
    ) -> None:
        """Pipelined, each publish chained to the one before in its stream; raises if any did not land.

        `tails` is kept as each output stream's end would be once these land (any failure reads them again).
        With shards (`evt`), each output carries the other shards' last outputs in its stream (Jb-Evt-At).
        """
        futures = []
        for evt_seq, o in outs:
            headers = {
                HDR_MSG_ID: o.msg_id, HDR_EXPECTED_LAST_SEQ: str(expected[o.stream]), HDR_EVT_SEQ: str(evt_seq),
            }  # fmt: skip
            tail = tails[o.stream]
            if evt is not None:
                headers[HDR_EVT_STREAM] = evt
                headers[HDR_EVT_AT] = ";".join(f"{s}={q}={m}" for s, (q, m) in tail.last.items() if s != evt)
            tail.last[evt or EVT_STREAM] = (evt_seq, o.msg_id)
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


def _skip(tails: dict[str, Tail], evt: str, seq: int, outs: list[Out]) -> list[tuple[int, Out]]:
    """The outputs of `evt` (JB_EVT or a JB_EVT_k) message `seq` that are not stored yet, given each output
    stream's last output from that shard stream: all of an earlier event's, a prefix of that event's."""
    stored: dict[str, int] = {}  # per stream: how many of this event's outputs it already holds
    for stream, tail in tails.items():
        mine = [o.msg_id for o in outs if o.stream == stream]
        last_seq, last_id = tail.of(evt)
        if seq < last_seq:
            stored[stream] = len(mine)
        elif seq == last_seq:
            if last_id not in mine:
                raise JetbookError(f"{stream} ends with msg id {last_id}, which {evt} seq {seq} does not make")
            stored[stream] = mine.index(last_id) + 1
    keep: list[tuple[int, Out]] = []
    seen: dict[str, int] = {}
    for o in outs:
        seen[o.stream] = seen.get(o.stream, 0) + 1
        if seen[o.stream] > stored.get(o.stream, 0):
            keep.append((seq, o))
    return keep


async def run_fanout(nc: Any, stop: asyncio.Event, *, replicas: int = 1, batch: int = 1000, shards: int = 1) -> int:
    """Copy JB_EVT (every JB_EVT_k) to JB_ACCT and JB_TAPE until `stop` is set; returns the position reached."""
    return await FanOut(nc, batch=batch, replicas=replicas, shards=shards).run(stop)
