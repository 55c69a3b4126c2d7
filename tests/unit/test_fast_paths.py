"""The msgspec fast paths give exactly what the long paths give: the same command, the same event bytes."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import commands.model as model
from commands.model import parse
from events.model import EVENT_TYPES, Fill, MarketCreated, Rejected, encode, make_encoders

SUBJECT = "jb.cmd.M1.alice"
_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(allow_nan=False),
    st.sampled_from(["buy", "sell", "back", "lay", "gtc", "ioc", "fok", "post_only", "limit", "market", "o1", ""]),
    st.text(max_size=5), st.binary(max_size=3), st.lists(st.integers(min_value=-5, max_value=5), max_size=2),
)  # fmt: skip
_keys = st.sampled_from(
    ["type", "v", "client_order_id", "side", "price", "qty", "tif", "order_type", "order_id", "stp", "runner", "x"]
)
_types = st.sampled_from(["place_order", "cancel_order", "amend_order", 1])


def _long(subject: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(model, "_fast_bytes", lambda data: None)
        return parse(subject, data)


@settings(max_examples=300, deadline=None)
@given(ctype=_types, body=st.dictionaries(_keys, _values, max_size=6), tail=st.sampled_from([b"", b"\x00"]))
def test_the_msgspec_parse_path_agrees_with_the_table(ctype: Any, body: dict[str, Any], tail: bytes) -> None:
    body = {"type": ctype, **body} if "type" not in body else body
    data = msgpack.packb(body, use_bin_type=True) + tail
    with pytest.MonkeyPatch.context() as mp:
        assert parse(SUBJECT, data) == _long(SUBJECT, data, mp)


@pytest.mark.parametrize(
    "body",
    [
        {"type": "place_order", "client_order_id": "o1", "side": "buy", "price": 5, "qty": 2},
        {"type": "place_order", "client_order_id": "o1", "side": "lay", "price": 150, "qty": 2, "tif": "post_only"},
        {"type": "place_order", "client_order_id": "o1", "side": "sell", "qty": 2, "order_type": "market"},
        {
            "type": "place_order",
            "client_order_id": "o1",
            "side": "sell",
            "qty": 2,
            "order_type": "market",
            "tif": "fok",
        },
        {"type": "cancel_order", "order_id": 7},
        {"type": "cancel_order", "client_order_id": "o1", "v": 1},
        {"type": "cancel_order", "order_id": 7, "client_order_id": "o1"},
    ],
)
def test_the_everyday_shapes_take_the_fast_path(body: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    data = msgpack.packb(body, use_bin_type=True)
    fast = model._fast_bytes(data)
    assert fast is not None
    assert parse(SUBJECT, data) == _long(SUBJECT, data, monkeypatch)


def _fill(**optional: Any) -> Fill:
    return Fill(
        market_id="M", cmd_seq=2**40, ts=2**63 - 1, trade_id=300, price=70_000, qty=65_536, maker_order_id=1,
        taker_order_id=2**32, maker_account="a", taker_account="b" * 40, taker_side="buy", maker_client_order_id="c",
        taker_client_order_id="d", maker_remaining=0, taker_remaining=-1, runner=None, **optional,
    )  # fmt: skip


@pytest.mark.parametrize(
    "event",
    [
        _fill(),
        _fill(implied=True, maker_runner="r", maker_qty=0, maker_stake=5, taker_stake=0),  # group out whole
        _fill(maker_qty=3),  # implied False drops the whole group, even a set field
        MarketCreated(
            market_id="M",
            cmd_seq=1,
            ts=2,
            kind="pair",
            base="B",
            quote="Q",
            tick_size=1,
            lot_size=1,
            min_qty=1,
            max_qty=2,
            min_price=1,
            max_price=3,
            band_bps=0,
            runners=[],
        ),
        # A single command's reject has no `index` key; a batch instruction's has it.
        Rejected(market_id="M", cmd_seq=1, ts=2, reason="invalid_field", detail="d", account_id="a"),
        Rejected(market_id="M", cmd_seq=1, ts=2, reason="invalid_field", detail="d", account_id="a", index=3),
    ],
)
def test_the_msgspec_encoder_keeps_the_optional_groups(event: Any) -> None:
    assert make_encoders()[type(event)](event) == encode(event)


def test_every_event_class_has_an_encoder() -> None:
    assert set(make_encoders()) == set(EVENT_TYPES.values())


_opt_text = st.one_of(st.none(), st.text(max_size=300))
_opt_int = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**64 - 1))


@settings(max_examples=300, deadline=None)
@given(
    text=st.tuples(st.text(max_size=300), st.text(max_size=70_000), _opt_text, _opt_text, _opt_text),
    ints=st.tuples(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1)),
    order_id=_opt_int,
)
def test_a_single_commands_reject_packs_as_encode_packs_it(
    text: tuple[str, str, str | None, str | None, str | None], ints: tuple[int, int], order_id: int | None
) -> None:
    """Every width of str and int (fixstr to str32, nil, positive and negative ints of each size)."""
    market_id, detail, account_id, command_type, client_order_id = text
    event = Rejected(
        market_id=market_id, cmd_seq=ints[0], ts=ints[1], reason="invalid_field", detail=detail,
        account_id=account_id, command_type=command_type, client_order_id=client_order_id, order_id=order_id,
    )  # fmt: skip
    assert make_encoders()[Rejected](event) == encode(event)
