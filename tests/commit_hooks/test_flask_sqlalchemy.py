"""``session=None``: Flask-SQLAlchemy 3.1's ``db.session`` of the current app, in views, threads and tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, select

from flask_queue.commit_hooks import capture_on_commit, on_commit

from ._models import Base, Thing
from .conftest import sqlite_savepoints
from .test_threads import TIMEOUT, run_threads


def make_app(path: Path, name: str = "hooks") -> tuple[Flask, SQLAlchemy]:
    app = Flask(name)
    app.config["TESTING"] = True
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    db = SQLAlchemy(app)
    with app.app_context():
        sqlite_savepoints(db.engine)
        Base.metadata.create_all(db.engine)
    return app, db


@pytest.fixture
def app_db(tmp_path: Path) -> Iterator[tuple[Flask, SQLAlchemy]]:
    app, db = make_app(tmp_path / "app.db")
    yield app, db
    with app.app_context():
        db.engine.dispose()


def stored(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.scalars(select(Thing.num)))


def test_no_session_means_the_apps_db_session(app_db: tuple[Flask, SQLAlchemy]) -> None:
    app, db = app_db
    ran: list[int] = []
    with app.app_context():
        on_commit(lambda: ran.append(0))  # no transaction yet: runs at once
        db.session.add(Thing(num=1))
        on_commit(lambda: ran.append(1))
        with db.session.begin_nested():
            on_commit(lambda: ran.append(2))
        assert ran == [0]
        db.session.commit()
        assert ran == [0, 1, 2]
        db.session.add(Thing(num=3))
        on_commit(lambda: ran.append(3))
        db.session.rollback()
        assert ran == [0, 1, 2]
        assert stored(db.engine) == [1]


def test_outside_an_app_context_no_session_is_a_runtime_error_naming_the_fix() -> None:
    with pytest.raises(RuntimeError, match=r"pass session=.*app context"):
        on_commit(print)


def test_an_app_without_flask_sqlalchemy_is_a_runtime_error_naming_the_fix() -> None:
    app = Flask("bare")
    with app.app_context(), pytest.raises(RuntimeError, match=r"pass session=.*db\.init_app\(app\)"):
        on_commit(print)


def test_a_view_commits_and_its_hooks_run_then_a_failed_view_leaves_nothing(
    app_db: tuple[Flask, SQLAlchemy],
) -> None:
    app, db = app_db
    ran: list[str] = []

    @app.post("/things/<int:num>")
    def create(num: int) -> dict[str, int]:
        db.session.add(Thing(num=num))
        on_commit(lambda: ran.append(f"log {num}"))
        on_commit(lambda: ran.append(f"email {num}"), stage=1)
        if num == 13:
            raise RuntimeError("unlucky")  # no commit: the request ends and the session is removed
        db.session.commit()
        return {"num": num}

    client = app.test_client()
    with client.post("/things/1") as response:
        assert response.status_code == 200
    assert ran == ["log 1", "email 1"]
    app.config["PROPAGATE_EXCEPTIONS"] = False
    with client.post("/things/13") as response:
        assert response.status_code == 500
    with client.post("/things/2") as response:
        assert response.status_code == 200
    assert ran == ["log 1", "email 1", "log 2", "email 2"]  # nothing of request 13 leaked into 2
    with app.app_context():
        assert stored(db.engine) == [1, 2]


def test_capture_in_a_test_catches_the_hooks_of_a_request(app_db: tuple[Flask, SQLAlchemy]) -> None:
    app, db = app_db
    ran: list[str] = []

    @app.post("/things/<int:num>")
    def create(num: int) -> dict[str, int]:
        db.session.add(Thing(num=num))
        on_commit(lambda: ran.append(f"email {num}"))
        db.session.commit()
        return {"num": num}

    with capture_on_commit() as hooks, app.test_client().post("/things/5") as response:
        assert response.status_code == 200
    assert ran == []
    assert len(hooks) == 1
    hooks[0]()
    assert ran == ["email 5"]
    with capture_on_commit(execute=True), app.test_client().post("/things/6"):
        pass
    assert ran == ["email 5", "email 6"]


def test_two_apps_each_find_their_own_session(tmp_path: Path) -> None:
    first, first_db = make_app(tmp_path / "first.db", "first")
    second, second_db = make_app(tmp_path / "second.db", "second")
    ran: list[str] = []
    try:
        with first.app_context():
            first_db.session.add(Thing(num=1))
            on_commit(lambda: ran.append("first"))
            with second.app_context():
                second_db.session.add(Thing(num=2))
                on_commit(lambda: ran.append("second"))
                second_db.session.commit()
                assert ran == ["second"]
            first_db.session.rollback()
        assert ran == ["second"]
    finally:
        for app, db in ((first, first_db), (second, second_db)):
            with app.app_context():
                db.engine.dispose()


def test_threads_with_their_own_app_contexts_never_mix(app_db: tuple[Flask, SQLAlchemy]) -> None:
    app, db = app_db
    ran: dict[str, list[str]] = {"a": [], "b": []}
    registered = threading.Barrier(2, timeout=TIMEOUT)
    a_done = threading.Event()

    def worker(name: str) -> None:
        with app.app_context():
            on_commit(lambda: ran[name].append("immediate"))
            db.session.begin()
            on_commit(lambda: ran[name].append("hook"))
            registered.wait()
            if name == "b":
                assert a_done.wait(TIMEOUT)
                db.session.rollback()
            else:
                db.session.add(Thing(num=1))
                db.session.commit()
                a_done.set()

    run_threads(lambda: worker("a"), lambda: worker("b"))
    assert ran == {"a": ["immediate", "hook"], "b": ["immediate"]}
