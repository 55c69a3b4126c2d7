"""The odds ladder, and how a two_runner market's orders on one runner are shown on the other's ladder.

Pure integer arithmetic on decimal odds x 100, shared by the engine (which prices are on the ladder), the
read side (projections' snapshot), the screen and the bots (tui steps along the ladder), which may not import
each other. The implied prices are for showing only: matching compares the exact implied ratio
(engine/book.py, PROTOCOL section 11.1), never these rounded prices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# Decimal odds x 100 on the standard betting-exchange ladder: (from, to, step). The engine decides with it
# (engine/decide.py), so this module is part of the pure core and of the snapshot fingerprint.
ODDS_LADDER: Final = (
    (101, 200, 1), (200, 300, 2), (300, 400, 5), (400, 600, 10), (600, 1000, 20),
    (1000, 2000, 50), (2000, 3000, 100), (3000, 5000, 200), (5000, 10000, 500), (10000, 100000, 1000),
)  # fmt: skip
ODDS_MIN: Final = 101
ODDS_MAX: Final = 100_000

# The side an order on the other runner shows as on this one: a back on B is a lay on A, a lay on B a back on A.
IMPLIED_SIDE: Final = {"back": "lay", "lay": "back"}


def odds_step(price: int, up: bool) -> int:
    """The next price on the odds ladder above (or below) `price`, which need not be on it; clamped to the ends."""
    if up:
        for lo, hi, step in ODDS_LADDER:
            if price < hi:
                nxt = lo if price < lo else lo + ((price - lo) // step + 1) * step
                return min(nxt, ODDS_MAX)
        return ODDS_MAX
    for lo, hi, step in reversed(ODDS_LADDER):
        if price > lo:
            top = min(price, hi)
            prv = lo + ((top - lo - 1) // step) * step
            return max(prv, ODDS_MIN)
    return ODDS_MIN


def on_ladder(price: int) -> bool:
    if price == ODDS_MAX:
        return True
    return any(lo <= price < hi and (price - lo) % step == 0 for lo, hi, step in ODDS_LADDER)


def implied_price(side: str, price: int) -> int | None:
    """Where an order at `price` on the other runner shows on this runner's ladder; None when off the ladder.

    The exact implied odds are 100 x P / (P - 100). A back there shows as a lay here rounded UP to the next
    tick, a lay as a back rounded DOWN: the quoting rule issue 13 states. A rounded-down back below 1.01
    cannot be shown.
    """
    num, den = 100 * price, price - 100
    if side == "back":
        p = -(-num // den)
        return p if on_ladder(p) else odds_step(p, True)
    p = num // den
    if p < ODDS_MIN:
        return None
    return p if on_ladder(p) else odds_step(p, False)


def implied_qty(price: int, qty: int) -> int:
    """Whole units of this runner that `qty` at `price` on the other runner covers: floor(qty x (P - 100) / 100).

    A back maker's stake of `qty` risks what a lay of qty x (P-100)/100 here would; a lay maker's liability
    of qty x (P-100)/100 wins what a back of that size here would. Floored: shown, never more than is there.
    """
    return qty * (price - 100) // 100


def implied_levels(side: str, levels: Iterable[tuple[int, int]]) -> dict[int, int]:
    """The other runner's `side` levels (price, qty) as this runner's IMPLIED_SIDE[side] levels: price -> qty.

    Several of the other runner's prices may round to one tick here; their quantities add up. A level
    that covers no whole unit, or has no showable price, is left out.
    """
    out: dict[int, int] = {}
    for price, qty in levels:
        p, q = implied_price(side, price), implied_qty(price, qty)
        if p is not None and q > 0:
            out[p] = out.get(p, 0) + q
    return out
