"""The same command log gives the same event bytes and state hash as the core did before issue 10's split.

The digests below were computed by the pre-split core (engine/core.py as one
file, events built positionally, commit 1566772) on the seeded log that
`golden_log` builds. The split, the typed vocabularies and the keyword-built
events must not change one byte: a changed digest here means re-deciding an
old JB_CMD log would no longer give the events it gave, which `replay verify`
would report as a divergence. Never update these constants to make a refactor
pass; only a deliberate, documented protocol change may.

The log covers pair and odds markets, the whole market lifecycle (states,
await/go live, close, settle, void), risk limits, places of every tif and type,
amends, cancels, cancel_all, undecodable bytes, bad subjects and many rejects,
with checkpoints every 500 events so the state hash is also on the wire.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import msgpack

from engine.core import Engine, state_hash

# Computed by the pre-split core (see the module docstring); do not edit.
GOLDEN_EVENTS_SHA256 = "6694b7313766af0a21e7794608028df5b430e1d153edb4d13dd7c26d8d49965a"
GOLDEN_STATE_HASH = "5d1df20a364b6f2ce8d9198f415c1f521ad8e60065b1452ac36235b81b9c721d"
GOLDEN_EVENT_COUNT = 14407

PAIRS = ("P1", "P2")
ODDS = ("O1", "O2")
RUNNERS = ("r1", "r2", "r3")


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def golden_log(n: int = 12000, seed: int = 10) -> list[tuple[str, bytes]]:
    """(subject, payload) of a seeded log; it depends on nothing but the seed, never on the engine."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []

    def ctl(market: str, body: dict[str, Any]) -> None:
        out.append((f"jb.ctl.{market}", _pack(body)))

    for m in PAIRS:
        ctl(
            m,
            {"type": "create_market", "market_id": m, "base": "B", "quote": "Q", "band_bps": 2000 if m == "P2" else 0},
        )
    for m in ODDS:
        ctl(m, {"type": "create_market", "market_id": m, "kind": "odds", "quote": "GBP",
                "runners": [{"runner_id": r, "label": r.upper()} for r in RUNNERS[:2]]})  # fmt: skip
    coid = 0
    markets = list(PAIRS + ODDS)
    kinds = dict.fromkeys(PAIRS, "pair") | dict.fromkeys(ODDS, "odds")
    placed: dict[str, int] = {}  # places sent per market: about the newest order id, so cancels and amends hit
    for i in range(n):
        m = rng.choice(markets)
        odds = kinds[m] == "odds"
        account = f"a{rng.randrange(8)}"
        subject = f"jb.cmd.{m}.{account}"
        r = rng.random()
        recent = placed.get(m, 0)
        if r < 0.50:
            placed[m] = recent + 1
            coid += 1
            side = rng.choice(("back", "lay") if odds else ("buy", "sell"))
            if rng.random() < 0.03:
                side = rng.choice(("buy", "sell", "back", "lay"))
            if odds:
                price = rng.choice((150, 151, 200, 202, 250, 300, 305, 310, 400, 173))
            else:
                price = 1000 + rng.randrange(-20, 21)
            body: dict[str, Any] = {"type": "place_order", "client_order_id": f"c{coid}", "side": side,
                                    "qty": rng.choice((1, 2, 3, 5, 8, 13, 0, 10**10)) if rng.random() < 0.05
                                    else rng.randrange(1, 20)}  # fmt: skip
            if rng.random() < 0.1:
                body["order_type"] = "market"
                if rng.random() < 0.5:
                    body["protection_price"] = price
            else:
                body["price"] = price
            if rng.random() < 0.3:
                body["tif"] = rng.choice(("gtc", "ioc", "fok", "post_only", "day"))
            if rng.random() < 0.2:
                body["stp"] = rng.choice(("cancel_resting", "cancel_newest", "cancel_both"))
            if odds:
                body["runner"] = rng.choice(RUNNERS)
                if rng.random() < 0.3:
                    body["persistence"] = rng.choice(("lapse", "persist"))
            if rng.random() < 0.02:
                coid -= 1  # a repeated client_order_id
            out.append((subject, _pack(body)))
        elif r < 0.70:
            if rng.random() < 0.7:
                ref: dict[str, Any] = {"order_id": rng.randrange(max(1, recent - 40), recent + 2)}
            else:
                ref = {"client_order_id": f"c{rng.randrange(1, coid + 2)}"}
            out.append((subject, _pack({"type": "cancel_order", **ref})))
        elif r < 0.82:
            body = {"type": "amend_order", "order_id": rng.randrange(max(1, recent - 40), recent + 2)}
            if rng.random() < 0.6:
                body["qty"] = rng.randrange(1, 25)
            if rng.random() < 0.5:
                body["price"] = rng.choice((150, 200, 202, 300)) if odds else 1000 + rng.randrange(-20, 21)
            out.append((subject, _pack(body)))
        elif r < 0.85:
            body = {"type": "cancel_all"}
            if rng.random() < 0.3:
                body["side"] = rng.choice(("buy", "sell", "back", "lay"))
            target = "_all" if rng.random() < 0.2 else m
            out.append((f"jb.cmd.{target}.{account}", _pack(body)))
        elif r < 0.90:
            body = {"type": "set_risk_limits", "account_id": account}
            for k, choices in (("max_order_qty", (5, 10, 50)), ("max_open_orders", (2, 5, 20)),
                               ("max_open_exposure", (5000, 50000, 10**6))):  # fmt: skip
                if rng.random() < 0.5:
                    body[k] = rng.choice(choices)
            ctl(m, body)
        elif r < 0.93:
            t = rng.choice(("set_market_state", "set_market_state", "await_live", "go_live", "go_live", "add_runner"))
            body = {"type": t}
            if t == "set_market_state":
                body["state"] = rng.choice(("open", "open", "open", "suspended", "halted"))
            elif t == "add_runner":
                body["runner_id"] = rng.choice((*RUNNERS, "r4"))
                body["label"] = "X"
            ctl(m, body)
        elif r < 0.95:
            # The end of a market's life, then a fresh market under a new id so trading goes on.
            t = rng.choice(("close_market", "settle_market", "void_market"))
            body = {"type": t}
            if t == "settle_market":
                if odds:
                    body["winner"] = rng.choice(RUNNERS)
                else:
                    body["price"] = 1000 + rng.randrange(-5, 6)
            ctl(m, body)
            if t == "settle_market" and rng.random() < 0.5:
                ctl(m, {"type": "close_market"})
                ctl(m, body)
            if rng.random() < 0.7:
                fresh = f"{m[:2]}n{i}"
                kinds[fresh] = kinds[m]
                markets[markets.index(m)] = fresh
                body = {"type": "create_market", "market_id": fresh, "quote": "Q", "base": "B"}
                if odds:
                    body = {"type": "create_market", "market_id": fresh, "kind": "odds", "quote": "GBP",
                            "runners": [{"runner_id": r, "label": r.upper()} for r in RUNNERS]}  # fmt: skip
                ctl(fresh, body)
        elif r < 0.99:
            # Garbage: undecodable bytes, a bad subject, an unknown type, a non-map body.
            g = rng.randrange(5)
            if g == 0:
                out.append((subject, b"\xc1\xff"))
            elif g == 1:
                out.append((f"jb.cmd.{m}", _pack({"type": "place_order"})))
            elif g == 2:
                out.append((subject, _pack({"type": "teleport"})))
            elif g == 3:
                out.append((subject, _pack([1, 2, 3])))
            else:
                out.append(("jb.ctl.no-such", _pack({"type": "close_market"})))
        else:
            ctl(m, {"type": "create_market", "market_id": m, "quote": "Q", "base": "B"})  # market_exists
    return out


def run(log: list[tuple[str, bytes]]) -> tuple[str, str, int]:
    """(sha256 of every event's subject and bytes in order, the final state hash, events) of one run of the core."""
    engine = Engine(checkpoint_every=500)
    digest = hashlib.sha256()
    count = 0
    for seq, (subject, data) in enumerate(log, 1):
        engine.handle(seq, 1_700_000_000_000_000_000 + seq * 1000, subject, data)
        for wal, payload in engine.payloads:
            digest.update(wal.encode() + b"\0" + len(payload).to_bytes(4, "big") + payload)
            count += 1
    return digest.hexdigest(), state_hash(engine.state), count


def test_a_seeded_log_gives_the_pre_split_bytes_and_hash() -> None:
    assert run(golden_log()) == (GOLDEN_EVENTS_SHA256, GOLDEN_STATE_HASH, GOLDEN_EVENT_COUNT)


if __name__ == "__main__":  # prints the figures to paste above, from whatever core is checked out
    print(run(golden_log()))
