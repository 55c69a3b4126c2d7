"""The cluster path: deploy/cluster/check.sh on three real nats-servers on loopback, TLS and route auth on.

Besides the demo, R3 and the trader's refusals, the script restarts the
engine, kills the active engine with -9 so that its standby takes over, and
restarts the projection, each as its own user under deploy/accounts.conf,
checking progress after each and that no permission was violated.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_three_node_cluster_check_passes() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        ["bash", str(ROOT / "deploy" / "cluster" / "check.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    for line in (
        "took 10 from alice order 1 at 300000",
        "JB_EVT: num_replicas 3",
        "alice publishes on jb.cmd.ETH-USDC.bob: refused",
        "alice publishes on jb.wal.>: refused",
        "alice creates a JB_EVT consumer: refused",
        "alice deletes JB_EVT: refused",
        "alice reads JB_EVT live: refused",
        "alice listens on the engine's inbox: refused",
        "engine restarted (user engine): recovered, then ETH-USDC-2 gave its fill",
        "standby took over: ETH-USDC-3 gave its fill",
        "projection restarted (user projection): caught up with ETH-USDC-3 and ETH-USDC-4",
        "engine restart, standby takeover and projection restart: no permission violations",
        "left both streams R3",
        "demo after failover",
        "OK: 3-node cluster, TLS and route auth",
    ):
        assert line in out, (line, out[-4000:])


def test_two_shards_on_the_cluster_lose_nothing_when_a_node_dies() -> None:
    """deploy/cluster/check_shards.sh: 2 shards, R3, leaders on different nodes, n3 killed under load (issue 15)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        ["bash", str(ROOT / "deploy" / "cluster" / "check_shards.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    for line in (
        "JB_CMD_0: R3, leader n2",
        "JB_EVT_0: R3, leader n2",
        "JB_CMD_1: R3, leader n3",
        "JB_EVT_1: R3, leader n3",
        "n3 killed (kill -9) after 666 of 2000 commands",
        "all 2000 commands acked",
        "JB_CMD_0 holds its",
        "JB_CMD_1 holds its",
        "nothing lost:",
        "OK: 2 shards on 3 nodes",
    ):
        assert line in out, (line, out[-4000:])
