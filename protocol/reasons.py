"""Every reject reason a `rejected` event can carry: the protocol's vocabulary, at the bottom so every layer shares it.

A `Literal` of plain str rather than a StrEnum: the reasons are written into
events on the hot path and packed by msgpack, and plain str constants cost
nothing there while still letting mypy refuse a reason that is not in the list.
docs/PROTOCOL.md ("Every reason") lists exactly these; tests/unit/test_vocab.py
holds the two to each other. Adding a reason is a protocol change: add it here
and to that table together.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Reason = Literal[
    # parse stage (commands/model.py)
    "invalid_subject",
    "malformed",
    "missing_field",
    "unknown_type",
    "wrong_subject",
    "unsupported_version",
    "unknown_field",
    "invalid_field",
    "invalid_market_id",
    "invalid_side",
    "invalid_qty",
    "invalid_price",
    "invalid_tif",
    "market_mismatch",
    "account_mismatch",
    "too_many_instructions",
    # engine stage (engine/decide.py)
    "market_exists",
    "unknown_market",
    "not_odds_market",
    "runner_exists",
    "too_many_runners",
    "runners_fixed",
    "too_many_markets",
    "too_many_open_orders",
    "amount_out_of_range",
    "unknown_runner",
    "illegal_transition",
    "market_closed",
    "market_not_open",
    "market_halted",
    "off_tick",
    "price_out_of_range",
    "outside_price_band",
    "off_lot",
    "qty_below_min",
    "qty_above_max",
    "duplicate_client_order_id",
    "max_order_qty_exceeded",
    "max_open_orders_exceeded",
    "max_open_exposure_exceeded",
    "post_only_would_take",
    "fok_not_filled",
    "too_many_fills",
    "too_many_events",
    "no_change",
    "unknown_order",
    "order_not_open",
    "not_order_owner",
    # market shards (engine/core.py): a market another shard decides
    "wrong_shard",
    # either stage: a bug caught (engine/core.py)
    "internal_error",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
