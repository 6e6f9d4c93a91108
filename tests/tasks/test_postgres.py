"""What the PostgreSQL backend does beyond the contract: its URL, errors, wake-ups, SKIP LOCKED, keys raced by
processes, tables of an older layout, and a server that restarts or drops its connections under it."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
import pytest
from flask import Flask
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from flask_queue import BackendError, DuplicateJob, JobStatus, TaskQueue
from flask_queue.tasks.backends import _sql, backend_from_url
from flask_queue.tasks.backends.postgres import PostgresBackend
from tests._services import POSTGRES_URL, postgres_namespace
from tests.servers._live import free_port
from tests.tasks._records import record

T = TypeVar("T")
LEASE = 30.0


@pytest.fixture
def url() -> Iterator[str]:
    """The URL of a schema of this test's own, dropped after it."""
    url, drop = postgres_namespace()
    yield url
    drop()


@pytest.fixture
def backends() -> Iterator[Callable[..., PostgresBackend]]:
    """Makes backends, closed after the test."""
    made: list[PostgresBackend] = []

    def make(url: str) -> PostgresBackend:
        backend = backend_from_url(url)
        assert isinstance(backend, PostgresBackend)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def eventually(call: Callable[[], T], within: float = 30.0) -> T:
    """The first result of ``call`` that does not raise ``BackendError``, retried until ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except BackendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_url_names_the_schema_and_hides_the_password() -> None:
    backend = PostgresBackend("postgresql://app:s3cret@db.example:5433/jobs?schema=queue&sslmode=prefer")
    try:
        assert backend.schema == "queue"
        assert backend.url == "postgresql://app:***@db.example:5433/jobs?schema=queue&sslmode=prefer"
    finally:
        backend.close()  # nothing to close: the backend connects at its first use
    assert PostgresBackend("postgres://app@host/jobs").schema == "public"


def test_a_password_given_as_a_parameter_is_hidden_too(backends: Callable[..., PostgresBackend]) -> None:
    # libpq takes the password in the query too; nothing listens on this port.
    port = free_port()
    backend = backends(
        f"postgresql://app@127.0.0.1:{port}/db?password=hunter2&connect_timeout=2&sslpassword=k3y"
    )
    assert (
        backend.url == f"postgresql://app@127.0.0.1:{port}/db?password=***&connect_timeout=2&sslpassword=***"
    )
    with pytest.raises(BackendError) as raised:
        backend.size()
    assert "hunter2" not in str(raised.value)
    assert "k3y" not in str(raised.value)
    # A driver's message that quotes them (none of libpq's here does) is scrubbed too.
    quoted = str(backend._error(RuntimeError("password hunter2 rejected, sslpassword k3y")))
    assert quoted.endswith("password *** rejected, sslpassword ***")


def test_the_other_parameters_go_to_libpq(url: str, backends: Callable[..., PostgresBackend]) -> None:
    backend = backends(f"{url}&application_name=fq%20test&options=-c%20work_mem%3D7MB")
    backend.size()
    [pid] = backend._own_pids
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row == ("fq test",)
    assert backend._conn().execute("SHOW work_mem").fetchone() == ("7MB",)


def test_the_tables_are_created_in_the_schema_named(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    backend = backends(url)
    backend.enqueue([record()])
    with psycopg.connect(POSTGRES_URL) as conn:
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [backend.schema]
            )
        }
    assert {"flask_queue_jobs", "flask_queue_workers", "flask_queue_meta"} <= tables


def test_processes_starting_together_create_the_tables_once(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    made = [backends(url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda backend: backend.size(), made))
    assert sizes == [0, 0, 0, 0]


def test_an_unreachable_server_raises_backend_error_naming_the_url_without_password(
    backends: Callable[..., PostgresBackend],
) -> None:
    port = free_port()  # nothing listens there
    backend = backends(f"postgresql://postgres:hunter2@127.0.0.1:{port}/test?schema=x")
    started = time.monotonic()
    with pytest.raises(BackendError) as raised:
        backend.enqueue([record()])
    assert time.monotonic() - started < 10.0
    message = str(raised.value)
    assert f"postgresql://postgres:***@127.0.0.1:{port}/test?schema=x" in message
    assert "hunter2" not in message
    assert not isinstance(raised.value, psycopg.Error)
    with pytest.raises(BackendError, match=r"\*\*\*"):
        backend.dequeue(None, "w1", LEASE, 0.0)


@pytest.fixture
def odd_schema() -> Iterator[str]:
    """A schema of this test's own whose name holds what SQL text, psycopg and SQLAlchemy treat specially."""
    schema = f'fq_test_{uuid.uuid4().hex[:12]} 100% :x {{y}} "q"'
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def test_a_schema_named_with_any_characters_works(
    odd_schema: str, backends: Callable[..., PostgresBackend]
) -> None:
    url = f"{POSTGRES_URL}?schema={quote(odd_schema)}&poll_interval=3600"
    backend = backends(url)
    assert backend.schema == odd_schema
    with ThreadPoolExecutor(1) as pool:
        # A dequeue that waits starts the listener, which reads the schema's table too.
        waiting = pool.submit(backend.dequeue, ["default"], "w1", LEASE, 60.0)
        [first, second] = backend.enqueue([record(), record(queue="other")])
        leased = waiting.result(timeout=60.0)
    assert leased is not None
    assert leased.id == first
    assert [job.id for job in backend.jobs(queue="other")] == [second]
    assert backend.purge("other", [JobStatus.QUEUED]) == 1
    assert backend.finish(first, "w1", JobStatus.SUCCEEDED, result="1") is not None
    # The outbox: the same insert through a SQLAlchemy connection of the same database.
    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            [third] = backend.enqueue_in_transaction(conn, [record()])
        with engine.begin() as conn:  # with a key: the shared statements, in this schema
            [fourth] = backend.enqueue_in_transaction(conn, [record(key="k")])
            assert backend.enqueue_in_transaction(conn, [record(key="k")]) == [fourth]
    finally:
        engine.dispose()
    third_record = backend.get(third)
    assert third_record is not None
    assert third_record.status is JobStatus.QUEUED
    assert backend.enqueue([record(key="k")]) == [fourth]
    assert backend.cancel(fourth)
    assert backend.requeue(fourth)
    assert backend.enqueue_tick("nightly", 1000.0, [record()]) is not None
    assert backend.enqueue_tick("nightly", 1000.0, [record()]) is None
    backend.pause_schedule("nightly", True)
    assert [(state.name, state.paused) for state in backend.schedules()] == [("nightly", True)]
    # The trigger (a function in the schema) hands a finished job's key on.
    [holder] = backend.enqueue([record(key="d", queue="keyed")])
    assert backend.dequeue(["keyed"], "w1", LEASE, 0.0) is not None
    [deferred] = backend.enqueue([record(key="d", queue="keyed")], on_conflict="replace")
    assert backend.finish(holder, "w1", JobStatus.SUCCEEDED) is not None
    promoted = backend.get(deferred)
    assert promoted is not None
    assert promoted.status is JobStatus.QUEUED


