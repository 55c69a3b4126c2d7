"""Configuration that is not a command-line flag, and the credentials file of a locked-down `jetbook up`.

Each flag of `jetbook` also reads its JETBOOK_* environment variable (typer's
`envvar`), so the flags are the one place their defaults live; this holds the
rest.

The credentials file (`<data dir>/credentials.json`, mode 0600) holds one
generated password per role user of the embedded server, and one per trader.
It is created once and reused on every restart, so a running client's
password stays valid. `jetbook up` also records, in a per-user index of
running stacks, which file belongs to which server address: a client given
only `--nats-url` finds its password there, and never sends it to a server
the file was not written for.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "nats://127.0.0.1:4222"  # where `jetbook up` puts its embedded server by default
CREDENTIALS_FILE = "credentials.json"
ROLES = ("engine", "projection", "fanout", "gateway", "operator", "query")  # service users; any other user is a trader
DEFAULT_TRADERS = ("alice", "bob", "carol", "dave")  # the accounts of the README and the demo


def log_level() -> str:
    """JETBOOK_LOG_LEVEL, the one setting that is not a flag (pydantic-settings went: it held only this)."""
    return os.environ.get("JETBOOK_LOG_LEVEL", "INFO")


def valid_trader(name: str) -> bool:
    """A trader's user name is its account, the last subject token, so it must be one plain token."""
    return (
        bool(name)
        and name not in ROLES
        and name.isascii()
        and all(c.isalnum() or c in "-_" for c in name)
        and name not in ("sys",)
    )


@dataclass
class Credentials:
    """User name to password; a role's user name is the role, a trader's is its account."""

    path: Path
    users: dict[str, str] = field(default_factory=dict)
    url: str = ""

    @property
    def traders(self) -> list[str]:
        return sorted(u for u in self.users if u not in ROLES)

    def login(self, role: str) -> dict[str, str]:
        """The user for `role`; a role with no user of its own (a client with no trader login) acts as operator."""
        user = role if role in self.users else "operator"
        return {"user": user, "password": self.users[user]}

    def save(self) -> None:
        """Write atomically, 0600 from the first byte: a temp file opened with O_EXCL and mode 0600, then rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"url": self.url, "users": self.users}, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Credentials:
        data = json.loads(path.read_text())
        return cls(path=path, users=dict(data["users"]), url=str(data.get("url", "")))

    @classmethod
    def load_or_create(cls, path: Path, traders: Iterable[str]) -> Credentials:
        """Reuse the passwords already there (clients may hold them); add a user for each role and new trader."""
        creds = cls.load(path) if path.exists() else cls(path=path)
        if path.exists():
            os.chmod(path, 0o600)  # an old or copied file: never leave it readable by others
        wanted = [*ROLES, *traders]
        changed = not path.exists()
        for user in wanted:
            if user not in creds.users:
                creds.users[user] = secrets.token_urlsafe(24)
                changed = True
        if changed:
            creds.save()
        return creds


def _hostport(url: str) -> str:
    parsed = urlsplit(url if "://" in url else f"nats://{url}")
    return f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 4222}"


def stacks_dir(env: Mapping[str, str] | None = None) -> Path:
    """The per-user index of running `jetbook up` stacks: server address -> credentials file."""
    env = os.environ if env is None else env
    if env.get("JETBOOK_STATE_DIR"):
        return Path(env["JETBOOK_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "jetbook" / "stacks"


def _index_entry(url: str, env: Mapping[str, str] | None = None) -> Path:
    return stacks_dir(env) / (_hostport(url).replace(":", "_") + ".json")


def register_stack(url: str, creds_path: Path) -> Path:
    """Record this stack; drop entries of stacks whose data dir is gone (a supervisor killed with SIGKILL)."""
    entry = _index_entry(url)
    entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in entry.parent.glob("*.json"):
        try:
            if not Path(json.loads(old.read_text())["credentials"]).exists():
                old.unlink()
        except (OSError, ValueError, KeyError):
            continue
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "credentials": str(creds_path.resolve())}, f)
    os.replace(tmp, entry)
    return entry


def unregister_stack(url: str, creds_path: Path) -> None:
    entry = _index_entry(url)
    try:
        if json.loads(entry.read_text()).get("credentials") == str(creds_path.resolve()):
            entry.unlink()
    except (OSError, ValueError):
        pass


def find_for_url(servers: list[str], env: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials file for one of these servers, or None (then the client connects without a user).

    An explicit JETBOOK_CREDENTIALS or JETBOOK_DATA_DIR is trusted as given;
    ./.jetbook and the index of running stacks only when written for this address.
    """
    env = os.environ if env is None else env
    wanted = {_hostport(s) for s in servers}
    explicit = env.get("JETBOOK_CREDENTIALS") or (
        str(Path(env["JETBOOK_DATA_DIR"]) / CREDENTIALS_FILE) if env.get("JETBOOK_DATA_DIR") else ""
    )
    if explicit:
        path = Path(explicit)
        return Credentials.load(path) if path.exists() else None
    candidates = [Path(".jetbook") / CREDENTIALS_FILE]
    for hp in sorted(wanted):
        try:
            candidates.append(Path(json.loads(_index_entry(hp, env).read_text())["credentials"]))
        except (OSError, ValueError, KeyError):
            pass
    for path in candidates:
        try:
            creds = Credentials.load(path)
        except (OSError, ValueError, KeyError):
            continue
        if creds.url and _hostport(creds.url) in wanted:
            return creds
    return None


VENUE_FILE = "venue.json"  # in the data dir: what `jetbook up` made the venue with (its number of market shards)


def venue_file_shards(data_dir: Path) -> int | None:
    """The shard count `jetbook up` recorded for this data dir; None if it recorded none (a new or older dir).

    Read before the embedded server starts: its permissions and mappings depend on the count, and a server
    started with the wrong ones could not even look at the other count's streams to say so.
    """
    try:
        return int(json.loads((data_dir / VENUE_FILE).read_text())["shards"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f'{data_dir / VENUE_FILE} is damaged ({err}); it should read {{"shards": N}}') from err


def record_venue_shards(data_dir: Path, shards: int) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / VENUE_FILE).write_text(json.dumps({"shards": shards}) + "\n")
