"""``AsyncSession``: hooks go on its ``sync_session`` and run inside ``await session.commit()``.

aiosqlite and psycopg's async driver; each test runs its own event loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)

from flask_queue.commit_hooks import capture_on_commit, on_commit

from ._models import Base, Thing
from .conftest import ForcedError, postgres_sqlalchemy_url

DRIVERS = ["aiosqlite", "psycopg"]


@pytest.fixture(params=DRIVERS)
def make_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], AsyncEngine]:
    if request.param == "aiosqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'async.db'}"
        return lambda: create_async_engine(url)
    schema = request.getfixturevalue("postgres_schema")
    url = postgres_sqlalchemy_url("psycopg")
    return lambda: create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})


def run(make_engine: Callable[[], AsyncEngine], test: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    async def main() -> None:
        engine = make_engine()
        try:
            async with engine.begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
                await connection.execute(delete(Thing))
            await test(engine)
        finally:
            await engine.dispose()

    asyncio.run(main())


async def stored(engine: AsyncEngine) -> list[int]:
    async with AsyncSession(engine) as session:
        return sorted(await session.scalars(select(Thing.num)))


def test_hooks_run_after_await_commit_and_never_after_rollback(
    make_engine: Callable[[], AsyncEngine],
) -> None:
    ran: list[Any] = []

    async def test(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            on_commit(lambda: ran.append("now"), session=session)
            session.add(Thing(num=1))
            on_commit(lambda: ran.append(1), session=session)
            on_commit(lambda: ran.append("email 1"), session=session, stage=1)
            async with session.begin_nested():
                on_commit(lambda: ran.append(2), session=session)
            try:
                async with session.begin_nested():
                    on_commit(lambda: ran.append("dropped"), session=session)
                    raise ForcedError
            except ForcedError:
                pass
            assert ran == ["now"]
            await session.commit()
            assert ran == ["now", 1, 2, "email 1"]
            session.add(Thing(num=3))
            on_commit(lambda: ran.append(3), session=session)
            await session.rollback()
        assert ran == ["now", 1, 2, "email 1"]
        assert await stored(engine) == [1]

    run(make_engine, test)


def test_async_begin_block_and_a_hook_that_reads(make_engine: Callable[[], AsyncEngine]) -> None:
    ran: list[Any] = []

    async def test(engine: AsyncEngine) -> None:
        maker = async_sessionmaker(engine)
        async with maker() as session:
            async with session.begin():
                session.add(Thing(num=4))

                def hook() -> None:
                    # Hooks run inside SQLAlchemy's greenlet: the sync session may do I/O here.
                    ran.append(sorted(session.sync_session.scalars(select(Thing.num))))

                on_commit(hook, session=session)
            assert ran == [[4]]

    run(make_engine, test)


def test_a_raising_hook_leaves_the_async_session_usable(make_engine: Callable[[], AsyncEngine]) -> None:
    async def test(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            session.add(Thing(num=1))

            def hook() -> None:
                raise ForcedError

            on_commit(hook, session=session)
            with pytest.raises(ForcedError):
                await session.commit()
            session.add(Thing(num=2))
            await session.commit()
        assert await stored(engine) == [1, 2]

    run(make_engine, test)


def test_async_scoped_session_and_capture(make_engine: Callable[[], AsyncEngine]) -> None:
    ran: list[str] = []

    async def test(engine: AsyncEngine) -> None:
        scoped = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
        try:
            scoped.add(Thing(num=1))
            on_commit(lambda: ran.append("scoped"), session=scoped)
            with capture_on_commit(scoped) as hooks:
                on_commit(lambda: ran.append("captured"), session=scoped())
            await scoped.commit()
            assert ran == ["scoped"]
            assert len(hooks) == 1
        finally:
            await scoped.remove()

    run(make_engine, test)


def test_tasks_with_their_own_sessions_never_mix(make_engine: Callable[[], AsyncEngine]) -> None:
    ran: dict[str, list[str]] = {"a": [], "b": []}

    async def test(engine: AsyncEngine) -> None:
        both = asyncio.Barrier(2) if hasattr(asyncio, "Barrier") else None
        a_done = asyncio.Event()

        async def task(name: str) -> None:
            async with AsyncSession(engine) as session:
                await session.begin()
                on_commit(lambda: ran[name].append("hook"), session=session)
                if both is not None:
                    await both.wait()
                if name == "a":
                    await session.commit()
                    a_done.set()
                else:
                    await a_done.wait()
                    assert ran["b"] == []
                    await session.rollback()

        await asyncio.wait_for(asyncio.gather(task("a"), task("b")), 10)

    run(make_engine, test)
    assert ran == {"a": ["hook"], "b": []}
