"""The results store: one SQLite file per audit (standard-library ``sqlite3``).

Every finished run is one row, written in one transaction together with its key, so an interrupted audit
leaves either the whole run or nothing; rerunning the same config skips the keys already stored (resume).
The ``results.json`` dict is built from a store by :mod:`segaudit.results`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .errors import SegauditError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,      -- hash of the run's settings: the same settings are the same run
    kind TEXT NOT NULL,        -- train | attack | inference | layers | tradeoff
    settings TEXT NOT NULL,    -- JSON: what was run (model, attack, defense, batch size, seed, ...)
    result TEXT NOT NULL,      -- JSON: metrics, status, artefact paths (relative to the store's folder)
    seconds REAL NOT NULL,
    finished REAL NOT NULL     -- unix time
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def run_key(kind: str, settings: dict[str, Any]) -> str:
    """A stable key of a run: its kind and settings (JSON with sorted keys), hashed."""
    text = json.dumps({"kind": kind, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultsStore:
    """Runs of one audit in ``path`` (created when missing).

    Example:
        >>> store = ResultsStore("reports/demo/results.sqlite")
        >>> key = run_key("attack", settings)
        >>> if not store.has(key):
        ...     store.put(key, "attack", settings, {"psnr": 24.5}, seconds=39.0)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise SegauditError(f"{self.path} is not a segaudit results store ({e}); move it away or pick "
                                "another --out") from None

    def has(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT result FROM runs WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, kind: str, settings: dict, result: dict, seconds: float) -> None:
        """Store one finished run atomically (a transaction: all of it or nothing)."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                             (key, kind, json.dumps(settings, default=str), json.dumps(result, default=str),
                              float(seconds), time.time()))

    def set_meta(self, **values: Any) -> None:
        with self._transaction():
            for k, v in values.items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v, default=str)))

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored runs in finishing order: ``{"key", "kind", **settings, **result, "seconds"}``."""
        query = "SELECT key, kind, settings, result, seconds FROM runs"
        rows = self._db.execute(query + (" WHERE kind = ?" if kind else "") + " ORDER BY finished, key",
                                (kind,) if kind else ())
        return [{"key": k, "kind": kd, **json.loads(s), **json.loads(r), "seconds": sec} for k, kd, s, r, sec in rows]

    def close(self) -> None:
        self._db.close()

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

