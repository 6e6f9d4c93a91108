"""The outbox: ``task.options(session=...).enqueue(...)`` stores the job inside the session's transaction.

Run on PostgreSQL (the queue's schema in the app's database) and on SQLite (the queue in the app's own file),
with a plain SQLAlchemy ``Session`` and with Flask-SQLAlchemy's ``db.session``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from flask_queue import ConfigurationError, DuplicateJob, JobStatus, TaskQueue
from tests._services import POSTGRES_URL, postgres_namespace

WAIT = 30.0


@dataclass
class Setup:
    """An app whose task queue lives in its own database, and a way to open sessions on that database."""

    app: Flask
    tasks: TaskQueue
    session: Callable[[], Any]
    #: The app's table, ``things (x integer)``, named as SQL must name it.
    things: str


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(app database URL, task queue URL, app table) for a database of this test's own."""
    if request.param == "sqlite":
        file = tmp_path / "app.sqlite3"
        yield f"sqlite:///{file}", f"sqlite:///{file}", "things"
        return
    queue_url, drop = postgres_namespace()
    schema = queue_url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    # Polls an hour apart: a worker waiting for a job is woken by the NOTIFY its commit delivers, or not at all.
    queue_url += "&poll_interval=3600"
    yield POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1), queue_url, f'"{schema}".things'
    drop()


@pytest.fixture(params=["session", "flask-sqlalchemy"])
def setup(request: pytest.FixtureRequest, database: tuple[str, str, str], tmp_path: Path) -> Iterator[Setup]:
    db_url, queue_url, things = database
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["TESTING"] = True
    # Its worker takes the default queue only: tests that count jobs put them in others.
    tasks = TaskQueue(app, backend=queue_url, workers=1, queues=["default"])
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {things} (x integer)"))
    sessions: list[Session] = []
    if request.param == "session":

        def session() -> Any:
            sessions.append(Session(engine))
            return sessions[-1]

    else:
        app.config["SQLALCHEMY_DATABASE_URI"] = db_url
        db = SQLAlchemy(app)

        def session() -> Any:
            return db.session

    try:
        with app.app_context():
            yield Setup(app, tasks, session, things)
    finally:
        for opened in sessions:
            opened.close()
        tasks.shutdown(timeout=10, app=app)
        tasks.backend(app).close()
        if request.param == "flask-sqlalchemy":
            with app.app_context():
                db.engine.dispose()
        engine.dispose()


def test_a_committed_job_exists_once_and_runs(setup: Setup) -> None:
    @setup.tasks.task
    def double(n: int) -> int:
        return n * 2

    session = setup.session()
    session.execute(text(f"INSERT INTO {setup.things} VALUES (1)"))
    job = double.options(session=session).enqueue(21)
    session.commit()
    assert job.result(timeout=WAIT) == 42
    assert [r.id for r in setup.tasks.backend().jobs()] == [job.id]


def test_a_rolled_back_job_never_exists(setup: Setup) -> None:
    @setup.tasks.task
    def noop() -> None: ...

    session = setup.session()
    session.execute(text(f"INSERT INTO {setup.things} VALUES (1)"))
    job = noop.options(session=session).enqueue()
    session.rollback()
    assert setup.tasks.get_job(job.id) is None
    assert setup.tasks.backend().jobs() == []


def test_a_job_in_a_rolled_back_savepoint_never_exists(setup: Setup) -> None:
    @setup.tasks.task(queue="held")  # no worker takes this queue: the jobs stay to be counted
    def note(n: int) -> None: ...

    session = setup.session()
    bound = note.options(session=session)
    session.execute(text(f"INSERT INTO {setup.things} VALUES (1)"))
    kept = bound.enqueue(1)
    nested = session.begin_nested()
    dropped = bound.enqueue(2)
    nested.rollback()
    released = session.begin_nested()
    also_kept = bound.enqueue(3)
    released.commit()
    session.commit()
    assert setup.tasks.get_job(dropped.id) is None
    assert {r.id for r in setup.tasks.backend().jobs()} == {kept.id, also_kept.id}


