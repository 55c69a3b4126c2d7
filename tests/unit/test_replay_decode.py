"""events.logged's fast decoder gives exactly what events.model.decode gives, for every event type and odd layouts."""

from __future__ import annotations

import typing
from typing import Any

import msgpack
import pytest

from events.logged import decode_fast
from events.model import EVENT_TYPES, Event, decode, encode


def _sample(annotation: Any, i: int) -> Any:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)[i % len(typing.get_args(annotation))]
    text = str(annotation)
    if "list" in text:
        return [[f"x{i}", i]]
    if "int" in text:
        return 1000 + i
    if "bool" in text:
        return i % 2 == 0
    return f"s{i}"


def example(cls: type[Event]) -> Event:
    hints = typing.get_type_hints(cls)
    return cls(**{name: _sample(hints[name], i) for i, name in enumerate(cls.__struct_fields__)})


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_every_event_type_decodes_the_same(kind: str) -> None:
    event = example(EVENT_TYPES[kind])
    data = encode(event)
    assert decode_fast(data) == decode(data) == event
    assert type(decode_fast(data)) is type(event)


@pytest.mark.parametrize("kind", sorted(EVENT_TYPES))
def test_other_layouts_go_through_decode(kind: str) -> None:
    body = msgpack.unpackb(encode(example(EVENT_TYPES[kind])))
    reordered = dict(reversed(list(body.items())))
    with_extra = {**body, "future_field": 1}
    for variant in (reordered, with_extra):
        data = msgpack.packb(variant)
        assert decode_fast(data) == decode(data)


def test_what_decode_refuses_decode_fast_refuses() -> None:
    for data in (msgpack.packb({"type": "no_such_event"}), msgpack.packb([1, 2]), b"\xc1"):
        with pytest.raises(Exception) as expected:
            decode(data)
        with pytest.raises(type(expected.value)):
            decode_fast(data)
