"""``task.enqueue_on_commit``: the job exists only once the SQLAlchemy transaction has committed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from flask_queue import ConfigurationError, TaskQueue


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    with Session(engine) as session:
        yield session
    engine.dispose()


@pytest.fixture
def queue(tmp_path: Path) -> tuple[Flask, TaskQueue]:
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend="memory://", workers=0)
    return app, tasks


def test_the_job_is_enqueued_after_the_commit(queue: tuple[Flask, TaskQueue], session: Session) -> None:
    app, tasks = queue

    @tasks.task
    def notify(n: int) -> None: ...

    with app.app_context():
        session.execute(text("INSERT INTO t VALUES (1)"))
        notify.options(session=session).enqueue_on_commit(1)
        assert tasks.size() == 0
        session.commit()
        assert tasks.size() == 1
        [job] = tasks.backend().jobs()
        assert job.payload == '{"args":[1],"kwargs":{}}'


def test_no_job_after_a_rollback_or_a_rolled_back_savepoint(
    queue: tuple[Flask, TaskQueue], session: Session
) -> None:
    app, tasks = queue

    @tasks.task
    def notify(n: int) -> None: ...

    bound = notify.options(session=session)
    with app.app_context():
        session.execute(text("INSERT INTO t VALUES (1)"))
        bound.enqueue_on_commit(1)
        session.rollback()
        session.execute(text("INSERT INTO t VALUES (2)"))
        bound.enqueue_on_commit(2)
        nested = session.begin_nested()
        bound.enqueue_on_commit(3)
        nested.rollback()
        session.commit()
        assert [job.payload for job in tasks.backend().jobs()] == ['{"args":[2],"kwargs":{}}']


def test_arguments_are_checked_and_frozen_at_the_call(
    queue: tuple[Flask, TaskQueue], session: Session
) -> None:
    app, tasks = queue

    @tasks.task
    def store(data: object) -> None: ...

    with app.app_context():
        session.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(TypeError, match=r"positional argument 0 \(datetime\)"):
            store.options(session=session).enqueue_on_commit(dt.datetime.now())
        data = {"items": [1]}
        store.options(session=session).enqueue_on_commit(data)
        data["items"].append(2)  # changed after the call, before the commit
        session.commit()
        [job] = tasks.backend().jobs()
        assert job.payload == '{"args":[{"items":[1]}],"kwargs":{}}'


def test_with_no_transaction_open_the_job_is_enqueued_at_once(
    queue: tuple[Flask, TaskQueue], session: Session
) -> None:
    app, tasks = queue

    @tasks.task
    def notify() -> None: ...

    with app.app_context():
        notify.options(session=session).enqueue_on_commit()
        assert tasks.size() == 1


def test_flask_sqlalchemys_session_by_default(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    db = SQLAlchemy(app)
    tasks = TaskQueue(app, backend="memory://", workers=0)
    ran: list[str] = []

    @tasks.task
    def welcome(name: str) -> None:
        ran.append(name)

    with app.app_context():
        db.session.execute(text("CREATE TABLE users (name TEXT)"))
        db.session.execute(text("INSERT INTO users VALUES ('ada')"))
        welcome.enqueue_on_commit("ada")
        assert tasks.size() == 0
        db.session.commit()
        tasks.drain()
        db.engine.dispose()  # its pooled connection would be closed by the garbage collector (3.13 warns)
    assert ran == ["ada"]


def test_enqueue_with_a_session_on_memory_names_enqueue_on_commit(
    queue: tuple[Flask, TaskQueue], session: Session
) -> None:
    app, tasks = queue

    @tasks.task
    def notify() -> None: ...

    with app.app_context(), pytest.raises(ConfigurationError, match="enqueue_on_commit"):
        notify.options(session=session).enqueue()
