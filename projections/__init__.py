"""Read models folded from JB_EVT into SQLite, and the runner that keeps them current."""
