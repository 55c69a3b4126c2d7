"""Summarise a py-spy raw (collapsed stacks) profile: the functions with the most samples.

    python -m jetbook.bench.spy SPY_DIR/engine.txt [--top 30] [--grep engine/]

"self" is samples where the function was the innermost frame, "total" is samples
where it was anywhere on the stack (counted once per sample). Line numbers are
dropped, so a function's lines add up.
"""

from __future__ import annotations

import argparse
import re
import signal
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self counts, inclusive counts) of a py-spy raw file."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    n = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        n += c
        frames = [frame_key(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    return n, own, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--grep", default="", help="only list functions whose key contains this")
    args = ap.parse_args()
    n, own, total = summarise(args.file.read_text())
    print(f"{n} samples in {args.file}")
    for title, counter in (("self", own), ("total (inclusive)", total)):
        print(f"\n-- by {title} --")
        shown = 0
        for key, c in counter.most_common():
            if args.grep and args.grep not in key:
                continue
            print(f"{c:>7} {c / max(n, 1):6.1%}  {key}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` is fine
    main()
