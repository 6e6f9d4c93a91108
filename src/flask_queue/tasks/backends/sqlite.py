"""``sqlite:///path``: jobs in a SQLite file, durable and shared by every process of one machine.

The file is in WAL mode (1 KiB pages, a checkpoint every 10,000 pages), so readers never wait for the writer; every state change is one statement or one
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
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ...exceptions import BackendError, ConfigurationError
from ..records import JobRecord, JobStatus, ScheduleState, WorkerInfo
from . import _sql
from .base import LOST_ERROR, MAX_LOST, Backend

__all__ = ["SQLiteBackend"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flask_queue_jobs (
    seq INTEGER PRIMARY KEY,
    token INTEGER NOT NULL,
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
    lost INTEGER NOT NULL DEFAULT 0,
    key TEXT,
    start_by REAL
);
"""

#: Columns added since the table's first release, with their types: a file made before them gets them added.
_ADDED_COLUMNS = {"key": "TEXT", "start_by": "REAL"}

_INDEXES = """
CREATE INDEX IF NOT EXISTS flask_queue_ready ON flask_queue_jobs (priority, seq) WHERE status = 'queued';
-- counts() reads the finished jobs from this index alone (a dashboard over 100,000 jobs answers in tens of
-- milliseconds instead of a table scan). Partial, so that it changes only when a job finishes or is
-- requeued, and so that no query of 'queued' rows (dequeue above all) can pick it instead of the one above.
CREATE INDEX IF NOT EXISTS flask_queue_finished ON flask_queue_jobs (status, queue) WHERE status != 'queued';
-- Keys: at most one 'queued' (waiting or running) and one 'deferred' job per task and key. An insert that
-- meets either does nothing (see _sql.store_keyed).
CREATE UNIQUE INDEX IF NOT EXISTS flask_queue_key ON flask_queue_jobs (task, key)
    WHERE key IS NOT NULL AND status = 'queued';
CREATE UNIQUE INDEX IF NOT EXISTS flask_queue_key_deferred ON flask_queue_jobs (task, key)
    WHERE status = 'deferred';
-- The jobs that may expire, for the dequeue that stores them as expired (empty when no job has expires_in).
CREATE INDEX IF NOT EXISTS flask_queue_start_by ON flask_queue_jobs (start_by)
    WHERE status = 'queued' AND start_by IS NOT NULL;
-- A job that ends (or is deleted) while holding a key hands it to the job deferred behind it, in the same
-- statement, whichever of finish, cancel, expiry, lost leases or purge ended it.
CREATE TRIGGER IF NOT EXISTS flask_queue_key_freed AFTER UPDATE OF status ON flask_queue_jobs
    WHEN OLD.status = 'queued' AND NEW.status != 'queued' AND OLD.key IS NOT NULL
BEGIN
    UPDATE flask_queue_jobs SET status = 'queued' WHERE task = OLD.task AND key = OLD.key AND status = 'deferred';
END;
CREATE TRIGGER IF NOT EXISTS flask_queue_key_deleted AFTER DELETE ON flask_queue_jobs
    WHEN OLD.status = 'queued' AND OLD.key IS NOT NULL
BEGIN
    UPDATE flask_queue_jobs SET status = 'queued' WHERE task = OLD.task AND key = OLD.key AND status = 'deferred';
END;
CREATE TABLE IF NOT EXISTS flask_queue_workers (
    name TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    alive_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS flask_queue_schedules (
    name TEXT PRIMARY KEY,
    last_tick REAL,
    paused INTEGER NOT NULL DEFAULT 0
);
"""

#: Seconds a statement waits for another process's write lock before it counts as a collision.
BUSY_TIMEOUT = 5.0
#: Collisions retried (with a growing pause) before ``BackendError`` reaches the caller.
BUSY_RETRIES = 20
#: How often lapsed leases are looked for (at most; a dequeue does it when it is due).
RECOVER_INTERVAL = 1.0

