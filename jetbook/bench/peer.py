"""jetbook's core beside the PyPI peer `matching-engine` 0.1.1, on the peer's own seeded workload, in one process.

    jetbook bench --peer [--orders 200000] [--runs 2] [--seed 1]
    python -m jetbook.bench.peer [--commands 200000] [--runs 2] [--seed 1]

The peer is fetched anew with pip (`pip download --no-deps --python-version
3.12 --only-binary=:all: matching-engine==0.1.1`) into a temporary directory,
never into the repo. It needs Python >= 3.12 only for two PEP 695 `type X = ...`
aliases, so the throwaway copy has them rewritten as plain assignments.

Both engines get the same commands from `matching_engine.workload.order_flow`
(1,000 accounts, 25% cancels, 5% market IOC, limits within 50 ticks of mid):
the peer as its own msgpack `SequencedCommand`s, decoded by its msgspec
decoder and processed; jetbook as protocol msgpack on jb.cmd.<market>.<account>
through `Engine.handle` (parse, decide, evolve, and the events' encoding, which
the peer does not do). Cancels name the order by client_order_id, since
jetbook numbers orders itself. The one market is created untimed, with no risk
limits. The runs alternate (peer, jetbook, peer, jetbook, ...) so both see the
same machine; the ratio is per pair. Each run also splits jetbook's time per
command into what the peer does not spend (its checkpoints: the same run with
none, subtracted; its encoding: the events packed again, timed apart) and the
rest. Not a test: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import msgpack
import msgspec

from engine.core import CHECKPOINT_EVERY, Engine, state_hash
from events.model import Event, make_encoders

PEER = "matching-engine==0.1.1"
MARKET = "PEER"
_TS = 1_700_000_000_000_000_000
_NEVER = 2**62  # a checkpoint interval no run reaches


class PeerUnavailable(Exception):
    """The peer's wheel could not be fetched (no network, no pip) or loaded."""


def load_peer(workdir: Path) -> Any:
    """Download, unpack and import the peer from workdir; its PEP 695 aliases rewritten for Python 3.11."""
    wheels = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
           "--only-binary=:all:", PEER, "-d", str(wheels), "-q"]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise PeerUnavailable(f"`{' '.join(cmd)}` failed: {detail.strip()[-400:]}") from err
    found = sorted(wheels.glob("matching_engine-*.whl"))
    if not found:
        raise PeerUnavailable(f"pip left no wheel in {wheels}")
    site = workdir / "site"
    with zipfile.ZipFile(found[0]) as whl:
        whl.extractall(site)
    for source in (site / "matching_engine").rglob("*.py"):
        text = source.read_text()
        fixed = re.sub(r"^type (\w+) = ", r"\1 = ", text, flags=re.MULTILINE)
        if fixed != text:
            source.write_text(fixed)
    sys.path.insert(0, str(site))
    try:
        return importlib.import_module("matching_engine")
    except Exception as err:
        raise PeerUnavailable(f"the peer does not import: {type(err).__name__}: {err}") from err


def workloads(commands: int, seed: int) -> tuple[list[bytes], list[tuple[str, bytes]], tuple[str, bytes]]:
    """(the peer's msgpack commands, jetbook's (subject, payload) commands, jetbook's untimed create_market)."""
    domain = importlib.import_module("matching_engine.domain")
    order_flow = importlib.import_module("matching_engine.workload").order_flow
    CancelOrder, NewOrder, OrderType = domain.CancelOrder, domain.NewOrder, domain.OrderType

    peer_enc = msgspec.msgpack.Encoder()
    pack = msgpack.Packer(use_bin_type=True).pack
    peer: list[bytes] = []
    ours: list[tuple[str, bytes]] = []
    for seq, c in enumerate(order_flow(seed, commands), 1):
        peer.append(peer_enc.encode(domain.SequencedCommand(seq, _TS + seq, c)))
        if isinstance(c, CancelOrder):
            body: dict[str, Any] = {"type": "cancel_order", "client_order_id": f"o{c.order_id}"}
        else:
            assert isinstance(c, NewOrder)
            body = {"type": "place_order", "client_order_id": f"o{c.order_id}", "side": str(c.side), "qty": c.qty}
            if c.order_type is OrderType.MARKET:
                body["order_type"] = "market"
                body["tif"] = "ioc"
            else:
                body["price"] = c.price
        ours.append((f"jb.cmd.{MARKET}.a{c.account}", pack(body)))
    create = (f"jb.ctl.{MARKET}", pack({"type": "create_market", "market_id": MARKET, "base": "B", "quote": "Q"}))
    return peer, ours, create


def run_peer(blobs: list[bytes]) -> tuple[float, int]:
    """(seconds, events) of the peer's decode + process loop over its msgpack commands."""
    sequenced = importlib.import_module("matching_engine.domain").SequencedCommand
    decode = msgspec.msgpack.Decoder(sequenced).decode
    process = importlib.import_module("matching_engine.engine").MatchingEngine().process
    events = 0
    gc.collect()
    t0 = time.perf_counter()
    for blob in blobs:
        events += len(process(decode(blob)))
    return time.perf_counter() - t0, events


