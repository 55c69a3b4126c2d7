"""Rebuilding and checking derived state from the log: content hashes now; rebuild, verify and snapshots next."""
