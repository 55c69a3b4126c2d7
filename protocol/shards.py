"""Market shards: which shard decides a market, and the names of a shard's streams (issue 15).

One stream has one leader, so one JB_CMD/JB_EVT pair bounds the venue. With N
shards each shard k has its own JB_CMD_k and JB_EVT_k, and the broker routes a
market to its shard with the account's subject mappings:

    jb.cmd.<m>.<a>  ->  jbs.<partition(m)>.cmd.<m>.<a>
    jb.ctl.<m>      ->  jbs.<partition(m)>.ctl.<m>

`partition` is NATS's own `{{partition(N,1)}}` mapping function (FNV-1a 32 of
the market token, modulo N), so a market's commands and controls always reach
the same shard, and `partition` below tells the engine which markets are its
own: the server checks permissions on the mapped subject, so a trader allowed
`jbs.*.cmd.*.<self>` can also publish to a wrong shard's subject directly, and
the engine must refuse it. JB_CMD_k takes `jbs.<k>.cmd.>` and `jbs.<k>.ctl.>` and stores
them back as `jb.>` (a stream subject transform), so the engine parses the subjects it has
always parsed. `cancel_all` on `_all` lands in the shard of the token `_all`;
every other shard's JB_CMD sources those commands from it, so each shard gets
one copy, decided atomically in that shard.

One shard keeps the names of before (JB_CMD, JB_EVT, no mapping), so a data
directory made before shards existed is a one-shard venue.
"""

from __future__ import annotations

from typing import Final

from protocol.subjects import ALL_MARKETS, CMD_PREFIX, CMD_STREAM, CTL_PREFIX, EVT_STREAM, WAL_PREFIX

SHARD_PREFIX: Final = "jbs"
MAX_SHARDS: Final = 64

_FNV_OFFSET: Final = 2166136261
_FNV_PRIME: Final = 16777619


def partition(token: str, shards: int) -> int:
    """The shard of a market token: what the server's `{{partition(shards,1)}}` computes (FNV-1a 32)."""
    if shards == 1:
        return 0
    h = _FNV_OFFSET
    for byte in token.encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h % shards


def check_shards(shards: int) -> None:
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be 1..{MAX_SHARDS}, not {shards}")


def cmd_stream_name(shard: int, shards: int) -> str:
    return CMD_STREAM if shards == 1 else f"{CMD_STREAM}_{shard}"


def evt_stream_name(shard: int, shards: int) -> str:
    return EVT_STREAM if shards == 1 else f"{EVT_STREAM}_{shard}"


def shard_root(shard: int) -> str:
    """The root of shard k's subjects: .cmd and .ctl (its command stream, stored back as jb.>) and .wal."""
    return f"{SHARD_PREFIX}.{shard}"


def wal_prefix(shard: int, shards: int) -> str:
    """Where shard k's engine publishes its events; JB_EVT_k stores them as jb.evt.> like JB_EVT."""
    return WAL_PREFIX if shards == 1 else f"{SHARD_PREFIX}.{shard}.wal"


def all_markets_shard(shards: int) -> int:
    """The shard whose command stream receives `_all` commands first; the others source them from it."""
    return partition(ALL_MARKETS, shards)


def mappings(shards: int) -> dict[str, str]:
    """The account subject mappings that route each market to its shard (none for one shard)."""
    if shards == 1:
        return {}
    part = f"{{{{partition({shards},1)}}}}"
    return {
        f"{CMD_PREFIX}.*.*": f"{SHARD_PREFIX}.{part}.cmd.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
        f"{CTL_PREFIX}.*": f"{SHARD_PREFIX}.{part}.ctl.{{{{wildcard(1)}}}}",
    }


def trader_cmd_subject(account: str, shards: int) -> str:
    """What a trader may publish commands on: permissions apply to the mapped subject."""
    return f"{CMD_PREFIX}.*.{account}" if shards == 1 else f"{SHARD_PREFIX}.*.cmd.*.{account}"
