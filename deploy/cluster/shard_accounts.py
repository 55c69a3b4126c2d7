"""Write deploy/accounts.conf for a venue of N market shards (issue 15): the mappings, and each permission per shard.

    python deploy/cluster/shard_accounts.py 2 < deploy/accounts.conf > /etc/nats/accounts.conf

With N shards the account's subject mappings route jb.cmd.<m>.<a> to
jbs.<partition(m)>.cmd.<m>.<a> (and jb.ctl.<m> likewise), and the server
checks permissions on the MAPPED subject; shard k's streams are JB_CMD_k,
JB_EVT_k and OBJ_JB_SNAP_k, and its engine writes on jbs.<k>.wal.>. So every
permission that names a stream gains one entry per shard, and every jb.cmd /
jb.ctl / jb.wal subject gains its jbs.*. form (in allow and deny lists alike).
The one-shard entries stay: they match nothing on a sharded venue. The
shipped accounts.conf already grants the 2-shard forms but has no mappings
(they would route a one-shard venue's commands away from JB_CMD); what a list
already has is not added twice. A trader
allowed jbs.*.cmd.*.alice may publish to another shard's subject directly; the
engine refuses that command (`wrong_shard`), so the broker's mapping is not a
security boundary and need not be one. Only stdlib: run it anywhere.
"""

from __future__ import annotations

import re
import sys

STREAM_TOKENS = ("JB_CMD", "JB_EVT", "OBJ_JB_SNAP", "JB_SNAP")
ROUTED = ("jb.cmd.", "jb.ctl.", "jb.wal.")


def partition_expr(shards: int) -> str:
    return f"{{{{partition({shards},1)}}}}"


def variants(subject: str, shards: int) -> list[str]:
    """The per-shard forms of one permission subject (none when it names no stream or routed subject)."""
    if subject.startswith(ROUTED):
        return ["jbs.*." + subject[len("jb.") :]]
    tokens = subject.split(".")
    hits = [i for i, t in enumerate(tokens) if t in STREAM_TOKENS]
    if not hits:
        return []
    i = hits[0]
    return [".".join([*tokens[:i], f"{tokens[i]}_{k}", *tokens[i + 1 :]]) for k in range(shards)]


def _widen_list(body: str, shards: int) -> str:
    """One permission list: each subject followed by those of its shard forms the list does not have yet."""
    have = set(re.findall(r'"([^"\s]+)"', body))

    def widen(m: re.Match[str]) -> str:
        extra = [v for v in variants(m.group(1), shards) if v not in have]
        have.update(extra)
        return ", ".join(f'"{x}"' for x in [m.group(1), *extra])

    return "".join(
        line if line.lstrip().startswith("#") else re.sub(r'"([^"\s]+)"', widen, line)
        for line in body.splitlines(keepends=True)
    )


def shard_accounts(text: str, shards: int) -> str:
    # permission lists hold no brackets of their own, so each [...] is one list
    out = re.sub(r"\[[^\[\]]*\]", lambda m: _widen_list(m.group(0), shards), text)
    part = partition_expr(shards)
    mappings = (
        "jetstream: enabled\n\n"
        f"    # {shards} market shards (deploy/cluster/shard_accounts.py): each market to its shard\n"
        "    mappings: {\n"
        f'      "jb.cmd.*.*": "jbs.{part}.cmd.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"\n'
        f'      "jb.ctl.*": "jbs.{part}.ctl.{{{{wildcard(1)}}}}"\n'
        "    }"
    )
    if out.count("jetstream: enabled") != 1:
        raise SystemExit("expected exactly one account with 'jetstream: enabled' (JETBOOK)")
    return out.replace("jetstream: enabled", mappings, 1)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit() or not 2 <= int(sys.argv[1]) <= 64:
        raise SystemExit("usage: shard_accounts.py N (2..64) < accounts.conf > accounts-N.conf")
    sys.stdout.write(shard_accounts(sys.stdin.read(), int(sys.argv[1])))
