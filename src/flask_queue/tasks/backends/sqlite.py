"""``sqlite:///path``: jobs in a SQLite file, durable and shared by every process of one machine.

The file is in WAL mode, so readers never wait for the writer; every state change is one statement or one
``BEGIN IMMEDIATE`` transaction, so two processes never both take a job. Commits use ``synchronous=NORMAL``:
a job acknowledged to its caller survives the crash of any process (not the loss of power to the machine).
Writers that collide wait for each other (a busy timeout, then retries) instead of surfacing "database is
locked". Workers in this process are woken at once by an enqueue here; enqueues from other processes are
seen within ``poll_interval`` through ``PRAGMA data_version``, which changes when another connection commits
and costs no read of the table.

A relative path is taken from the app's instance folder: ``sqlite:///jobs.sqlite3`` is
``<instance_path>/jobs.sqlite3``; ``sqlite:////var/lib/app/jobs.sqlite3`` is absolute.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ...exceptions import BackendError
from ..job import JobRecord, JobStatus
from .base import LOST_ERROR, MAX_LOST, Backend

__all__ = ["SQLiteBackend"]

T = TypeVar("T")

_COLUMNS = (
    "id, task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,"
    " finished_at, lease_until, worker, result, error, traceback, expires_at, lost"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flask_queue_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    timeout REAL,
    eta REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_until REAL,
    worker TEXT,
    result TEXT,
    error TEXT,
    traceback TEXT,
    expires_at REAL,
    lost INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS flask_queue_ready ON flask_queue_jobs (priority, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS flask_queue_leases ON flask_queue_jobs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS flask_queue_expiry ON flask_queue_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS flask_queue_by_queue ON flask_queue_jobs (queue, status);
"""

#: Seconds a statement waits for another process's write lock before it counts as a collision.
BUSY_TIMEOUT = 5.0
#: Collisions retried (with a growing pause) before ``BackendError`` reaches the caller.
BUSY_RETRIES = 20
#: How often lapsed leases are looked for (at most; a dequeue does it when it is due).
RECOVER_INTERVAL = 1.0