# One lock per database file per process, taken around every write. SQLite lets one writer in at a time
# anyway; threads of one process that collide otherwise wait in SQLite's busy handler, which sleeps in steps
# of milliseconds, where a lock hands over in microseconds. Other processes still meet the busy handler.
_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


_write_locks_pid = os.getpid()

# Connections a forked child inherited from its parent: neither used nor closed there (closing one would let
# SQLite in the child checkpoint or remove the WAL under the parent), and kept referenced for the life of
# the process, since the garbage collector would close them too.
_inherited: list[sqlite3.Connection] = []


def _write_lock(path: Path, after_fork: bool = False) -> threading.Lock:
    global _write_locks_guard, _write_locks_pid
    if after_fork and _write_locks_pid != os.getpid():
        _write_locks.clear()
        _write_locks_guard = threading.Lock()
        _write_locks_pid = os.getpid()
    key = os.path.realpath(path)
    with _write_locks_guard:
        return _write_locks.setdefault(key, threading.Lock())


class _Link:
    """A thread's connection, closed when its thread ends and its thread-local storage goes (or when the
    backend's thread-local storage goes), unless a fork left it to the parent.

    Left to the garbage collector, a connection would hold its file open until a collection, and Python 3.13
    warns of each one (``ResourceWarning``).
    """

    __slots__ = ("__weakref__", "conn", "inherited", "thread")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.thread = threading.current_thread()
        self.inherited = False

    def close(self) -> None:
        if not self.inherited:
            self.conn.close()

    __del__ = close


