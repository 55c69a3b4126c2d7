"""Who may do what through the gateway: API keys, each bound to one trading account and a role.

A key file (`--api-keys FILE`, JSON) lists `{"keys": [{"key": "...", "account": "alice", "role": "trader"}]}`.
A trader reads and commands its own account only; an operator may read anything and send control commands
(create, suspend, settle a market; risk limits) and act for any account. Without a file the gateway runs
in local development mode: every caller is an operator, and the gateway says so at start.

Keys are compared in constant time and never logged. The account is the key's, never the request's: a
trader's request that names another account is refused, not quietly re-pointed.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from protocol.subjects import is_id

log = logging.getLogger("jetbook.gateway")

Role = Literal["trader", "operator"]
ROLES: Final = ("trader", "operator")
MIN_KEY_CHARS: Final = 16  # a key short enough to guess is refused when the file is read


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: its account (None for a development-mode caller, who may name any) and its role."""

    account: str | None
    role: Role

    def may_act_for(self, account: str | None) -> bool:
        return self.role == "operator" or (account is not None and account == self.account)

    @property
    def may_control(self) -> bool:
        return self.role == "operator"


DEV: Final = Principal(None, "operator")


class KeyFileError(ValueError):
    """The key file is unusable; the gateway refuses to start rather than run open."""


class ApiKeys:
    def __init__(self, keys: dict[str, Principal]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise KeyFileError(f"{path}: {err}") from None
        rows = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            raise KeyFileError(f'{path}: expected {{"keys": [{{"key", "account", "role"}}, ...]}}')
        keys: dict[str, Principal] = {}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise KeyFileError(f"{path}: keys[{i}] is not an object")
            key, account, role = row.get("key"), row.get("account"), row.get("role", "trader")
            if not isinstance(key, str) or len(key) < MIN_KEY_CHARS:
                raise KeyFileError(f"{path}: keys[{i}].key must be a string of at least {MIN_KEY_CHARS} characters")
            if not is_id(account):
                raise KeyFileError(f"{path}: keys[{i}].account must be an account id ([A-Za-z0-9_-]{{1,64}})")
            if role not in ROLES:
                raise KeyFileError(f"{path}: keys[{i}].role must be one of {ROLES}")
            if key in keys:
                raise KeyFileError(f"{path}: keys[{i}] repeats a key")
            keys[key] = Principal(str(account), role)
        return cls(keys)

    def identify(self, key: str | None) -> Principal | None:
        """The key's principal, or None for a missing or unknown key (compared in constant time)."""
        if not key:
            return None
        found: Principal | None = None
        given = key.encode()
        for known, principal in self._keys.items():
            if hmac.compare_digest(known.encode(), given):
                found = principal
        return found


class Auth:
    """The gateway's policy: with keys, every caller must present one; without, development mode."""

    def __init__(self, keys: ApiKeys | None) -> None:
        self.keys = keys
        if keys is None:
            log.warning("no --api-keys file: DEVELOPMENT MODE, anyone who reaches this port may act for any account")

    @property
    def dev_mode(self) -> bool:
        return self.keys is None

    def identify(self, key: str | None) -> Principal | None:
        return DEV if self.keys is None else self.keys.identify(key)
