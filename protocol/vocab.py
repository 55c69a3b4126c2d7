"""The protocol's small vocabularies: sides, time in force, market states and phases, and what parse checks against.

`Literal` types of plain str, not StrEnums: these values are read and written
on every order and packed by msgpack, so they stay ordinary str objects (the
wire bytes are the same either way, a plain str is just cheaper), while mypy
still refuses a misspelt one where a variable is typed with them.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

PairSide = Literal["buy", "sell"]
OddsSide = Literal["back", "lay"]
Side = Literal[PairSide, OddsSide]
Tif = Literal["gtc", "ioc", "fok", "post_only"]
Stp = Literal["cancel_resting", "cancel_newest", "cancel_both"]
Persistence = Literal["lapse", "persist"]
MarketKind = Literal["pair", "odds"]
# Odds markets only: one direct book per runner, or two runners matched through the implied price too.
BookType = Literal["multi_runner", "two_runner"]
OrderType = Literal["limit", "market"]
# A market's state: the first three can be set by set_market_state; the rest are the end of its life.
SettableState = Literal["open", "suspended", "halted"]
TerminalState = Literal["closed", "settled", "voided"]
MarketState = Literal[SettableState, TerminalState]
# Before the event (pre) or during it (in_play); go_live moves a market from one to the other.
Phase = Literal["pre", "in_play"]

PAIR_SIDES: Final[tuple[PairSide, ...]] = get_args(PairSide)
ODDS_SIDES: Final[tuple[OddsSide, ...]] = get_args(OddsSide)
SIDES: Final[tuple[Side, ...]] = PAIR_SIDES + ODDS_SIDES
TIFS: Final[tuple[Tif, ...]] = get_args(Tif)
STP_MODES: Final[tuple[Stp, ...]] = get_args(Stp)
PERSISTENCE: Final[tuple[Persistence, ...]] = get_args(Persistence)
MARKET_KINDS: Final[tuple[MarketKind, ...]] = get_args(MarketKind)
BOOK_TYPES: Final[tuple[BookType, ...]] = get_args(BookType)
ORDER_TYPES: Final[tuple[OrderType, ...]] = get_args(OrderType)
SETTABLE_STATES: Final[tuple[SettableState, ...]] = get_args(SettableState)
TERMINAL: Final[tuple[TerminalState, ...]] = get_args(TerminalState)
MARKET_STATES: Final[tuple[MarketState, ...]] = SETTABLE_STATES + TERMINAL
PHASES: Final[tuple[Phase, ...]] = get_args(Phase)