def test_ids_are_known_before_the_commit_and_name_the_jobs_after(setup: Setup) -> None:
    @setup.tasks.task(queue="held")
    def note(n: int) -> None: ...

    session = setup.session()
    bound = note.options(session=session)
    session.execute(text(f"INSERT INTO {setup.things} VALUES (1)"))
    jobs = [
        bound.enqueue(1),
        *bound.enqueue_many([((2,), {}), ((3,), {})]),
        bound.enqueue_in(3600, 4),
        bound.enqueue_at(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), 5),
    ]
    assert len({job.id for job in jobs}) == 5
    # Not committed: no other connection sees them yet.
    assert all(setup.tasks.get_job(job.id) is None for job in jobs)
    session.commit()
    found = [setup.tasks.get_job(job.id) for job in jobs]
    assert [job.record.payload if job else None for job in found] == [
        f'{{"args":[{n}],"kwargs":{{}}}}' for n in range(1, 6)
    ]
    assert [job.status if job else None for job in found] == [JobStatus.QUEUED] * 3 + [
        JobStatus.SCHEDULED
    ] * 2


def test_waiting_workers_are_woken_after_the_commit(setup: Setup) -> None:
    @setup.tasks.task(queue="outbox-wake")
    def noop() -> None: ...

    backend = setup.tasks.backend()
    session = setup.session()
    session.execute(text(f"INSERT INTO {setup.things} VALUES (1)"))
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(backend.dequeue, {"outbox-wake"}, "w1", 30.0, WAIT)
        job = noop.options(session=session).enqueue()
        assert not waiting.done()  # nothing can take a job its transaction has not committed
        session.commit()
        leased = waiting.result(timeout=WAIT)
    assert leased is not None
    assert leased.id == job.id


def test_the_enqueued_signal_waits_for_the_commit(setup: Setup) -> None:
    from flask_queue import signals

    @setup.tasks.task(queue="held")
    def noop() -> None: ...

    heard: list[str] = []

    def hear(sender: Any, job: Any, **_: Any) -> None:
        heard.append(job.id)

    session = setup.session()
    with signals.task_enqueued.connected_to(hear):
        session.execute(text(f"INSERT INTO {setup.things} VALUES (1)"))
        dropped = noop.options(session=session).enqueue()
        session.rollback()
        session.execute(text(f"INSERT INTO {setup.things} VALUES (1)"))
        kept = noop.options(session=session).enqueue()
        assert heard == []
        session.commit()
    assert heard == [kept.id]
    assert dropped.id not in heard


def test_an_eager_queue_runs_the_job_at_the_commit(tmp_path: Path) -> None:
    file = tmp_path / "app.sqlite3"
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=f"sqlite:///{file}", eager=True)
    ran: list[int] = []

    @tasks.task
    def record(n: int) -> None:
        ran.append(n)

    engine = create_engine(f"sqlite:///{file}")
    try:
        with Session(engine) as session, app.app_context():
            session.execute(text("CREATE TABLE things (x integer)"))
            job = record.options(session=session).enqueue(1)
            assert ran == []
            session.commit()
            assert ran == [1]
            assert job.status is JobStatus.SUCCEEDED
    finally:
        tasks.backend(app).close()
        engine.dispose()


# -- what cannot work, said clearly ----------------------------------------------------------------------


def test_a_backend_in_another_database_raises_naming_the_fix(tmp_path: Path) -> None:
    app_db = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    try:
        for queue_url in ("memory://", f"sqlite:///{tmp_path / 'queue.sqlite3'}"):
            app = Flask(f"outbox_{uuid.uuid4().hex}", instance_path=str(tmp_path))
            tasks = TaskQueue(app, backend=queue_url, workers=0)

            @tasks.task
            def noop() -> None: ...

            with Session(app_db) as session, app.app_context():
                with pytest.raises(ConfigurationError, match="enqueue_on_commit") as raised:
                    noop.options(session=session).enqueue()
                assert "TASK_QUEUE_BACKEND" in str(raised.value)
            tasks.backend(app).close()
    finally:
        app_db.dispose()


