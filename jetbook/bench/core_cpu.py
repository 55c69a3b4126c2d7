"""jetbook's core alone on the peer's workload: CPU time of the Engine.handle loop, and what it produced.

    python -m jetbook.bench.core_cpu [--commands 200000] [--runs 3] [--seed 1]

The wall-clock ratio of `jetbook.bench.peer` swings with whatever else the
machine runs; process CPU time of jetbook's loop alone (the same loop as
`run_jetbook`) moves less, so changes to the core are compared with this,
trees alternated. After the timed runs, one untimed pass prints the sha256 of
every event the workload produced (jb.wal subject, length, bytes, in order:
checkpoints, and so the state hashes they carry, included) and the final
state hash: two trees that must decide alike must print the same two
digests. Needs the peer's wheel for its workload generator (fetched as
`jetbook.bench.peer` fetches it). Not a test: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from engine.core import Engine, state_hash
from jetbook.bench.peer import _TS, PeerUnavailable, load_peer, workloads


def cpu_run(items: list[tuple[str, bytes]], create: tuple[str, bytes]) -> float:
    """CPU seconds of Engine.handle over the commands, the market created first (untimed)."""
    engine = Engine()
    engine.handle(1, _TS, *create)
    handle = engine.handle
    gc.collect()
    t0 = time.process_time()
    for seq, (subject, data) in enumerate(items, 2):
        handle(seq, _TS + seq, subject, data)
    return time.process_time() - t0


def digests(items: list[tuple[str, bytes]], create: tuple[str, bytes]) -> tuple[str, str]:
    """(sha256 of every event's subject, length and bytes in order, the final state hash)."""
    engine = Engine()
    events = hashlib.sha256()
    for seq, (subject, data) in enumerate([create, *items], 1):
        engine.handle(seq, _TS + seq, subject, data)
        for wal, payload in engine.payloads:
            events.update(wal.encode())
            events.update(len(payload).to_bytes(4, "big"))
            events.update(payload)
    return events.hexdigest(), state_hash(engine.state)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jetbook-peer-") as tmp:
        try:
            load_peer(Path(tmp))
        except PeerUnavailable as err:
            print(f"the peer is unavailable: {err}", file=sys.stderr)
            return 2
        _, items, create = workloads(args.commands, args.seed)
    for run in range(1, args.runs + 1):
        cpu = cpu_run(items, create)
        print(f"run {run}: {args.commands / cpu:,.0f} cmds/s CPU ({cpu:.3f} s)", flush=True)
    events, state = digests(items, create)
    print(f"events sha256 {events}\nstate hash {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
