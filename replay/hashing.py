"""Content hashes: equal hashes mean equal data, whatever the files' page layout."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import msgpack


def db_content_hash(path: Path | str) -> str:
    """sha256 over every user table's rows in key order."""
    digest = hashlib.sha256()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )]  # fmt: skip
        for table in tables:
            cur = con.execute(f'SELECT * FROM "{table}"')
            ncols = len(cur.description)
            cols = [d[0] for d in cur.description]
            order = ", ".join(str(i) for i in range(1, ncols + 1))
            rows = con.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()
            digest.update(msgpack.packb([table, cols, [list(r) for r in rows]], use_bin_type=True))
    finally:
        con.close()
    return digest.hexdigest()