def run_jetbook(
    items: list[tuple[str, bytes]], create: tuple[str, bytes], checkpoint_every: int = CHECKPOINT_EVERY
) -> tuple[float, int, str]:
    """(seconds, events, state hash) of Engine.handle over the same commands, the market created untimed.

    With a checkpoint_every past the run's event count no checkpoint is hashed: the same decisions without
    it, for the breakdown (a log written so would differ from the venue's in its checkpoints only).
    """
    engine = Engine(checkpoint_every=checkpoint_every)
    engine.handle(1, _TS, *create)
    handle = engine.handle
    events = 0
    gc.collect()
    t0 = time.perf_counter()
    for seq, (subject, data) in enumerate(items, 2):
        events += len(handle(seq, _TS + seq, subject, data))
    elapsed = time.perf_counter() - t0
    return elapsed, events, state_hash(engine.state)


def jetbook_events(items: list[tuple[str, bytes]], create: tuple[str, bytes]) -> list[Event]:
    """Every event Engine.handle gives for the commands (untimed)."""
    engine = Engine()
    out = engine.handle(1, _TS, *create)
    for seq, (subject, data) in enumerate(items, 2):
        out += engine.handle(seq, _TS + seq, subject, data)
    return out


def encode_seconds(events: list[Event]) -> float:
    """What Engine.handle spends packing those events to their wire bytes, timed apart (the peer packs none)."""
    enc = make_encoders()
    gc.collect()
    t0 = time.perf_counter()
    for e in events:
        enc[type(e)](e)
    return time.perf_counter() - t0


def compare(commands: int, runs: int, seed: int, workdir: Path | None = None) -> dict[str, Any]:
    """Fetch the peer, build both workloads, run them alternately; every figure, per run."""
    with tempfile.TemporaryDirectory(prefix="jetbook-peer-") as tmp:
        load_peer(workdir or Path(tmp))
        peer_blobs, ours, create = workloads(commands, seed)
        pack_s = encode_seconds(jetbook_events(ours, create))  # once: a C loop, steady between runs
        rows: list[dict[str, Any]] = []
        for _ in range(runs):
            p_s, p_events = run_peer(peer_blobs)
            j_s, j_events, digest = run_jetbook(ours, create)
            bare_s = run_jetbook(ours, create, checkpoint_every=_NEVER)[0]
            us = 1e6 / commands
            rows.append({
                "peer_cmds_per_s": round(commands / p_s), "peer_events": p_events,
                "jetbook_cmds_per_s": round(commands / j_s), "jetbook_events": j_events,
                "ratio": round(p_s / j_s, 3), "state_hash": digest,
                # µs per command: the peer's, and jetbook's split into what the peer does not do and the rest
                "peer_us": round(p_s * us, 2), "jetbook_us": round(j_s * us, 2),
                "checkpoints_us": round((j_s - bare_s) * us, 2), "encoding_us": round(pack_s * us, 2),
                "rest_us": round((bare_s - pack_s) * us, 2),
            })  # fmt: skip
    return {"peer": PEER, "commands": commands, "seed": seed, "runs": rows}


def print_comparison(doc: dict[str, Any]) -> None:
    print(f"{doc['peer']} vs jetbook Engine.handle: {doc['commands']:,} commands of order_flow(seed={doc['seed']})")
    print(f"{'run':>4}{'peer cmds/s':>14}{'events':>10}{'jetbook cmds/s':>17}{'events':>10}{'jetbook/peer':>14}")
    for i, r in enumerate(doc["runs"], 1):
        print(f"{i:>4}{r['peer_cmds_per_s']:>14,}{r['peer_events']:>10,}{r['jetbook_cmds_per_s']:>17,}"
              f"{r['jetbook_events']:>10,}{r['ratio']:>13.2f}x")  # fmt: skip
    print("µs per command: the peer's, and jetbook's split (checkpoints: the run without them, subtracted;")
    print("encoding: its events packed again, timed apart; the rest: parse, decide, fold, with the accounting)")
    print(f"{'run':>4}{'peer':>8}{'jetbook':>9}{'checkpoints':>13}{'encoding':>10}{'the rest':>10}{'rest/peer':>11}")
    for i, r in enumerate(doc["runs"], 1):
        print(f"{i:>4}{r['peer_us']:>8.2f}{r['jetbook_us']:>9.2f}{r['checkpoints_us']:>13.2f}{r['encoding_us']:>10.2f}"
              f"{r['rest_us']:>10.2f}{r['rest_us'] / r['peer_us']:>10.2f}x")  # fmt: skip
    if len({r["state_hash"] for r in doc["runs"]}) > 1:
        print("problem: jetbook's state hash differs between runs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        doc = compare(args.commands, args.runs, args.seed)
    except PeerUnavailable as err:
        print(f"the peer is unavailable: {err}", file=sys.stderr)
        return 2
    print_comparison(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