def test_a_postgres_backend_with_a_session_on_another_database_raises() -> None:
    queue_url, drop = postgres_namespace()
    other = f"fq_outbox_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{other}"')
    other_url = (
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0] + f"/{other}"
    )
    engine = create_engine(other_url)
    app = Flask(f"outbox_{uuid.uuid4().hex}")
    tasks = TaskQueue(app, backend=queue_url, workers=0)

    @tasks.task
    def noop() -> None: ...

    try:
        with Session(engine) as session, app.app_context():
            session.execute(text("SELECT 1"))
            with pytest.raises(ConfigurationError, match="enqueue_on_commit"):
                noop.options(session=session).enqueue()
            # The check left the caller's transaction usable.
            assert session.execute(text("SELECT 2")).scalar() == 2
        sqlite = create_engine("sqlite://")
        with (
            Session(sqlite) as session,
            app.app_context(),
            pytest.raises(ConfigurationError, match="point TASK_QUEUE_BACKEND at the app's database"),
        ):
            noop.options(session=session).enqueue()
        sqlite.dispose()
    finally:
        tasks.backend(app).close()
        engine.dispose()
        drop()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


def test_an_async_session_is_refused_with_the_way_that_works(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    file = tmp_path / "app.sqlite3"
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=f"sqlite:///{file}", workers=0)

    @tasks.task(queue="held")
    def noop() -> None: ...

    async def main() -> str:
        engine = create_async_engine(f"sqlite+aiosqlite:///{file}")
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(TypeError, match="run_sync"):
                    noop.options(session=session).enqueue()
                # The way the message gives works: the sync session run_sync hands over.
                job = await session.run_sync(lambda sync: noop.options(session=sync).enqueue())
                await session.commit()
                return job.id
        finally:
            await engine.dispose()

    try:
        with app.app_context():
            job_id = asyncio.run(main())
            assert tasks.get_job(job_id) is not None
    finally:
        tasks.backend(app).close()


def test_the_outbox_needs_no_greenlet_for_a_plain_session(tmp_path: Path) -> None:
    """It imported sqlalchemy.ext.asyncio to tell an AsyncSession, which needs greenlet: SQLAlchemy 2.1 no
    longer installs it, so every enqueue inside a transaction failed with ImportError."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["sqlalchemy.ext.asyncio"] = None  # as if greenlet were missing: importing it raises ImportError
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from flask_queue import TaskQueue
db = {str(tmp_path / "app.sqlite3")!r}
app = Flask(__name__)
tasks = TaskQueue(app, backend="sqlite:///" + db, workers=0)
@tasks.task(name="note")
def note(): ...
engine = create_engine("sqlite:///" + db)
with app.app_context(), Session(engine) as session, session.begin():
    job = note.options(session=session).enqueue()
print(tasks.get_job(job.id).status)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "queued"


def test_a_keyed_job_in_the_outbox_holds_its_key_only_once_committed(setup: Setup) -> None:
    @setup.tasks.task(queue="held")
    def sync(invoice: int) -> None: ...

    session = setup.session()
    rolled = sync.options(session=session, key="invoice:1").enqueue(1)
    session.rollback()
    assert setup.tasks.get_job(rolled.id) is None
    session = setup.session()
    kept = sync.options(session=session, key="invoice:1").enqueue(1)
    assert sync.options(session=session, key="invoice:1").enqueue(2) == kept  # the same transaction sees it
    session.commit()
    assert sync.options(key="invoice:1").enqueue(3) == kept
    assert len(setup.tasks.backend().jobs()) == 1


def test_a_duplicate_in_an_outbox_batch_leaves_nothing_of_it_in_the_transaction(setup: Setup) -> None:
    @setup.tasks.task(queue="held")
    def sync(invoice: int) -> None: ...

    held = sync.options(key="invoice:2").enqueue(2)
    session = setup.session()
    raising = sync.options(session=session, key=lambda invoice: f"invoice:{invoice}", on_conflict="raise")
    with pytest.raises(DuplicateJob) as caught:
        raising.enqueue_many([((1,), {}), ((2,), {})])
    assert caught.value.job == held
    session.commit()  # the caller caught it and commits: invoice 1's job must not be stored
    assert [record.id for record in setup.tasks.backend().jobs()] == [held.id]