class SQLiteBackend(Backend):
    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 0.01) -> None:
        super().__init__()
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.poll_interval = poll_interval
        self._local = threading.local()
        #: Every thread's link (weakly: a link goes with its thread), for close() to find the ended ones.
        self._links: weakref.WeakSet[_Link] = weakref.WeakSet()
        self._links_lock = threading.Lock()
        self._pid = os.getpid()
        self._ready = threading.Condition()
        self._idle = 0
        self._next_recover = 0.0
        self._closed = False
        self._interrupts = 0
        #: Threads of this process waiting in ``dequeue`` (changed under ``_ready``'s lock).
        self._idle = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _write_lock(self.path)
            self._retrying(self._create_tables)
        except (OSError, sqlite3.Error) as exc:
            raise BackendError(
                f"cannot use {self.path} as the SQLite task queue: {exc}. Give TASK_QUEUE_BACKEND a path in a"
                " folder this process can write (sqlite:///relative/to/instance or sqlite:////absolute)"
            ) from exc

    def _create_tables(self) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(flask_queue_jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE flask_queue_jobs ADD COLUMN {column} {kind}")
            for statement in _split(_INDEXES):
                db.execute(statement)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- connections ---------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._closed:
            if self._closed:
                if conn is not None:
                    self._local.link.close()
                    self._local.conn = self._local.link = None
                raise BackendError(f"{self.url} is closed")
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            link = _Link(conn)  # from here on, the connection is closed whatever happens
            # Small pages for a new file: a commit appends every page it changed to the WAL, and a job row
            # and its index entry are far smaller than the default 4 KiB (no effect on an existing file).
            conn.execute("PRAGMA page_size = 1024")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoint (copy the WAL into the file, with an fsync) every 10,000 pages instead of 1,000.
            conn.execute("PRAGMA wal_autocheckpoint = 10000")
            # The connection itself too, so that every call reads one attribute; the link closes it.
            self._local.conn, self._local.link = conn, link
            with self._links_lock:
                self._links.add(link)
        return conn

    def after_fork(self) -> None:
        # A connection must not be used across fork(); the child opens its own, and leaves the parent's open
        # (see _inherited). Only this thread runs here: no lock is needed, and one held at the fork never frees.
        for link in list(self._links):
            link.inherited = True
            _inherited.append(link.conn)
        self._local = threading.local()
        self._links = weakref.WeakSet()
        self._links_lock = threading.Lock()
        self._pid = os.getpid()
        self._ready = threading.Condition()
        self._idle = 0
        # A lock held by a thread of the parent at the fork stays held here for ever: take new ones.
        self._lock = _write_lock(self.path, after_fork=True)

    def close(self) -> None:
        """Close the connections of this thread and of finished threads; a thread still running closes its own
        at its next call, which raises ``BackendError`` (closing it from here could crash it mid-statement),
        or when it ends."""
        self._closed = True
        with self._links_lock:
            links = list(self._links)
        for link in links:
            if link.thread is threading.current_thread() or not link.thread.is_alive():
                link.close()
        self._local.conn = self._local.link = None

    def _retrying(self, what: Callable[[], T], write: bool = True) -> T:
        """Run ``what`` (under the write lock if it writes), retrying when another process held SQLite's write
        lock past the busy timeout."""
        pause = 0.005
        for attempt in range(BUSY_RETRIES + 1):
            try:
                if not write:
                    return what()
                with self._lock:
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
        """A ``BEGIN IMMEDIATE`` transaction under the write lock: the lock is taken up front, so the
        transaction cannot fail halfway for want of it."""
        db = self._db()
        with self._lock:
            self._retrying(lambda: db.execute("BEGIN IMMEDIATE"), write=False)
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            else:
                self._retrying(lambda: db.execute("COMMIT"), write=False)

    def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        db = self._db()
        return self._retrying(lambda: db.execute(sql, params).fetchone(), write=False)

    def _write_one(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        db = self._db()
        return self._retrying(lambda: db.execute(sql, params).fetchone())

    def _changed(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> int:
        db = self._db()
        return self._retrying(lambda: db.execute(sql, params).rowcount)

    # -- the contract --------------------------------------------------------------------------------------

    def enqueue(self, records: Sequence[JobRecord], *, on_conflict: str = "return") -> list[str]:
        db = self._db()
        if len(records) == 1:
            # One job, the common case, in one autocommit statement: with a free key as without one (a key that
            # is held takes the whole transaction of _store, below).
            r = records[0]
            token = random.getrandbits(32)
            row = _row(r, token)
            if r.key is None:
                seq = self._retrying(lambda: db.execute(_INSERT, row).lastrowid)
                self._woken(1)
                return [f"{seq}-{token:08x}"]
            cursor = self._retrying(lambda: db.execute(_INSERT_IF_FREE, (*row, r.key)))
            if cursor.rowcount == 1:
                self._woken(1)
                return [f"{cursor.lastrowid}-{token:08x}"]
        if any(record.key is not None for record in records):
            with self._write():
                ids = self._store(
                    lambda sql, params: db.execute(sql, params).fetchall(), records, on_conflict
                )
        else:
            rows = [_row(record, random.getrandbits(32)) for record in records]
            with self._write():
                seqs = [db.execute(_INSERT, row).lastrowid for row in rows]
            ids = [f"{seq}-{row[0]:08x}" for seq, row in zip(seqs, rows, strict=True)]
        self._woken(len(records))
        return ids

    def _woken(self, count: int) -> None:
        """Wake this process's idle workers after an enqueue; with none waiting, skip the lock. A worker about
        to wait that misses this sees the commit through PRAGMA data_version within poll_interval."""
        if self._idle:
            with self._ready:
                self._ready.notify(count)

    @staticmethod
    def _store(run: _sql.Run, records: Sequence[JobRecord], on_conflict: str) -> list[str]:
        """Insert ``records`` through ``run`` (inside the caller's transaction), keys as the contract says."""
        now = time.time()
        if on_conflict == "raise":
            # Before any insert: in the outbox a DuplicateJob the caller catches must leave no part of the
            # batch in its transaction (the caller may commit it).
            _sql.refuse_held(run, records, now)
        ids = []
        for record in records:
            token = random.getrandbits(32)
            if record.key is None:
                ids.append(f"{run(f'{_INSERT} RETURNING seq', _row(record, token))[0][0]}-{token:08x}")
            else:
                ids.append(_sql.store_keyed(run, _sql.keyed_row(record, token), on_conflict, now))
        return ids

    def enqueue_in_transaction(
        self, connection: Any, records: Sequence[JobRecord], *, on_conflict: str = "return"
    ) -> list[str]:
        # The session's database must be this very file, whatever path or link its URL names it by.
        files = (
            {name: file for _, name, file in connection.exec_driver_sql("PRAGMA database_list")}
            if connection.dialect.name == "sqlite"
            else {}
        )
        if not files.get("main") or os.path.realpath(files["main"]) != os.path.realpath(self.path):
            raise ConfigurationError(
                f"task.options(session=...).enqueue() stores the job inside the session's transaction, so the"
                f" session's database ({connection.engine.url!r}) must be the task queue's file ({self.path}),"
                " and it is not: use task.enqueue_on_commit(...) to enqueue once the transaction commits, or"
                " point TASK_QUEUE_BACKEND at the app's own file (sqlite:////path/of/app.db)"
            )

        # Workers here and in other processes see the commit through PRAGMA data_version, within poll_interval;
        # SQLite has nothing to wake them sooner from another connection.
        def run(sql: str, params: Any) -> list[Any]:
            result = connection.exec_driver_sql(sql, params)
            return list(result.fetchall()) if result.returns_rows else []

        return self._store(run, records, on_conflict)

    def enqueue_tick(self, schedule: str, tick: float, records: Sequence[JobRecord]) -> list[str] | None:
        db = self._db()

        def run(sql: str, params: Mapping[str, Any]) -> list[Any]:
            return db.execute(sql, params).fetchall()

        with self._write():
            advanced = run(_sql.ADVANCE_TICK, {"name": schedule, "tick": tick})
            if not advanced or advanced[0][0]:
                return None  # another process had this tick (or a later one), or the schedule is paused
            ids = self._store(run, records, "return")
        if self._idle:
            with self._ready:
                self._ready.notify(len(records))
        return ids

    def schedules(self) -> list[ScheduleState]:
        db = self._db()
        rows = self._retrying(lambda: db.execute(_sql.SCHEDULES).fetchall(), write=False)
        return [ScheduleState(name, last_tick, bool(paused)) for name, last_tick, paused in rows]

    def pause_schedule(self, schedule: str, paused: bool) -> None:
        self._changed(_sql.PAUSE, {"name": schedule, "paused": int(paused)})

    def dequeue(
        self, queues: Collection[str] | None, worker: str, lease: float, timeout: float
    ) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        interrupts = self._interrupts
        db = self._db()
        where, params = _queue_filter(queues)
        # A leased job keeps its 'queued' row and index entry and gets a lease: taking it writes one page, and a
        # job whose lease lapsed is simply ready again (counted in ``lost``).
        pick = _take_sql(where)
        wake_at = (
            # A lapsed lease at MAX_LOST is not handed out again (``_recover`` fails it): no wake-up for it.
            f"SELECT min(CASE WHEN lease_until IS NULL THEN eta WHEN lost + 1 >= {MAX_LOST} THEN NULL"
            " ELSE max(eta, lease_until) END)"
            f" FROM flask_queue_jobs WHERE status = 'queued' AND {_sql.LIVE}{where}"
        )
        while True:
            now = time.time()
            if now >= self._next_recover:
                self._recover(now)
            version = db.execute("PRAGMA data_version").fetchone()[0]
            values = {"now": now, "until": now + lease, "worker": worker, "limit": 1, **params}
            row = self._retrying(lambda values=values: db.execute(pick, values).fetchone())  # type: ignore[misc]
            if row is not None:
                return _sql.record(row, now)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._interrupts != interrupts:
                return None
            next_eta = db.execute(wake_at, {"now": now, **params}).fetchone()[0]
            pause = min(remaining, self.poll_interval)
            if next_eta is not None:
                pause = min(pause, max(next_eta - time.time(), 0.0))
            # Sleep until an enqueue in this process, or another process commits, or a job falls due.
            until = time.monotonic() + min(remaining, self._next_recover - time.time(), 3600.0)
            while True:
                with self._ready:
                    self._idle += 1
                    try:
                        woken = self._ready.wait(pause)
                    finally:
                        self._idle -= 1
                if woken:
                    break
                if db.execute("PRAGMA data_version").fetchone()[0] != version or time.monotonic() >= until:
                    break
                if next_eta is not None and next_eta <= time.time():
                    break

    def dequeue_batch(
        self, queues: Collection[str] | None, worker: str, lease: float, limit: int
    ) -> list[JobRecord]:
        where, params = _queue_filter(queues)
        now = time.time()
        db = self._db()
        sql = _take_sql(where)
        values = {"now": now, "until": now + lease, "worker": worker, "limit": limit, **params}
        rows = self._retrying(lambda: db.execute(sql, values).fetchall())
        records = [_sql.record(row, now) for row in rows]
        records.sort(key=lambda record: (record.priority, _sql.key(record.id)["seq"]))
        return records

    def finish_batch(
        self, worker: str, succeeded: Sequence[tuple[str, str | None, float | None]]
    ) -> list[JobRecord | None]:
        now = time.time()
        sql = (
            "UPDATE flask_queue_jobs SET status = 'succeeded', result = :result, error = NULL, traceback = NULL,"
            f" finished_at = :now, expires_at = :expires, lease_until = NULL WHERE seq = :seq AND token = :token"
            f" AND {_sql.HELD} RETURNING {_sql.COLUMNS}"
        )
        with self._write() as db:
            rows = [
                db.execute(
                    sql,
                    {"result": result, "now": now, "expires": expires, "worker": worker, **_sql.key(job_id)},
                ).fetchone()
                for job_id, result, expires in succeeded
            ]
        records = [None if row is None else _sql.record(row, now) for row in rows]
        for record in records:
            if record is not None:
                self.finished_here(record)
        return records

    def _recover(self, now: float) -> None:
        """Fail the jobs that lost their lease once too often (the others are handed out again by ``dequeue``),
        and store as expired those that expired by the clock (no dequeue hands them out meanwhile)."""
        self._next_recover = now + RECOVER_INTERVAL
        if self._read(_EXPIRING, {"now": now}) is not None:
            self._changed(_sql.EXPIRE, {"now": now})
        self._changed(
            "UPDATE flask_queue_jobs SET status = 'failed', error = :error, traceback = '', finished_at = :now,"
            " lost = lost + 1, lease_until = NULL WHERE status = 'queued' AND lease_until < :now"
            " AND lost + 1 >= :max_lost",
            {"error": LOST_ERROR, "now": now, "max_lost": MAX_LOST},
        )

    def renew(self, job_id: str, worker: str, lease: float) -> bool:
        return bool(
            self._changed(
                f"UPDATE flask_queue_jobs SET lease_until = :until WHERE seq = :seq AND token = :token AND {_sql.HELD}",
                {"until": time.time() + lease, **_sql.key(job_id), "worker": worker},
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
        now = time.time()
        row = self._write_one(
            "UPDATE flask_queue_jobs SET status = :status, result = :result, error = :error, traceback = :tb,"
            f" finished_at = :now, expires_at = :expires, lease_until = NULL WHERE seq = :seq AND token = :token AND {_sql.HELD}"
            f" RETURNING {_sql.COLUMNS}",
            {
                "status": status.value,
                "result": result,
                "error": error,
                "tb": traceback,
                "now": now,
                "expires": expires_at,
                **_sql.key(job_id),
                "worker": worker,
            },
        )
        if row is None:
            return None
        record = _sql.record(row, now)
        self.finished_here(record)
        return record

    def fail_unrunnable(self, job_id: str, worker: str, error: str) -> JobRecord | None:
        return self.finish(job_id, worker, JobStatus.FAILED, error=error, traceback="")

    def retry_later(self, job_id: str, worker: str, eta: float, error: str, traceback: str) -> bool:
        changed = self._changed(
            "UPDATE flask_queue_jobs SET eta = :eta, error = :error, traceback = :tb, worker = NULL,"
            f" lease_until = NULL WHERE seq = :seq AND token = :token AND {_sql.HELD}",
            {"eta": eta, "error": error, "tb": traceback, **_sql.key(job_id), "worker": worker},
        )
        self._wake()
        return bool(changed)

    def release(self, job_id: str, worker: str) -> bool:
        changed = self._changed(
            "UPDATE flask_queue_jobs SET attempts = attempts - 1, worker = NULL, lease_until = NULL"
            f" WHERE seq = :seq AND token = :token AND {_sql.HELD}",
            {**_sql.key(job_id), "worker": worker},
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
        row = self._read(
            f"SELECT {_sql.COLUMNS} FROM flask_queue_jobs WHERE seq = :seq AND token = :token",
            _sql.key(job_id),
        )
        return None if row is None else _sql.record(row, time.time())

    def cancel(self, job_id: str) -> bool:
        now = time.time()
        row = self._write_one(
            "UPDATE flask_queue_jobs SET status = 'cancelled', finished_at = :now"
            f" WHERE seq = :seq AND token = :token AND (status = 'deferred' OR (status = 'queued' AND"
            f" {_sql.UNLEASED} AND {_sql.LIVE})) RETURNING {_sql.COLUMNS}",
            {"now": now, **_sql.key(job_id)},
        )
        if row is None:
            return False
        self.finished_here(_sql.record(row, now))
        return True

    def requeue(self, job_id: str) -> bool:
        changed = self._changed(_sql.REQUEUE, {"now": time.time(), **_sql.key(job_id)})
        self._wake()
        return bool(changed)

    def purge(self, queue: str | None, statuses: Collection[JobStatus]) -> int:
        chosen = {JobStatus(status) for status in statuses}
        clauses = [_sql.STATUS_SQL[status] for status in chosen if status is not JobStatus.RUNNING]
        if not clauses:
            return 0
        sql = f"DELETE FROM flask_queue_jobs WHERE ({' OR '.join(clauses)})"
        params: dict[str, Any] = {"now": time.time()}
        if queue is not None:
            sql += " AND queue = :queue"
            params["queue"] = queue
        return self._changed(sql, params)

    def size(self, queue: str | None = None) -> int:
        sql = f"SELECT count(*) FROM flask_queue_jobs WHERE {_sql.STATUS_SQL[JobStatus.QUEUED]}"
        params: dict[str, Any] = {"now": time.time()}
        if queue is not None:
            sql += " AND queue = :queue"
            params["queue"] = queue
        return int(self._read(sql, params)[0])

    def counts(self) -> dict[str, dict[str, int]]:
        db = self._db()
        rows = self._retrying(
            lambda: db.execute(_COUNTS, {"now": time.time()}).fetchall(),
            write=False,
        )
        counts: dict[str, dict[str, int]] = {}
        for queue, status, count in rows:
            counts.setdefault(queue, dict.fromkeys(map(str, JobStatus), 0))[status] = count
        return counts

    def jobs(
        self,
        *,
        status: JobStatus | None = None,
        queue: str | None = None,
        limit: int = 50,
        offset: int = 0,
        preview: int | None = None,
    ) -> list[JobRecord]:
        now = time.time()
        clauses = []
        params: dict[str, Any] = {"now": now, "limit": limit, "offset": offset, "preview": preview}
        if status is not None:
            clauses.append(_sql.STATUS_SQL[status])
        if queue is not None:
            clauses.append("queue = :queue")
            params["queue"] = queue
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        db = self._db()
        columns = _sql.COLUMNS if preview is None else _sql.preview_columns(":preview")
        rows = self._retrying(
            lambda: db.execute(
                f"SELECT {columns} FROM flask_queue_jobs{where} ORDER BY seq DESC LIMIT :limit OFFSET :offset",
                params,
            ).fetchall(),
            write=False,
        )
        if preview is None:
            return [_sql.record(row, now) for row in rows]
        return [_sql.preview_record(row, now, preview) for row in rows]

    def expire(self) -> int:
        return self._changed(
            "DELETE FROM flask_queue_jobs WHERE expires_at IS NOT NULL AND expires_at <= :now"
            " AND status IN ('succeeded', 'failed', 'cancelled', 'expired')",
            {"now": time.time()},
        )

    def beat(self, info: WorkerInfo) -> None:
        with self._write() as db:
            db.execute("DELETE FROM flask_queue_workers WHERE alive_until < ?", (info.seen_at,))
            db.execute(
                "INSERT OR REPLACE INTO flask_queue_workers (name, info, alive_until) VALUES (?, ?, ?)",
                (info.name, info.to_json(), info.seen_at + info.ttl),
            )

    def workers(self) -> list[WorkerInfo]:
        db = self._db()
        rows = self._retrying(
            lambda: db.execute(
                "SELECT info FROM flask_queue_workers WHERE alive_until >= ? ORDER BY name", (time.time(),)
            ).fetchall(),
            write=False,
        )
        return [WorkerInfo.from_json(info) for (info,) in rows]

    def forget(self, name: str) -> None:
        self._changed("DELETE FROM flask_queue_workers WHERE name = ?", (name,))


_INSERT = (
    "INSERT INTO flask_queue_jobs (token, task, queue, payload, priority, status, attempts, retries, timeout, eta,"
    " enqueued_at, start_by) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?)"
)


def _row(r: JobRecord, token: int) -> tuple[Any, ...]:
    """The parameters of ``_INSERT`` for a record without a key."""
    return (
        token,
        r.task,
        r.queue,
        r.payload,
        r.priority,
        r.retries,
        r.timeout,
        r.eta,
        r.enqueued_at,
        r.start_by,
    )


# Finished jobs are counted on the flask_queue_finished index without reading a row; only the 'queued' rows,
# whose effective status depends on their eta and lease, are read.
_COUNTS = (
    "SELECT queue, status, count(*) FROM flask_queue_jobs WHERE status != 'queued' GROUP BY status, queue"
    f" UNION ALL SELECT queue, {_sql.EFFECTIVE_STATUS} AS s, count(*) FROM flask_queue_jobs"
    " WHERE status = 'queued' GROUP BY queue, s"
)


def _split(script: str) -> list[str]:
    """The statements of ``script`` (a trigger's body holds semicolons of its own); ``--`` comments dropped."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


#: A job with a key if the key is free: ``_INSERT`` and the key, positional (no RETURNING: the rowcount and the
#: rowid say the same for less).
_INSERT_IF_FREE = (
    "INSERT INTO flask_queue_jobs (token, task, queue, payload, priority, status, attempts, retries, timeout, eta,"
    " enqueued_at, start_by, key) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)

#: Whether any job expired by the clock waits to be stored so (a read, on the start_by index: no write lock).
_EXPIRING = f"SELECT 1 FROM flask_queue_jobs WHERE {_sql.EXPIRING} LIMIT 1"


def _take_sql(where: str) -> str:
    """The statement that leases the ``:limit`` most urgent ready jobs (of the queues in ``where``)."""
    return (
        f"UPDATE flask_queue_jobs SET attempts = attempts + 1, started_at = :now, lease_until = :until,"
        f" worker = :worker, lost = lost + (lease_until IS NOT NULL) WHERE seq IN (SELECT seq FROM"
        f" flask_queue_jobs WHERE status = 'queued' AND eta <= :now AND (lease_until IS NULL OR"
        f" (lease_until < :now AND lost + 1 < {MAX_LOST})) AND {_sql.LIVE}{where} ORDER BY priority, seq"
        " LIMIT :limit)"
        f" RETURNING {_sql.COLUMNS}"
    )


def _queue_filter(queues: Collection[str] | None) -> tuple[str, dict[str, str]]:
    if queues is None:
        return "", {}
    names = {f"q{n}": name for n, name in enumerate(queues)}
    return f" AND queue IN ({', '.join(':' + key for key in names)})", names
