"""The cluster path: deploy/cluster/check.sh on three real nats-servers on loopback."""

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
        "left both streams R3",
        "demo after failover",
        "OK: 3-node cluster",
    ):
        assert line in out, (line, out[-4000:])