def test_a_notify_wakes_a_dequeue_waiting_in_another_backend_at_once(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    # Polls an hour apart: only the notification can wake the waiting dequeue within the test's deadline.
    waiter = backends(f"{url}&poll_interval=3600")
    writer = backends(url)
    waiter.size()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiter.dequeue, None, "w1", LEASE, 60.0)
        [job_id] = writer.enqueue([record()])
        leased = waiting.result(timeout=60.0)
    assert leased is not None
    assert leased.id == job_id


def test_a_scheduled_job_wakes_a_waiting_dequeue_when_it_falls_due(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    waiter = backends(f"{url}&poll_interval=3600")
    writer = backends(url)
    waiter.size()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiter.dequeue, None, "w1", LEASE, 60.0)
        [job_id] = writer.enqueue([record(eta=time.time() + 0.3)])
        leased = waiting.result(timeout=60.0)
    assert leased is not None
    assert leased.id == job_id


def test_two_backends_racing_for_jobs_never_both_get_one(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    first, second = backends(url), backends(url)
    first.enqueue([record(priority=n % 3) for n in range(400)])
    taken: list[str] = []
    lock = threading.Lock()

    def work(backend: PostgresBackend, name: str, batch: int) -> None:
        while leased := backend.dequeue_batch(None, name, LEASE, batch):
            with lock:
                taken.extend(r.id for r in leased)
            backend.finish_batch(name, [(r.id, None, None) for r in leased])

    with ThreadPoolExecutor(4) as pool:
        done = [
            pool.submit(work, backend, f"w{n}", batch)
            for n, (backend, batch) in enumerate([(first, 1), (second, 1), (first, 7), (second, 7)])
        ]
        for future in done:
            future.result(timeout=120)
    assert len(taken) == 400
    assert len(set(taken)) == 400
    assert first.counts()["default"]["succeeded"] == 400


def test_connections_dropped_by_the_server_are_made_again(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    backend = backends(url)
    kept = backend.enqueue([record() for _ in range(5)])
    with ThreadPoolExecutor(1) as pool:  # a waiting dequeue: the listener connects too
        assert pool.submit(backend.dequeue, {"none"}, "w1", LEASE, 0.3).result(30) is None
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        pids = set(backend._own_pids)
        assert pids
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [list(pids)])
    assert eventually(backend.size) == 5
    assert all(backend.get(job_id) is not None for job_id in kept)
    assert backend.dequeue(None, "w1", LEASE, 0.0) is not None


def test_a_connection_made_while_the_backend_closes_is_closed_too(
    url: str, backends: Callable[..., PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread that was connecting when close() ran kept its new connection open for good (a ResourceWarning
    # when the garbage collector found it, in whichever test ran then).
    backend = backends(url)
    backend.size()  # the tables exist: the next thread's connection is only connected
    connecting, closed = threading.Event(), threading.Event()
    made: list[psycopg.Connection[object]] = []
    connect = backend._connect

    def slow_connect() -> psycopg.Connection[object]:
        conn = connect()
        made.append(conn)
        connecting.set()
        closed.wait(10)
        return conn

    monkeypatch.setattr(backend, "_connect", slow_connect)
    with ThreadPoolExecutor(1) as pool:
        size = pool.submit(backend.size)
        assert connecting.wait(10)
        backend.close()
        closed.set()
        with pytest.raises(BackendError, match="is closed"):
            size.result(10)
    assert [conn.closed for conn in made] == [True]


def test_a_forked_child_uses_its_own_connections(url: str, backends: Callable[..., PostgresBackend]) -> None:
    backend = backends(url)
    backend.enqueue([record()])
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            backend.after_fork()
            backend.enqueue([record()])
            code = 0 if backend.size() == 2 else 2
            backend.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child dropped the parent's connection without ending its session: the parent's still works.
    assert backend.size() == 2


# -- keys, across connections and processes ----------------------------------------------------------------


def _enqueue_one_key(url: str, on_conflict: str, barrier: Any, results: Any) -> None:
    """One process of the race below: 100 enqueues of one key, from when both processes are ready."""
    try:
        backend = backend_from_url(url)
        try:
            backend.size()  # connected: the race is of the enqueues
            barrier.wait(60)
            ids = {backend.enqueue([record(key="race")], on_conflict=on_conflict)[0] for _ in range(100)}
        finally:
            backend.close()
        results.put(sorted(ids))
    except BaseException as exc:
        results.put(repr(exc))


def test_two_processes_racing_one_key_leave_one_job(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    backend = backends(url)
    backend.size()  # the tables exist before the race
    # Spawned, not forked: this process runs threads (the fork of one warns, and may deadlock the child).
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    racers = [
        context.Process(target=_enqueue_one_key, args=(url, on_conflict, barrier, results))
        for on_conflict in ("return", "replace")  # a replace updates the holder that a return names
    ]
    for racer in racers:
        racer.start()
    try:
        outcomes = [results.get(timeout=90) for _ in racers]
    finally:
        for racer in racers:
            racer.join(30)
    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes
    assert len({job_id for outcome in outcomes for job_id in outcome}) == 1
    assert backend.pending() == 1


def test_an_enqueue_whose_holder_ends_before_it_is_read_tries_again(
    url: str, backends: Callable[..., PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # READ COMMITTED: the insert met the holder, and the read that follows, a statement later, may find it
    # finished (by a worker elsewhere) and the key free. The enqueue stores its job then.
    backend, worker = backends(url), backends(url)
    [first] = worker.enqueue([record(key="k")])
    assert worker.dequeue(None, "w1", LEASE, 0.0) is not None
    translate = backend._translate
    ended: list[str] = []

    def finish_first_before_the_read(statement: str) -> str:
        if statement == _sql.HOLDER and not ended:
            assert worker.finish(first, "w1", JobStatus.SUCCEEDED) is not None
            ended.append(first)
        return translate(statement)

    monkeypatch.setattr(backend, "_translate", finish_first_before_the_read)
    [second] = backend.enqueue([record(key="k")], on_conflict="raise")
    assert ended == [first]
    assert second != first
    stored = backend.get(second)
    assert stored is not None
    assert stored.status is JobStatus.QUEUED


def test_a_deferred_job_past_its_start_by_can_be_cancelled(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    # Deferred, it is not expired (it expires once queued, if still late): cancel takes it like any deferred.
    backend = backends(url)
    backend.enqueue([record(key="k")])
    assert backend.dequeue(None, "w1", LEASE, 0.0) is not None
    [deferred] = backend.enqueue([record(key="k", start_by=time.time() + 0.05)], on_conflict="replace")
    time.sleep(0.1)
    found = backend.get(deferred)
    assert found is not None
    assert found.effective_status() is JobStatus.DEFERRED
    assert backend.cancel(deferred)


@pytest.mark.parametrize("finisher", ["the waiting backend", "another backend"])
def test_a_deferred_job_queued_by_a_finish_wakes_a_waiting_dequeue(
    url: str, backends: Callable[..., PostgresBackend], finisher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polls an hour apart: only the trigger's notification can wake the waiting dequeue in time. The waiting
    # backend's own finish too, whose notifications its listener otherwise skips (it announced them itself).
    waiter = backends(f"{url}&poll_interval=3600")
    other = waiter if finisher == "the waiting backend" else backends(url)
    [first] = other.enqueue([record(key="k")])
    assert other.dequeue(None, "w1", LEASE, 0.0) is not None
    [deferred] = other.enqueue([record(key="k")], on_conflict="replace")
    # The finish must come after a look that found nothing while the listener listened: one before could
    # be seen by that look, and pass without any notification.
    listening, looked_while_listening = threading.Event(), threading.Event()
    announce, take = waiter._announce, waiter._take

    def observed_announce(notes: Any, everyone: bool = False) -> None:
        announce(notes, everyone)
        if everyone:  # the listener's first announcement, once it listens
            listening.set()

    def observed_take(*args: Any) -> list[Any]:
        was_listening = listening.is_set()
        taken = take(*args)
        if was_listening and not taken:
            looked_while_listening.set()
        return taken

    monkeypatch.setattr(waiter, "_announce", observed_announce)
    monkeypatch.setattr(waiter, "_take", observed_take)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(waiter.dequeue, None, "w2", LEASE, 60.0)
        assert looked_while_listening.wait(30)
        assert other.finish(first, "w1", JobStatus.SUCCEEDED) is not None
        leased = waiting.result(timeout=30.0)
    assert leased is not None
    assert leased.id == deferred


def test_a_keyed_job_of_the_outbox_exists_only_if_its_transaction_commits(url: str, tmp_path: Path) -> None:
    app = Flask(f"outbox_{uuid.uuid4().hex}", instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=url, workers=0)

    @tasks.task(queue="held")
    def note(n: int) -> None: ...

    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with app.app_context():
            backend = tasks.backend()
            with Session(engine) as session:
                dropped = note.options(session=session, key="k").enqueue(1)
                session.rollback()
            assert tasks.get_job(dropped.id) is None
            with Session(engine) as session:
                keyed = note.options(session=session, key="k")
                kept = keyed.enqueue(2)
                assert tasks.get_job(kept.id) is None  # not committed: no other connection sees it
                assert keyed.enqueue(3).id == kept.id  # the transaction's own job holds the key already
                with pytest.raises(DuplicateJob) as raised:
                    note.options(
                        session=session, key=lambda n: "fresh" if n == 4 else "k", on_conflict="raise"
                    ).enqueue_many([((4,), {}), ((5,), {})])
                assert raised.value.job_id == kept.id
                session.commit()  # the transaction stayed usable, without the batch that raised
            stored = backend.get(kept.id)
            assert stored is not None
            assert (stored.status, stored.payload) == (JobStatus.QUEUED, '{"args":[2],"kwargs":{}}')
            assert backend.pending() == 1
            # Committed, it holds the key for every connection; the outbox honours keys held outside it.
            assert note.options(key="k").enqueue(6).id == kept.id
            assert backend.dequeue(["held"], "w1", LEASE, 0.0) is not None
            with Session(engine) as session:
                keyed = note.options(session=session, key="k")
                assert keyed.enqueue(7).id == kept.id
                with pytest.raises(DuplicateJob):
                    note.options(session=session, key="k", on_conflict="raise").enqueue(8)
                deferred = note.options(session=session, key="k", on_conflict="replace").enqueue(9)
                session.commit()
            assert deferred.id != kept.id
            assert deferred.status is JobStatus.DEFERRED
            assert backend.finish(kept.id, "w1", JobStatus.SUCCEEDED) is not None
            assert tasks.status(deferred.id) is JobStatus.QUEUED
    finally:
        engine.dispose()
        tasks.shutdown(timeout=10, app=app)
        tasks.backend(app).close()


#: The tables as the first layout made them (``SCHEMA_VERSION`` 1): no key or start_by, no schedules.
TABLES_V1 = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.flask_queue_jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token bigint NOT NULL,
    task text NOT NULL,
    queue text NOT NULL,
    payload text NOT NULL,
    priority bigint NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    retries bigint NOT NULL,
    timeout double precision,
    eta double precision NOT NULL,
    enqueued_at double precision NOT NULL,
    started_at double precision,
    finished_at double precision,
    lease_until double precision,
    worker text,
    result text,
    error text,
    traceback text,
    expires_at double precision,
    lost integer NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
CREATE INDEX IF NOT EXISTS flask_queue_ready ON {s}.flask_queue_jobs (priority, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS flask_queue_expiry ON {s}.flask_queue_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.flask_queue_workers (
    name text PRIMARY KEY,
    info text NOT NULL,
    alive_until double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.flask_queue_meta (
    instance text NOT NULL,
    version integer NOT NULL
)
"""


def test_tables_of_the_first_layout_are_migrated_and_keep_their_jobs(
    url: str, backends: Callable[..., PostgresBackend]
) -> None:
    schema = sql.Identifier(url.rsplit("schema=", 1)[1])
    now = time.time()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL(TABLES_V1).format(s=schema))
        conn.execute(sql.SQL("INSERT INTO {}.flask_queue_meta VALUES ('00c0ffee00c0ffee', 1)").format(schema))
        # What the first layout's enqueue stored: a ready job, and one that ran.
        rows = conn.execute(
            sql.SQL(
                "INSERT INTO {}.flask_queue_jobs (token, task, queue, payload, priority, status, attempts, retries,"
                " eta, enqueued_at, finished_at, result) VALUES"
                " (1, 'tests.noop', 'default', %(payload)s, 0, 'queued', 0, 0, %(now)s, %(now)s, NULL, NULL),"
                " (2, 'tests.noop', 'default', %(payload)s, 0, 'succeeded', 1, 0, %(now)s, %(now)s, %(now)s, '7')"
                " RETURNING seq, token"
            ).format(schema),
            {"now": now, "payload": '{"args":[],"kwargs":{}}'},
        ).fetchall()
    [ready, done] = [f"{seq}-{token:08x}" for seq, token in rows]
    backend = backends(url)
    old = backend.get(ready)
    assert old is not None
    assert (old.status, old.key, old.start_by) == (JobStatus.QUEUED, None, None)
    finished = backend.get(done)
    assert finished is not None
    assert (finished.status, finished.result) == (JobStatus.SUCCEEDED, "7")
    # The new layout works in full: keys and their trigger, expiry, schedules.
    [holder] = backend.enqueue([record(key="k")])
    assert backend.enqueue([record(key="k")]) == [holder]
    [late] = backend.enqueue([record(start_by=now - 1)])
    leased = backend.dequeue(None, "w1", LEASE, 0.0)
    assert leased is not None
    assert leased.id == ready  # the oldest first, as before
    assert backend.dequeue(None, "w1", LEASE, 0.0) is not None  # the holder; never the expired job
    assert backend.dequeue(None, "w1", LEASE, 0.0) is None
    [deferred] = backend.enqueue([record(key="k")], on_conflict="replace")
    assert backend.finish(holder, "w1", JobStatus.SUCCEEDED) is not None
    promoted = backend.get(deferred)
    assert promoted is not None
    assert promoted.status is JobStatus.QUEUED
    expired = backend.get(late)
    assert expired is not None
    assert expired.effective_status() is JobStatus.EXPIRED
    assert backend.enqueue_tick("nightly", now, [record()]) is not None
    with psycopg.connect(POSTGRES_URL) as conn:
        meta = conn.execute(
            sql.SQL("SELECT instance, version FROM {}.flask_queue_meta").format(schema)
        ).fetchall()
    assert meta == [("00c0ffee00c0ffee", 2)]  # the outbox still finds the database it knew


# -- a private server, restarted under the backend ---------------------------------------------------------


class Cluster:
    """A PostgreSQL cluster of this test's own, in a temporary folder, run by the ``postgres`` user."""

    def __init__(self) -> None:
        bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
        if os.geteuid() != 0 or bindir is None or shutil.which("runuser") is None:
            pytest.skip("a private PostgreSQL cluster needs root, runuser and /usr/lib/postgresql/*/bin")
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="fq-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema=fq"
        shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def test_a_restarted_server_is_used_again_with_every_acknowledged_job(
    cluster: Cluster, backends: Callable[..., PostgresBackend]
) -> None:
    backend = backends(f"{cluster.url}&poll_interval=3600")
    other = backends(cluster.url)
    acknowledged = backend.enqueue([record() for _ in range(20)])
    leased = backend.dequeue(None, "w1", LEASE, 0.0)
    assert leased is not None
    with ThreadPoolExecutor(1) as pool:  # the listener connects, to be cut off by the crash
        assert pool.submit(backend.dequeue, {"none"}, "w1", LEASE, 0.3).result(30) is None

    cluster.stop("immediate")  # a crash: no clean goodbye to the clients
    with pytest.raises(BackendError, match=str(cluster.port)):
        backend.size()
    cluster.start()

    assert eventually(backend.size) == 19
    assert all(backend.get(job_id) is not None for job_id in acknowledged)
    stored = backend.get(leased.id)
    assert stored is not None
    assert stored.status is JobStatus.RUNNING
    assert backend.finish(leased.id, "w1", JobStatus.SUCCEEDED) is not None
    # The listener connects again by itself: a job enqueued elsewhere wakes a waiting dequeue (polls an hour
    # apart could not).
    fresh_id = f"fresh-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(backend.dequeue, {fresh_id}, "w2", LEASE, 60.0)
        [job_id] = eventually(lambda: other.enqueue([record(queue=fresh_id)]))
        woken = waiting.result(timeout=60.0)
    assert woken is not None
    assert woken.id == job_id
