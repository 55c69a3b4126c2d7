"""The benchmark's own child processes, their CPU time, and a probe of the streams and the read model.

Only the processes a benchmark started are ever signalled (never by name), on
success, on error and on SIGINT/SIGTERM. CPU time comes from /proc, so each
figure can say how the machine's cores were shared out while it was measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.model import decode
from projections import queries
from protocol.process import DIE_WITH_PARENT
from protocol.subjects import CMD_STREAM, EVT_STREAM


class BenchError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class Children:
    """The subprocesses this benchmark started; only these are ever signalled."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[Child] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.logdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=DIE_WITH_PARENT,  # a benchmark killed with SIGKILL leaves nothing running
                env={**os.environ, "JETBOOK_LOG_LEVEL": "INFO", **(env or {})},
            )
        child = Child(name, proc, log)
        self.items.append(child)
        return child

    def check_alive(self) -> None:
        for c in self.items:
            if c.name.startswith("py-spy"):
                continue
            if c.proc.poll() is not None:
                raise BenchError(f"{c.name} exited with {c.proc.returncode}:\n{tail(c.log)}")

    def stop(self, child: Child, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if child.proc.poll() is None:
            try:
                child.proc.send_signal(sig)
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            except ProcessLookupError:
                pass
        if child in self.items:
            self.items.remove(child)

    def stop_all(self) -> None:
        # py-spy first (SIGINT makes it write its profile), then the others, newest first
        for c in reversed(list(self.items)):
            if c.name.startswith("py-spy"):
                self.stop(c, signal.SIGINT, 30.0)
        for c in reversed(list(self.items)):
            self.stop(c)


def role_argv(role: str, url: str, db: Path | None = None, metrics_port: int = 0) -> list[str]:
    """`jetbook engine` / `jetbook project` exactly as production runs them, with this interpreter."""
    argv = [sys.executable, "-m", "jetbook", role, "--nats-url", url]
    if db is not None:
        argv += ["--db", str(db)]
    if metrics_port:
        argv += ["--metrics-port", str(metrics_port)]
    return argv


def py_spy_path() -> Path | None:
    exe = Path(sys.executable).parent / "py-spy"
    return exe if exe.exists() else None


def attach_py_spy(children: Children, target: Child, outdir: Path, rate: int = 200) -> Path:
    """Record `target` with py-spy (raw collapsed stacks, read with `python -m jetbook.bench.spy FILE`)."""
    exe = py_spy_path()
    if exe is None:
        raise BenchError(f"py-spy is not beside {sys.executable} (pip install py-spy)")
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{target.name}.txt"
    argv = [str(exe), "record", "--pid", str(target.proc.pid), "--format", "raw", "--rate", str(rate), "-o", str(out)]
    children.spawn(f"py-spy-{target.name}", argv)
    return out


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- CPU and memory from /proc --------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores)."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    out = {name: cpu_seconds(pid) for name, pid in pids.items()}
    out["bench client"] = time.process_time()
    out["machine"] = machine_busy_seconds()
    return out


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process between two snapshots; "others" is what the rest of the machine used."""
    out = {k: round(b[k] - a[k], 2) for k in a if k in b and k != "machine"}
    if "machine" in a and "machine" in b:
        out["others"] = round(max(0.0, (b["machine"] - a["machine"]) - sum(out.values())), 2)
    return out


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


# --- watching the system --------------------------------------------------------------------------


class Probe:
    """Reads the stream heads and a read model's position (its SQLite file, read-only)."""

    def __init__(self, js: Any, db: Path | None = None) -> None:
        self.js = js
        self.db = db
        self._con: sqlite3.Connection | None = None
        self._evt_last = -1
        self._evt_cmd = 0

    async def last(self, stream: str) -> int:
        return int((await self.js.stream_info(stream)).state.last_seq)

    async def cmd_last(self) -> int:
        return await self.last(CMD_STREAM)

    async def evt(self) -> tuple[int, int]:
        """(JB_EVT last seq, cmd_seq of the event stored there)."""
        last = await self.last(EVT_STREAM)
        if last != self._evt_last:
            if last:
                msg = await self.js.get_msg(EVT_STREAM, last, direct=True)
                self._evt_cmd = decode(msg.data).cmd_seq
            self._evt_last = last
        return last, self._evt_cmd

    def projection(self) -> int:
        if self.db is None:
            return 0
        try:
            if self._con is None:
                if not self.db.exists():
                    return 0
                self._con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            return queries.position(self._con)
        except sqlite3.Error:
            return 0  # not created yet

    def _model(self) -> sqlite3.Connection:
        if self._con is None:
            raise BenchError(f"no read model at {self.db}")
        return self._con

    def counts(self) -> queries.Counts:
        return queries.counts(self._model())

    def book_levels(self) -> list[queries.BookLevel]:
        return queries.book_levels(self._model())

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


async def wait_for(
    what: str, cond: Callable[[], Awaitable[bool]], children: Children, timeout: float, poll: float = 0.02
) -> float:
    """Poll `cond` until it holds (children still alive); the seconds it took. BenchError at the deadline."""
    t0 = time.perf_counter()
    while not await cond():
        children.check_alive()
        if time.perf_counter() - t0 > timeout:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(poll)
    return time.perf_counter() - t0
