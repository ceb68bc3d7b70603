"""The webhook outbox: SQLite (WAL), one row per event and endpoint, committed before delivery.

Rows are removed once delivered; a row whose retries ran out stays with status ``failed`` until
replayed. Every call runs on one dedicated thread, so the event loop never waits on the disk.
With ``synchronous = NORMAL`` in WAL mode a commit survives the process being killed (SIGKILL);
an operating-system crash or power loss can lose the last commits.

Cap: above ``max_rows`` the oldest ``affect.sample`` rows go first, then the oldest rows of
other types except stress spikes; spikes are never dropped (the cap can be exceeded by spikes
alone). What was dropped is returned, for the metrics.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Outbox", "OutboxRow"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    UNIQUE (endpoint, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (endpoint, status, next_at);
CREATE INDEX IF NOT EXISTS outbox_type ON outbox (type, id);
"""

SPIKE_PREFIX = "stress.spike."


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    endpoint: str
    event_id: str
    type: str
    body: bytes
    created: float
    attempts: int
    next_at: float
    status: str
    last_error: str | None


class Outbox:
    def __init__(self, path: Path | str, *, max_rows: int = 100_000) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA busy_timeout = 5000")
        db.executescript(SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the outbox is not open")
        return self._db

    # --- writes ----------------------------------------------------------------------------

    async def add(self, rows: list[tuple[str, str, str, bytes]]) -> dict[str, int]:
        """Commit ``(endpoint, event_id, type, body)`` rows in one transaction; apply the cap.
        Returns how many rows the cap dropped, by event type."""
        return await self._call(self._add, rows)

    def _add(self, rows: list[tuple[str, str, str, bytes]]) -> dict[str, int]:
        now = time.time()
        db = self.db
        with _transaction(db):
            db.executemany(
                "INSERT OR IGNORE INTO outbox (endpoint, event_id, type, body, created, next_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(ep, eid, typ, body, now, now) for ep, eid, typ, body in rows])
            return self._enforce_cap(db)

    def _enforce_cap(self, db: sqlite3.Connection) -> dict[str, int]:
        (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        excess = count - self.max_rows
        dropped: dict[str, int] = {}
        for where in ("type = 'affect.sample'", f"type NOT LIKE '{SPIKE_PREFIX}%'"):
            if excess <= 0:
                break
            victims = db.execute(f"SELECT id, type FROM outbox WHERE {where} ORDER BY id LIMIT ?",
                                 (excess,)).fetchall()
            db.executemany("DELETE FROM outbox WHERE id = ?", [(v[0],) for v in victims])
            for _, typ in victims:
                dropped[typ] = dropped.get(typ, 0) + 1
            excess -= len(victims)
        return dropped

    async def delete(self, row_id: int) -> None:
        await self._call(self._exec, "DELETE FROM outbox WHERE id = ?", (row_id,))

    async def reschedule(self, row_id: int, attempts: int, next_at: float, error: str) -> None:
        await self._call(self._exec, "UPDATE outbox SET attempts = ?, next_at = ?, last_error = ?"
                         " WHERE id = ?", (attempts, next_at, error, row_id))

    async def fail(self, row_id: int, attempts: int, error: str) -> None:
        await self._call(self._exec, "UPDATE outbox SET status = 'failed', attempts = ?,"
                         " last_error = ? WHERE id = ?", (attempts, error, row_id))

    async def replay(self, row_id: int) -> OutboxRow | None:
        """Make a failed row pending again, due now; None when there is no such failed row."""
        return await self._call(self._replay, row_id)

    def _replay(self, row_id: int) -> OutboxRow | None:
        db = self.db
        with _transaction(db):
            cur = db.execute("UPDATE outbox SET status = 'pending', attempts = 0, next_at = ?"
                             " WHERE id = ? AND status = 'failed'", (time.time(), row_id))
            if cur.rowcount == 0:
                return None
            return self._row(db.execute("SELECT * FROM outbox WHERE id = ?", (row_id,)).fetchone())

    def _exec(self, sql: str, params: tuple[Any, ...]) -> None:
        self.db.execute(sql, params)

    # --- reads -----------------------------------------------------------------------------

    async def due(self, endpoint: str, limit: int, skip: set[int]) -> list[OutboxRow]:
        return await self._call(self._due, endpoint, limit, skip)

    def _due(self, endpoint: str, limit: int, skip: set[int]) -> list[OutboxRow]:
        rows = self.db.execute(
            "SELECT * FROM outbox WHERE endpoint = ? AND status = 'pending' AND next_at <= ?"
            " ORDER BY next_at, id LIMIT ?", (endpoint, time.time(), limit + len(skip))
        ).fetchall()
        return [r for r in map(self._row, rows) if r.id not in skip][:limit]

    async def next_due(self, endpoint: str) -> float | None:
        return await self._call(self._next_due, endpoint)

    def _next_due(self, endpoint: str) -> float | None:
        (at,) = self.db.execute("SELECT MIN(next_at) FROM outbox WHERE endpoint = ? AND"
                                " status = 'pending'", (endpoint,)).fetchone()
        return float(at) if at is not None else None

    async def failed(self, limit: int = 1000) -> list[OutboxRow]:
        return await self._call(self._failed, limit)

    def _failed(self, limit: int) -> list[OutboxRow]:
        rows = self.db.execute("SELECT * FROM outbox WHERE status = 'failed' ORDER BY id LIMIT ?",
                               (limit,)).fetchall()
        return [self._row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        return await self._call(self._counts)

    def _counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall()
        return {"pending": 0, "failed": 0} | {status: n for status, n in rows}

    @staticmethod
    def _row(r: tuple[Any, ...]) -> OutboxRow:
        return OutboxRow(int(r[0]), r[1], r[2], r[3], bytes(r[4]), float(r[5]), int(r[6]),
                         float(r[7]), r[8], r[9])


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
