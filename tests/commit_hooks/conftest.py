"""Engines for the commit-hook tests: a SQLite file per test, and PostgreSQL in a schema of this run's own.

PostgreSQL is read from ``FLASK_QUEUE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
an unreachable server skips its tests, except when ``CI`` is set, where it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, event, make_url, select, text
from sqlalchemy.orm import Session, sessionmaker

from flask_queue.commit_hooks import on_commit
from tests._services import POSTGRES_URL, require_postgres

from ._models import Base, Thing

BACKENDS = ["sqlite", "postgresql"]


class ForcedError(Exception):
    pass


def sqlite_savepoints(engine: Engine) -> Engine:
    """pysqlite begins transactions on its own and so breaks SAVEPOINT: let SQLAlchemy emit BEGIN itself."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def sqlite_engine(path: Path) -> Engine:
    engine = sqlite_savepoints(create_engine(f"sqlite:///{path}"))
    Base.metadata.create_all(engine)
    return engine


def postgres_sqlalchemy_url(driver: str = "psycopg") -> str:
    return make_url(POSTGRES_URL).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """A schema of this test run's own, so runs sharing the database never see each other's rows."""
    require_postgres()
    schema = f"fq_hooks_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_sqlalchemy_url())
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = postgres_engine(schema)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield schema
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def postgres_engine(schema: str, driver: str = "psycopg", **kwargs: Any) -> Engine:
    return create_engine(
        postgres_sqlalchemy_url(driver), connect_args={"options": f"-csearch_path={schema}"}, **kwargs
    )


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path / "hooks.db")
    else:
        engine = postgres_engine(request.getfixturevalue("postgres_schema"))
        with engine.begin() as connection:
            connection.execute(delete(Thing))
    yield engine
    engine.dispose()


@pytest.fixture
def maker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine)


@pytest.fixture
def session(maker: sessionmaker[Session]) -> Iterator[Session]:
    with maker() as session:
        yield session


class Notes:
    """Django's test pattern: ``do(n)`` writes a Thing and registers a hook noting n; ``done`` checks both."""

    def __init__(self, session: Session, engine: Engine) -> None:
        self.session = session
        self.engine = engine
        self.notified: list[Any] = []

    def notify(self, id_: Any) -> None:
        if id_ == "error":
            raise ForcedError(id_)
        self.notified.append(id_)

    def hook(self, id_: Any) -> Callable[[], None]:
        return lambda: self.notify(id_)

    def do(self, num: int, **options: Any) -> None:
        self.session.add(Thing(num=num))
        on_commit(self.hook(num), session=self.session, **options)

    def stored(self) -> list[int]:
        with Session(self.engine) as other:
            return sorted(other.scalars(select(Thing.num)))

    def assert_done(self, nums: list[int]) -> None:
        assert self.notified == nums
        assert self.stored() == sorted(nums)


@pytest.fixture
def notes(session: Session, engine: Engine) -> Notes:
    return Notes(session, engine)
