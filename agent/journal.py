"""The agent's durable journal (SQLite in the state dir): command nonces seen, and each
operation's outcome, so a redelivered command is never applied twice in effect and a replayed
one is refused, across agent restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, operation_id TEXT, expires_at REAL);
CREATE TABLE IF NOT EXISTS operations (
    operation_id TEXT PRIMARY KEY, kind TEXT, state TEXT, result TEXT, updated_at REAL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, payload TEXT, created_at REAL);
"""


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    # --- nonces ---------------------------------------------------------------------------

    def nonce_owner(self, nonce: str) -> str | None:
        """The operation id a nonce was first seen with, or None when it is new."""
        with self._lock:
            row = self._db.execute(
                "SELECT operation_id FROM nonces WHERE nonce = ?", (nonce,)
            ).fetchone()
        return None if row is None else str(row[0])

    def nonce_add(self, nonce: str, operation_id: str, expires_at: float) -> bool:
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO nonces VALUES (?, ?, ?)", (nonce, operation_id, expires_at)
            )
            if cur.rowcount and time.time() % 60 < 1:  # now and then, forget expired nonces
                self._db.execute("DELETE FROM nonces WHERE expires_at < ?", (time.time() - 60,))
        return bool(cur.rowcount)

    # --- operations -----------------------------------------------------------------------

    def operation(self, operation_id: str) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, result FROM operations WHERE operation_id = ?", (operation_id,)
            ).fetchone()
        if row is None:
            return None
        return str(row[0]), json.loads(row[1] or "{}")

    def operation_set(
        self, operation_id: str, kind: str, state: str, result: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO operations VALUES (?, ?, ?, ?, ?) ON CONFLICT(operation_id) DO "
                "UPDATE SET state = excluded.state, result = excluded.result, "
                "updated_at = excluded.updated_at",
                (operation_id, kind, state, json.dumps(result or {}), time.time()),
            )

    # --- outbox: reports that must not be lost ---------------------------------------------

    def outbox_put(self, kind: str, payload: dict[str, Any]) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (kind, payload, created_at) VALUES (?, ?, ?)",
                (kind, json.dumps(payload), time.time()),
            )
        return int(cur.lastrowid or 0)

    def outbox_pending(self, limit: int = 100) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, payload FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(int(r[0]), str(r[1]), json.loads(r[2])) for r in rows]

    def outbox_done(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def close(self) -> None:
        self._db.close()