class SQLiteBackend(Backend):
    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 0.01) -> None:
        super().__init__()
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.poll_interval = poll_interval
        self._local = threading.local()
        self._connections: weakref.WeakKeyDictionary[threading.Thread, sqlite3.Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._connections_lock = threading.Lock()
        self._pid = os.getpid()
        self._ready = threading.Condition()
        self._next_recover = 0.0
        self._closed = False
        self._interrupts = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db()
            self._retrying(lambda: db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;"))
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(
                f"cannot use {self.path} as the SQLite task queue: {exc}. Give TASK_QUEUE_BACKEND a path in a"
                " folder this process can write (sqlite:///relative/to/instance or sqlite:////absolute)"
            ) from exc

    # -- connections ---------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._closed:
            if self._closed:
                if conn is not None:
                    conn.close()
                    self._local.conn = None
                raise BackendError(f"{self.url} is closed")
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._connections_lock:
                self._connections[threading.current_thread()] = conn
        return conn

    def after_fork(self) -> None:
        # A connection must not be used across fork(); the child opens its own (the parent's stay unclosed:
        # closing them here could disturb the parent's locks).
        self._local = threading.local()
        self._connections = weakref.WeakKeyDictionary()
        self._connections_lock = threading.Lock()
        self._pid = os.getpid()
        self._ready = threading.Condition()

    def close(self) -> None:
        """Close the connections of this thread and of finished threads; a thread still running closes its own
        at its next call, which raises ``BackendError`` (closing it from here could crash it mid-statement)."""
        self._closed = True
        with self._connections_lock:
            for thread, conn in list(self._connections.items()):
                if thread is threading.current_thread() or not thread.is_alive():
                    conn.close()
                    del self._connections[thread]
        self._local.conn = None

    def _retrying(self, what: Callable[[], T]) -> T:
        """Run ``what``, retrying when another process held the write lock past the busy timeout."""
        pause = 0.005
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return what()
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if ("locked" not in message and "busy" not in message) or attempt == BUSY_RETRIES:
                    raise BackendError(f"{self.url}: {message}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        raise AssertionError("unreachable")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so it cannot fail halfway."""
        db = self._db()
        self._retrying(lambda: db.execute("BEGIN IMMEDIATE"))
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            self._retrying(lambda: db.execute("COMMIT"))

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        db = self._db()
        return self._retrying(lambda: db.execute(sql, params).fetchone())

    def _changed(self, sql: str, params: Sequence[Any]) -> int:
        db = self._db()
        return self._retrying(lambda: db.execute(sql, params).rowcount)

    # -- the contract --------------------------------------------------------------------------------------

    def enqueue(self, records: Sequence[JobRecord]) -> None:
        rows = [
            (
                r.id,
                r.task,
                r.queue,
                r.payload,
                r.priority,
                r.status.value,
                r.attempts,
                r.retries,
                r.timeout,
                r.eta,
                r.enqueued_at,
            )
            for r in records
        ]
        sql = (
            "INSERT INTO flask_queue_jobs (id, task, queue, payload, priority, status, attempts, retries,"
            " timeout, eta, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        if len(rows) == 1:
            self._changed(sql, rows[0])
        else:
            with self._write() as db:
                db.executemany(sql, rows)
        with self._ready:
            self._ready.notify(len(rows))

    def dequeue(
        self, queues: Collection[str] | None, worker: str, lease: float, timeout: float
    ) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        interrupts = self._interrupts
        db = self._db()
        where, params = _queue_filter(queues)
        pick = (
            f"UPDATE flask_queue_jobs SET status = 'running', attempts = attempts + 1, started_at = ?,"
            f" lease_until = ?, worker = ? WHERE seq = (SELECT seq FROM flask_queue_jobs WHERE status = 'queued'"
            f" AND eta <= ?{where} ORDER BY priority, seq LIMIT 1) RETURNING {_COLUMNS}"
        )
        while True:
            now = time.time()
            if now >= self._next_recover:
                self._recover(now)
            version = db.execute("PRAGMA data_version").fetchone()[0]
            values = (now, now + lease, worker, now, *params)
            row = self._retrying(lambda values=values: db.execute(pick, values).fetchone())  # type: ignore[misc]
            if row is not None:
                return _record(row)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._interrupts != interrupts:
                return None
            next_eta = db.execute(
                f"SELECT min(eta) FROM flask_queue_jobs WHERE status = 'queued'{where}", params
            ).fetchone()[0]
            pause = min(remaining, self.poll_interval)
            if next_eta is not None:
                pause = min(pause, max(next_eta - time.time(), 0.0))
            # Sleep until an enqueue in this process, or another process commits, or a job falls due.
            until = time.monotonic() + min(remaining, self._next_recover - time.time(), 3600.0)
            while True:
                with self._ready:
                    if self._ready.wait(pause):
                        break
                if db.execute("PRAGMA data_version").fetchone()[0] != version or time.monotonic() >= until:
                    break
                if next_eta is not None and next_eta <= time.time():
                    break

    def _recover(self, now: float) -> None:
        """Hand out again the jobs whose lease lapsed, and fail those that lost too many."""
        self._next_recover = now + RECOVER_INTERVAL
        with self._write() as db:
            db.execute(
                "UPDATE flask_queue_jobs SET status = 'failed', error = ?, traceback = '',"
                " finished_at = ?, lost = lost + 1, lease_until = NULL"
                " WHERE status = 'running' AND lease_until < ? AND lost + 1 >= ?",
                (LOST_ERROR, now, now, MAX_LOST),
            )
            db.execute(
                "UPDATE flask_queue_jobs SET status = 'queued', eta = ?, lost = lost + 1, worker = NULL,"
                " lease_until = NULL WHERE status = 'running' AND lease_until < ?",
                (now, now),
            )

    def renew(self, job_id: str, worker: str, lease: float) -> bool:
        return bool(
            self._changed(
                "UPDATE flask_queue_jobs SET lease_until = ? WHERE id = ? AND status = 'running' AND worker = ?",
                (time.time() + lease, job_id, worker),
            )
        )

    def finish(
        self,
        job_id: str,
        worker: str,
        status: JobStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        expires_at: float | None = None,
    ) -> JobRecord | None:
        row = self._one(
            f"UPDATE flask_queue_jobs SET status = ?, result = ?, error = ?, traceback = ?, finished_at = ?,"
            f" expires_at = ?, lease_until = NULL WHERE id = ? AND status = 'running' AND worker = ?"
            f" RETURNING {_COLUMNS}",
            (status.value, result, error, traceback, time.time(), expires_at, job_id, worker),
        )
        if row is None:
            return None
        record = _record(row)
        self.finished_here(record)
        return record

    def fail_unrunnable(self, job_id: str, worker: str, error: str) -> JobRecord | None:
        return self.finish(job_id, worker, JobStatus.FAILED, error=error, traceback="")

    def retry_later(self, job_id: str, worker: str, eta: float, error: str, traceback: str) -> bool:
        changed = self._changed(
            "UPDATE flask_queue_jobs SET status = 'queued', eta = ?, error = ?, traceback = ?, worker = NULL,"
            " lease_until = NULL WHERE id = ? AND status = 'running' AND worker = ?",
            (eta, error, traceback, job_id, worker),
        )
        self._wake()
        return bool(changed)

    def release(self, job_id: str, worker: str) -> bool:
        changed = self._changed(
            "UPDATE flask_queue_jobs SET status = 'queued', attempts = attempts - 1, worker = NULL,"
            " lease_until = NULL WHERE id = ? AND status = 'running' AND worker = ?",
            (job_id, worker),
        )
        self._wake()
        return bool(changed)

    def interrupt(self) -> None:
        with self._ready:
            self._interrupts += 1
            self._ready.notify_all()

    def _wake(self) -> None:
        with self._ready:
            self._ready.notify()

    def get(self, job_id: str) -> JobRecord | None:
        row = self._one(f"SELECT {_COLUMNS} FROM flask_queue_jobs WHERE id = ?", (job_id,))
        return None if row is None else _record(row)

    def cancel(self, job_id: str) -> bool:
        row = self._one(
            f"UPDATE flask_queue_jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'"
            f" RETURNING {_COLUMNS}",
            (time.time(), job_id),
        )
        if row is None:
            return False
        self.finished_here(_record(row))
        return True

    def requeue(self, job_id: str) -> bool:
        changed = self._changed(
            "UPDATE flask_queue_jobs SET status = 'queued', attempts = 0, lost = 0, eta = ?, finished_at = NULL,"
            " expires_at = NULL WHERE id = ? AND status IN ('failed', 'cancelled')",
            (time.time(), job_id),
        )
        self._wake()
        return bool(changed)

    def purge(self, queue: str | None, statuses: Collection[JobStatus]) -> int:
        now = time.time()
        clauses = []
        params: list[Any] = []
        for status in statuses:
            if status is JobStatus.RUNNING:
                continue
            if status is JobStatus.SCHEDULED:
                clauses.append("(status = 'queued' AND eta > ?)")
                params.append(now)
            elif status is JobStatus.QUEUED:
                clauses.append("(status = 'queued' AND eta <= ?)")
                params.append(now)
            else:
                clauses.append("status = ?")
                params.append(status.value)
        if not clauses:
            return 0
        sql = f"DELETE FROM flask_queue_jobs WHERE ({' OR '.join(clauses)})"
        if queue is not None:
            sql += " AND queue = ?"
            params.append(queue)
        return self._changed(sql, params)

    def size(self, queue: str | None = None) -> int:
        sql = "SELECT count(*) FROM flask_queue_jobs WHERE status = 'queued' AND eta <= ?"
        params: tuple[Any, ...] = (time.time(),)
        if queue is not None:
            sql += " AND queue = ?"
            params += (queue,)
        return int(self._one(sql, params)[0])

    def counts(self) -> dict[str, dict[str, int]]:
        db = self._db()
        rows = self._retrying(
            lambda: db.execute(
                "SELECT queue, CASE WHEN status = 'queued' AND eta > ? THEN 'scheduled' ELSE status END AS s,"
                " count(*) FROM flask_queue_jobs GROUP BY queue, s",
                (time.time(),),
            ).fetchall()
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, status, count in rows:
            counts.setdefault(queue, dict.fromkeys(map(str, JobStatus), 0))[status] = count
        return counts

    def jobs(
        self, *, status: JobStatus | None = None, queue: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        clauses = []
        params: list[Any] = []
        if status is JobStatus.SCHEDULED:
            clauses.append("status = 'queued' AND eta > ?")
            params.append(time.time())
        elif status is JobStatus.QUEUED:
            clauses.append("status = 'queued' AND eta <= ?")
            params.append(time.time())
        elif status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        db = self._db()
        rows = self._retrying(
            lambda: db.execute(
                f"SELECT {_COLUMNS} FROM flask_queue_jobs{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        )
        return [_record(row) for row in rows]

    def expire(self) -> int:
        return self._changed(
            "DELETE FROM flask_queue_jobs WHERE expires_at IS NOT NULL AND expires_at <= ?"
            " AND status IN ('succeeded', 'failed', 'cancelled')",
            (time.time(),),
        )


def _queue_filter(queues: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
    if queues is None:
        return "", ()
    names = tuple(queues)
    return f" AND queue IN ({', '.join('?' * len(names))})", names


def _record(row: Sequence[Any]) -> JobRecord:
    (job_id, task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,
     finished_at, lease_until, worker, result, error, traceback, expires_at, lost) = row  # fmt: skip
    return JobRecord(
        id=job_id,
        task=task,
        queue=queue,
        payload=payload,
        priority=priority,
        status=JobStatus(status),
        attempts=attempts,
        retries=retries,
        timeout=timeout,
        eta=eta,
        enqueued_at=enqueued_at,
        started_at=started_at,
        finished_at=finished_at,
        lease_until=lease_until,
        worker=worker,
        result=result,
        error=error,
        traceback=traceback,
        expires_at=expires_at,
        lost=lost,
    )
