"""``postgresql://``: jobs in a PostgreSQL table, shared by every process of every machine that reaches it.

``postgresql://user:password@host:5432/db?schema=jobs&sslmode=require``: ``schema`` (default ``public``) holds
the tables, created when the backend first connects (under an advisory lock, so that processes starting
together do not collide); ``poll_interval`` (seconds, default 1) is explained below; every other query
parameter is libpq's (``connect_timeout`` defaults to 5 seconds here).

Each thread talks to the server through a connection of its own, in autocommit mode: every state change is
one statement, prepared once per connection, so it costs one round trip and commits by itself. A dequeue is
one ``UPDATE`` of the most urgent ready rows chosen with ``FOR UPDATE SKIP LOCKED``: concurrent workers skip
the rows another is taking instead of waiting for it, and never both take one. As in the SQLite backend, a
leased job keeps its ``'queued'`` row and gets a lease (``lease_until``, ``worker``); a lease that lapses
makes the row ready again by the clock alone, and taking it counts a lost lease (see ``MAX_LOST``).

Workers are woken by ``LISTEN``/``NOTIFY``: every statement that makes jobs ready (or schedules them)
notifies the schema's channel, at its commit, with how many jobs and the earliest ``eta``. One thread per
backend object listens (started by the first dequeue that has to wait) and wakes this process's waiting
dequeues; the ``eta`` of scheduled jobs tells them when to look again. A notification can be missed (the
listening connection dropped, the listener started after a job was scheduled): a waiting dequeue therefore
also looks every ``poll_interval`` seconds, which bounds the delay of a missed job and of a lapsed lease.

Keys are the SQLite backend's (``_sql.store_keyed``), in one transaction per enqueue: two partial unique
indexes decide, one over the ``(task, key)`` of ``'queued'`` rows and one over those of ``'deferred'`` rows. An
insert that meets another transaction's uncommitted row of its key waits for that transaction and then does
nothing (or goes ahead, if it rolled back), so that enqueues racing one key from any number of machines
leave one job. A trigger queues the deferred job of a key whose holder leaves ``'queued'`` or is deleted, in
the same statement, and notifies it. An enqueue without a key keeps its single statement.

The outbox (``enqueue_in_transaction``) runs the same statements through a SQLAlchemy connection of the app,
inside its transaction; the ``NOTIFY`` in them is delivered at that transaction's commit, or never. That the
connection's database is this backend's is checked once per engine, against the random id the backend
wrote in ``flask_queue_meta``.

A dropped connection or an unreachable server raises ``BackendError`` (the URL with its password hidden)
after at most ``connect_timeout``; the next call connects again, so a restarted server is used again
without a restart of the app. The backend does not retry by itself: the worker does, with a backoff.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg

from ....exceptions import BackendError, ConfigurationError
from ...records import JobRecord, JobStatus, ScheduleState, WorkerInfo
from .. import _sql
from ..base import LOST_ERROR, Backend, hide_secrets, scrub
from . import _statements

# The same job ids (``<seq>-<token>``) and the same columns, in the same order, as the SQLite backend's.

__all__ = ["PostgresBackend"]

log = logging.getLogger("flask_queue.tasks")
T = TypeVar("T")

#: The layout of the tables this module creates; a later version that changes it migrates from this number.
#: 2: keys (``key``, their indexes and trigger), ``start_by``, and the schedules' table.
SCHEMA_VERSION = 2
#: Seconds to wait for a connection when the URL does not say (``connect_timeout=...``).
CONNECT_TIMEOUT = 5
#: Default seconds between a waiting dequeue's looks when no notification came.
POLL_INTERVAL = 1.0
#: How often jobs that lost their last lease are failed (at most; a dequeue does it when it is due).
RECOVER_INTERVAL = 1.0
#: Longest pause between two attempts of the listener to connect again.
LISTEN_RETRY_MAX = 5.0
#: Scheduled times remembered from notifications; beyond, the farthest are left to the poll.
MAX_DUE = 1024
#: Times a transaction of several statements (an enqueue with keys, a tick) is tried when it deadlocks.
DEADLOCK_ATTEMPTS = 5


class PostgresBackend(Backend):
    def __init__(self, url: str) -> None:
        super().__init__()
        #: The URL as messages show it, and what they must not show: its passwords.
        self.url, self._secrets = hide_secrets(url)
        parts = urlsplit(url)
        options: list[tuple[str, str]] = []
        self.schema = "public"
        self.poll_interval = POLL_INTERVAL
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "schema":
                self.schema = value
            elif key == "poll_interval":
                self.poll_interval = _seconds(self.url, value)
            else:
                options.append((key, value))
        if not self.schema:
            raise ConfigurationError(f"TASK_QUEUE_BACKEND={self.url!r}: schema= names no schema")
        if not any(key == "connect_timeout" for key, _ in options):
            options.append(("connect_timeout", str(CONNECT_TIMEOUT)))
        self._conninfo = urlunsplit(parts._replace(query=urlencode(options, quote_via=quote)))
        schema = '"' + self.schema.replace('"', '""') + '"'
        #: The quoted schema in a statement without parameters, and in one with (psycopg reads a ``%`` there
        #: as the start of a placeholder, so the name's own are doubled).
        self._schema_sql = schema
        self._schema_in_params = schema.replace("%", "%%")
        self._sql = _statements.statements(self._schema_in_params)
        #: The shared statements (``_sql``'s, for keys and schedules) in this schema and psycopg's style, by
        #: their SQLite text; filled as they are first used.
        self._translated: dict[str, str] = {}
        # A channel name is at most 63 bytes; two long schema names that share a prefix only share wake-ups.
        self._channel = f"flask_queue.{self.schema}"[:63]
        self._instance: str | None = None
        self._reset()

    def _reset(self) -> None:
        """The per-process state: connections, the listener and the waiting dequeues."""
        self._local = threading.local()
        self._schema_lock = threading.Lock()
        self._connections: dict[threading.Thread, psycopg.Connection[Any]] = {}
        self._connections_lock = threading.Lock()
        #: Server process ids of this object's connections: their notifications were announced here already.
        self._own_pids: set[int] = set()
        self._closed = False
        self._next_recover = 0.0
        self._ready = threading.Condition()
        #: Changed under ``_ready``'s lock: announcements heard, interrupts, and the scheduled times heard of.
        self._wakeups = 0
        self._interrupts = 0
        self._due: list[float] = []
        self._listener: threading.Thread | None = None
        #: Written to by ``close`` to stop the listener: a socket pair, which any selector can wait on.
        self._stop_listener: tuple[socket.socket, socket.socket] | None = None
        #: SQLAlchemy engines whose database was checked to be this backend's (the outbox).
        self._same_database: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- connections ---------------------------------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        """This thread's connection, made (and the tables created) on first use or after it broke."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        self._check_open()
        conn = self._connect()
        try:
            if self._instance is None:
                self._create_tables(conn)
        except BaseException:
            conn.close()
            raise
        with self._connections_lock:
            try:
                self._check_open()  # again: closed while this thread connected, close did not see this one
            except BackendError:
                self._discard(conn)
                raise
            self._local.conn = conn
            # Threads that ended since leave their connection behind: close it now rather than let it linger.
            for thread, old in list(self._connections.items()):
                if not thread.is_alive():
                    self._discard(old)
                    del self._connections[thread]
            self._connections[threading.current_thread()] = conn
            self._own_pids.add(conn.info.backend_pid)
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.url} is closed")

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
            # A take must walk the ready index in order and stop at its LIMIT. When the table's statistics are
            # stale (a new table, a backlog that grew since the last ANALYZE) the planner thinks few rows are
            # ready and prefers to fetch them all and sort them, which makes every take cost the whole backlog.
            # This session runs only this module's statements, none of which needs a sort.
            conn.execute("SET enable_sort = off")
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        return conn

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        self._own_pids.discard(conn.info.backend_pid)
        # Under the connection's lock: a thread in the middle of a statement on it finishes that first.
        with conn.lock:
            conn.close()

    def _error(self, exc: BaseException) -> BackendError:
        message = str(exc).strip() or type(exc).__name__
        message = scrub(message, self._secrets)
        return BackendError(f"{self.url}: {message}")

    def _create_tables(self, conn: psycopg.Connection[Any]) -> None:
        """Create the schema's tables if they are missing, once per process; read the database's instance id."""
        with self._schema_lock:
            if self._instance is not None:
                return
            meta = f"{self._schema_sql}.flask_queue_meta"
            meta_in_params = f"{self._schema_in_params}.flask_queue_meta"
            try:
                row = None
                if conn.execute("SELECT to_regclass(%s)", [meta]).fetchone() != (None,):
                    row = conn.execute(f"SELECT instance, version FROM {meta}").fetchone()
                if row is None or row[1] < SCHEMA_VERSION:
                    # Several processes may start at once: one creates, the others wait and find it done.
                    with conn.transaction():
                        conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"flask_queue:{self.schema}"]
                        )
                        conn.execute(_statements.tables(self._schema_sql, self._channel))
                        conn.execute(
                            f"INSERT INTO {meta_in_params} (instance, version) SELECT %s, %s"
                            f" WHERE NOT EXISTS (SELECT FROM {meta_in_params})",
                            [f"{random.getrandbits(64):016x}", SCHEMA_VERSION],
                        )
                        # Tables of an older layout were brought up to this one by the statements above.
                        conn.execute(
                            f"UPDATE {meta_in_params} SET version = greatest(version, %s)", [SCHEMA_VERSION]
                        )
                        row = conn.execute(f"SELECT instance, version FROM {meta}").fetchone()
            except psycopg.Error as exc:
                raise self._error(exc) from exc
            assert row is not None
            self._instance = row[0]

    def _execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> psycopg.Cursor[Any]:
        """Run one statement on this thread's connection; a connection that failed is dropped, so that the
        next call connects again."""
        conn = self._conn()
        try:
            return conn.execute(sql, params, prepare=True)
        except psycopg.Error as exc:
            raise self._failed(conn, exc) from exc

    def _failed(self, conn: psycopg.Connection[Any], exc: psycopg.Error) -> BackendError:
        """The error to raise for ``exc``; a connection it broke is dropped, so that the next call connects
        again."""
        if conn.broken or conn.closed or isinstance(exc, psycopg.OperationalError):
            self._local.conn = None
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)
                self._discard(conn)
        return self._error(exc)

    def _transaction(self, work: Callable[[_sql.Run], T]) -> T:
        """``work(run)`` in one transaction of this thread's connection, ``run(sql, params)`` executing a
        statement of ``_sql`` (SQLite's style) inside it; ``work``'s exceptions roll it back and pass through.

        A deadlock is tried again: enqueues that store the same keys in opposite orders wait for each other
        (each for the other's insert to commit), and the server aborts one of them.
        """
        for attempt in range(DEADLOCK_ATTEMPTS):
            conn = self._conn()
            try:
                with conn.transaction():
                    return work(self._runner(conn))
            except psycopg.errors.DeadlockDetected as exc:
                if attempt == DEADLOCK_ATTEMPTS - 1:
                    raise self._error(exc) from exc
            except psycopg.Error as exc:
                raise self._failed(conn, exc) from exc
        raise AssertionError("unreachable")

    def _runner(self, conn: psycopg.Connection[Any]) -> _sql.Run:
        def run(sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
            return _rows(conn.execute(self._translate(sql), params))

        return run

    def _translate(self, sql: str) -> str:
        """A statement of ``_sql`` as this schema's connections run it."""
        translated = self._translated.get(sql)
        if translated is None:
            # Unlocked: two threads that translate one statement at once store the same text.
            translated = self._translated[sql] = _statements.translate(sql, self._schema_in_params)
        return translated

    def after_fork(self) -> None:
        # The parent's connections and listener are its own: the child opens new ones. The objects are simply
        # dropped; psycopg never closes, from a child, a connection its parent made.
        self._reset()

    def close(self) -> None:
        """Stop the listener and close every connection; a later call raises ``BackendError``."""
        with self._ready:
            self._closed = True
            listener, self._listener = self._listener, None
            stop, self._stop_listener = self._stop_listener, None
            self._interrupts += 1
            self._ready.notify_all()
        if listener is not None and stop is not None:
            stop[1].send(b"x")
            listener.join(10.0)
            stop[0].close()
            stop[1].close()
        with self._connections_lock:
            for conn in self._connections.values():
                self._discard(conn)
            self._connections.clear()
        self._local = threading.local()

    # -- wake-ups ------------------------------------------------------------------------------------------

    def _note(self, records: Sequence[JobRecord] | None = None, eta: float | None = None) -> str:
        """A notification's payload: how many jobs became ready or scheduled, and the earliest ``eta``."""
        if records is not None:
            return f"{len(records)} {min(record.eta for record in records)!r}"
        return f"1 {time.time() if eta is None else eta!r}"

    def _announce(self, notes: Sequence[str], everyone: bool = False) -> None:
        """Wake this process's waiting dequeues for the jobs notes tell of (``everyone``: all of them); remember
        scheduled times."""
        now = time.time()
        ready = 0
        with self._ready:
            self._wakeups += 1
            for note in notes:
                fields = note.split()
                try:
                    when = float(fields[1])
                    ready += int(fields[0]) if when <= now else 1
                except (IndexError, ValueError):  # not ours: someone else's NOTIFY on the channel
                    continue
                if when > now:
                    heapq.heappush(self._due, when)
            if len(self._due) > MAX_DUE:
                self._due = heapq.nsmallest(MAX_DUE // 2, self._due)
            if everyone:
                self._ready.notify_all()
            else:
                self._ready.notify(ready)

    def _ensure_listener(self) -> None:
        if self._listener is not None:
            return
        with self._ready:
            if self._listener is not None or self._closed:
                return
            self._stop_listener = socket.socketpair()
            self._listener = threading.Thread(
                target=self._listen,
                args=(self._stop_listener[0],),
                name="flask-queue-pg-listener",
                daemon=True,
            )
            self._listener.start()

    def _listen(self, stop: socket.socket) -> None:
        """The listener thread: wait for notifications on a connection of its own, connecting again after a
        failure with a growing pause, until ``close``."""
        pause = 0.1
        with selectors.DefaultSelector() as selector:
            selector.register(stop, selectors.EVENT_READ)
            while True:
                try:
                    with psycopg.connect(self._conninfo, autocommit=True) as conn:
                        self._listen_on(conn, selector, stop)
                        return
                except psycopg.Error as exc:
                    log.debug("%s: the listener lost its connection (%s); waiting dequeues poll meanwhile",
                              self.url, self._error(exc))  # fmt: skip
                if selector.select(pause):
                    return
                pause = min(pause * 2, LISTEN_RETRY_MAX)

    def _listen_on(
        self, conn: psycopg.Connection[Any], selector: selectors.BaseSelector, stop: socket.socket
    ) -> None:
        """Listen on ``conn`` until ``stop`` is written to (return) or the connection fails (raise)."""
        conn.execute(f'LISTEN "{self._channel.replace(chr(34), chr(34) * 2)}"')
        # What was notified while nobody listened is lost: have the waiting dequeues look now, and learn when
        # the next scheduled job is due.
        due = conn.execute(self._sql["due"], {"now": time.time()}).fetchone()
        self._announce([f"0 {due[0]!r}"] if due and due[0] is not None else [], everyone=True)
        # Its number is kept: a connection that failed may no longer tell it.
        fd = conn.fileno()
        selector.register(fd, selectors.EVENT_READ)
        try:
            while True:
                if any(key.fileobj is stop for key, _ in selector.select()):
                    return
                conn.pgconn.consume_input()
                notes = []
                while (notify := conn.pgconn.notifies()) is not None:
                    note = notify.extra.decode(errors="replace")
                    # A statement of this object's connections woke this process as it ran, but for the job
                    # the key trigger queued, which it did not know of.
                    if notify.be_pid not in self._own_pids or note.endswith(_statements.FREED):
                        notes.append(note)
                if notes:
                    self._announce(notes)
        finally:
            selector.unregister(fd)

    def interrupt(self) -> None:
        with self._ready:
            self._interrupts += 1
            self._ready.notify_all()

    # -- the contract --------------------------------------------------------------------------------------

    def enqueue(self, records: Sequence[JobRecord], *, on_conflict: str = "return") -> list[str]:
        if not records:
            return []
        if all(record.key is None for record in records):
            statement, params = self._insert(records)
            ids = _ids(self._execute(self._sql[statement], params).fetchall())
        else:
            ids = self._transaction(lambda run: self._store(run, records, on_conflict))
        self._announce([self._note(records)])
        return ids

    def _store(self, run: _sql.Run, records: Sequence[JobRecord], on_conflict: str) -> list[str]:
        """Insert ``records`` through ``run`` (inside the caller's transaction), keys as the contract says, and
        notify them at its commit."""
        now = time.time()
        ids = []
        for record in records:
            token = random.getrandbits(32)
            row = _sql.keyed_row(record, token)
            if record.key is None:
                # Never a conflict: both key indexes leave out the rows without one.
                [(seq,)] = run(_sql.INSERT_KEYED, {**row, "status": "queued"})
                ids.append(f"{seq}-{token:08x}")
            else:
                ids.append(_sql.store_keyed(run, row, on_conflict, now))
        run(_statements.NOTIFY, {"channel": self._channel, "note": self._note(records)})
        return ids

    def _insert(self, records: Sequence[JobRecord]) -> tuple[str, dict[str, Any]]:
        """The name of the statement that stores ``records``, and its parameters: one row is bound as values,
        several as arrays of values (one statement whatever their number)."""
        notify = {"channel": self._channel, "note": self._note(records)}
        if len(records) == 1:
            r = records[0]
            values = (random.getrandbits(32), r.task, r.queue, r.payload, r.priority, r.retries, r.timeout, r.eta,
                      r.enqueued_at, r.start_by)  # fmt: skip
            return "insert_one", {**dict(zip(_statements.INSERTED, values, strict=True)), **notify}
        return "insert", {
            "token": [random.getrandbits(32) for _ in records],
            "task": [r.task for r in records],
            "queue": [r.queue for r in records],
            "payload": [r.payload for r in records],
            "priority": [r.priority for r in records],
            "retries": [r.retries for r in records],
            "timeout": [r.timeout for r in records],
            "eta": [r.eta for r in records],
            "enqueued_at": [r.enqueued_at for r in records],
            "start_by": [r.start_by for r in records],
            **notify,
        }

    def enqueue_in_transaction(
        self, connection: Any, records: Sequence[JobRecord], *, on_conflict: str = "return"
    ) -> list[str]:
        from sqlalchemy import text

        if connection.dialect.name != "postgresql":
            raise self._not_this_database(connection)
        engine = connection.engine
        if engine not in self._same_database:
            if self._instance is None:
                self._conn()  # reads this database's instance id (and creates the tables)
            meta = f"{self._schema_sql}.flask_queue_meta"
            theirs = None
            # Probed before it is read: an error would abort the caller's transaction.
            if connection.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": meta}).scalar():
                theirs = connection.execute(text(f"SELECT instance FROM {meta}".replace(":", "\\:"))).scalar()
            if theirs != self._instance:
                raise self._not_this_database(connection)
            self._same_database.add(engine)
        if not records:
            return []
        # The backend's own statements, given to psycopg as they are (``exec_driver_sql``); their NOTIFY is
        # delivered at the caller's commit, or never.
        if all(record.key is None for record in records):
            statement, params = self._insert(records)
            return _ids(connection.exec_driver_sql(self._sql[statement], params).fetchall())

        def run(sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
            result = connection.exec_driver_sql(self._translate(sql), params)
            return list(result.fetchall()) if result.returns_rows else []

        if on_conflict == "raise" and len(records) > 1:
            # All or none inside the caller's transaction too: the records stored before the duplicate go
            # with the savepoint, and the caller's transaction stays usable.
            with connection.begin_nested():
                return self._store(run, records, on_conflict)
        return self._store(run, records, on_conflict)

    def enqueue_tick(self, schedule: str, tick: float, records: Sequence[JobRecord]) -> list[str] | None:
        def work(run: _sql.Run) -> list[str] | None:
            advanced = run(_sql.ADVANCE_TICK, {"name": schedule, "tick": tick})
            if not advanced or advanced[0][0]:
                return None  # another process had this tick (or a later one), or the schedule is paused
            return self._store(run, records, "return") if records else []

        ids = self._transaction(work)
        if ids:
            self._announce([self._note(records)])
        return ids

    def schedules(self) -> list[ScheduleState]:
        rows = self._execute(self._sql["schedules"], {}).fetchall()
        return [ScheduleState(name, last_tick, bool(paused)) for name, last_tick, paused in rows]

    def pause_schedule(self, schedule: str, paused: bool) -> None:
        self._execute(self._sql["pause"], {"name": schedule, "paused": int(paused)})

    def _not_this_database(self, connection: Any) -> ConfigurationError:
        return ConfigurationError(
            f"task.options(session=...).enqueue() stores the job inside the session's transaction, so the"
            f" session's database ({connection.engine.url!r}) must be the task queue's ({self.url}), and it is"
            " not: use task.enqueue_on_commit(...) to enqueue once the transaction commits, or point"
            " TASK_QUEUE_BACKEND at the app's database"
        )

    def dequeue(
        self, queues: Collection[str] | None, worker: str, lease: float, timeout: float
    ) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        interrupts = self._interrupts
        while True:
            seen = self._wakeups
            now = time.time()
            if now >= self._next_recover:
                self._recover(now)
            records = self._take(queues, worker, lease, 1, now)
            if records:
                return records[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._interrupts != interrupts:
                return None
            self._ensure_listener()
            with self._ready:
                # Scheduled times up to the look just made are past; a later one ends the wait.
                while self._due and self._due[0] <= now:
                    heapq.heappop(self._due)
                pause = min(remaining, self.poll_interval)
                if self._due:
                    pause = min(pause, self._due[0] - time.time())
                if self._wakeups == seen and self._interrupts == interrupts and pause > 0:
                    self._ready.wait(pause)

    def dequeue_batch(
        self, queues: Collection[str] | None, worker: str, lease: float, limit: int
    ) -> list[JobRecord]:
        return self._take(queues, worker, lease, limit, time.time())

    def _take(
        self, queues: Collection[str] | None, worker: str, lease: float, limit: int, now: float
    ) -> list[JobRecord]:
        params: dict[str, Any] = {"now": now, "until": now + lease, "worker": worker, "limit": limit}
        if queues is None:
            sql = self._sql["take"]
        else:
            sql = self._sql["take_queues"]
            params["queues"] = list(queues)
        records = [_sql.record(row, now) for row in self._execute(sql, params).fetchall()]
        if len(records) > 1:
            records.sort(key=lambda record: (record.priority, _sql.key(record.id)["seq"]))
        return records

    def _recover(self, now: float) -> None:
        """Fail the jobs that lost their lease once too often (the others are handed out again by a take), and
        store as expired those that expired by the clock (no take hands them out meanwhile)."""
        self._next_recover = now + RECOVER_INTERVAL
        self._execute(self._sql["recover"], {"now": now, "error": LOST_ERROR})

    def renew(self, job_id: str, worker: str, lease: float) -> bool:
        params = {"until": time.time() + lease, "worker": worker, **_sql.key(job_id)}
        return self._execute(self._sql["renew"], params).rowcount > 0

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
        params = {
            "status": JobStatus(status).value,
            "result": result,
            "error": error,
            "traceback": traceback,
            "now": now,
            "expires": expires_at,
            "worker": worker,
            **_sql.key(job_id),
        }
        row = self._execute(self._sql["finish"], params).fetchone()
        if row is None:
            return None
        record = _sql.record(row, now)
        self.finished_here(record)
        return record

    def finish_batch(
        self, worker: str, succeeded: Sequence[tuple[str, str | None, float | None]]
    ) -> list[JobRecord | None]:
        now = time.time()
        keys = [_sql.key(job_id) for job_id, _, _ in succeeded]
        params = {
            "seq": [key["seq"] for key in keys],
            "token": [key["token"] for key in keys],
            "result": [result for _, result, _ in succeeded],
            "expires": [expires for _, _, expires in succeeded],
            "now": now,
            "worker": worker,
        }
        done = {
            row[0]: _sql.record(row, now)
            for row in self._execute(self._sql["finish_batch"], params).fetchall()
        }
        records = [done.get(key["seq"]) for key in keys]
        for record in records:
            if record is not None:
                self.finished_here(record)
        return records

    def fail_unrunnable(self, job_id: str, worker: str, error: str) -> JobRecord | None:
        return self.finish(job_id, worker, JobStatus.FAILED, error=error, traceback="")

    def retry_later(self, job_id: str, worker: str, eta: float, error: str, traceback: str) -> bool:
        note = self._note(eta=eta)
        params = {"eta": eta, "error": error, "traceback": traceback, "worker": worker, "channel": self._channel,
                  "note": note, **_sql.key(job_id)}  # fmt: skip
        return self._changed("retry_later", params, note)

    def release(self, job_id: str, worker: str) -> bool:
        note = self._note()
        params = {"worker": worker, "channel": self._channel, "note": note, **_sql.key(job_id)}
        return self._changed("release", params, note)

    def requeue(self, job_id: str) -> bool:
        now = time.time()
        note = self._note(eta=now)
        params = {"now": now, "channel": self._channel, "note": note, **_sql.key(job_id)}
        try:
            return self._changed("requeue", params, note)
        except BackendError as exc:
            # Another job took the key between the statement's look for one and its write: the key's index
            # refused the second holder.
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                return False
            raise

    def _changed(self, statement: str, params: Mapping[str, Any], note: str) -> bool:
        """Run a statement that makes one job ready (or scheduled) and notifies it; wake this process too."""
        if self._execute(self._sql[statement], params).rowcount <= 0:
            return False
        self._announce([note])
        return True

    def get(self, job_id: str) -> JobRecord | None:
        row = self._execute(self._sql["get"], _sql.key(job_id)).fetchone()
        return None if row is None else _sql.record(row, time.time())

    def cancel(self, job_id: str) -> bool:
        now = time.time()
        row = self._execute(self._sql["cancel"], {"now": now, **_sql.key(job_id)}).fetchone()
        if row is None:
            return False
        self.finished_here(_sql.record(row, now))
        return True

    def purge(self, queue: str | None, statuses: Collection[JobStatus]) -> int:
        chosen = sorted({JobStatus(status) for status in statuses} - {JobStatus.RUNNING})
        if not chosen:
            return 0
        sql = f"DELETE FROM {self._schema_in_params}.flask_queue_jobs WHERE ({' OR '.join(_statements.STATUS_SQL[s] for s in chosen)})"
        if queue is not None:
            sql += " AND queue = %(queue)s"
        return self._execute(sql, {"now": time.time(), "queue": queue}).rowcount

    def size(self, queue: str | None = None) -> int:
        sql = self._sql["size"] if queue is None else self._sql["size_queue"]
        row = self._execute(sql, {"now": time.time(), "queue": queue}).fetchone()
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for queue, status, count in self._execute(self._sql["counts"], {"now": time.time()}).fetchall():
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
        clauses = [] if status is None else [_statements.STATUS_SQL[JobStatus(status)]]
        if queue is not None:
            clauses.append("queue = %(queue)s")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        columns = _sql.COLUMNS if preview is None else _sql.preview_columns("%(preview)s")
        sql = (
            f"SELECT {columns} FROM {self._schema_in_params}.flask_queue_jobs{where}"
            " ORDER BY seq DESC LIMIT %(limit)s OFFSET %(offset)s"
        )
        params = {"now": now, "queue": queue, "limit": limit, "offset": offset, "preview": preview}
        rows = self._execute(sql, params).fetchall()
        if preview is None:
            return [_sql.record(row, now) for row in rows]
        return [_sql.preview_record(row, now, preview) for row in rows]

    def expire(self) -> int:
        return self._execute(self._sql["expire"], {"now": time.time()}).rowcount

    def beat(self, info: WorkerInfo) -> None:
        params = {
            "name": info.name,
            "info": info.to_json(),
            "now": info.seen_at,
            "until": info.seen_at + info.ttl,
        }
        self._execute(self._sql["beat"], params)

    def workers(self) -> list[WorkerInfo]:
        rows = self._execute(self._sql["workers"], {"now": time.time()}).fetchall()
        return [WorkerInfo.from_json(info) for (info,) in rows]

    def forget(self, name: str) -> None:
        self._execute(self._sql["forget"], {"name": name})


def _seconds(url: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"TASK_QUEUE_BACKEND={url!r}: poll_interval must be a number of seconds > 0")
    return seconds


def _rows(cursor: psycopg.Cursor[Any]) -> list[Sequence[Any]]:
    """What a statement returned: its rows, or none for one that returns none (psycopg raises on a fetch)."""
    return cursor.fetchall() if cursor.description is not None else []


def _ids(rows: Sequence[Sequence[Any]]) -> list[str]:
    """The ids of inserted rows, in the order of the records: one statement numbers its rows in that order."""
    return [f"{seq}-{token:08x}" for seq, token, *_ in sorted(rows, key=lambda row: int(row[0]))]
