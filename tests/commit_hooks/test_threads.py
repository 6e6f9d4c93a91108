"""Hooks of sessions used by several threads at once never mix (the seed keyed them by ``hash(db.session)``,
which is the same ``scoped_session`` object in every thread).

Real threads meet at barriers and events, so the interleavings below happen for sure; no sleeps.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from functools import partial

from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session, sessionmaker

from flask_queue.commit_hooks import on_commit

from ._models import Thing

TIMEOUT = 10.0


def run_threads(*targets: Callable[[], None]) -> None:
    """Run each target in a thread; re-raise the first error any of them raised."""
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:
            errors.append(error)
            raise

    threads = [threading.Thread(target=guard, args=(t,), name=f"hooks-{i}") for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished"
    if errors:
        raise errors[0]


def test_two_threads_of_one_scoped_session_keep_their_own_hooks(engine: Engine) -> None:
    scoped = scoped_session(sessionmaker(engine))
    ran: dict[str, list[str]] = {"a": [], "b": []}
    both_registered = threading.Barrier(2, timeout=TIMEOUT)
    a_committed = threading.Event()
    seen_by_hash: set[int] = set()

    def worker(name: str) -> None:
        seen_by_hash.add(hash(scoped))  # the seed's queue key: one value for both threads
        try:
            with scoped.begin():
                on_commit(lambda: ran[name].append(f"{name}1"), session=scoped)
                both_registered.wait()  # both threads now have a hook waiting in an open transaction
                on_commit(lambda: ran[name].append(f"{name}2"), session=scoped)
                both_registered.wait()
                if name == "b":
                    assert a_committed.wait(TIMEOUT)
                    assert ran["a"] == ["a1", "a2"]
                    assert ran["b"] == [], "a's commit ran b's hooks"
                scoped.add(Thing(num=1 if name == "a" else 2))
            assert ran[name] == [f"{name}1", f"{name}2"]
            if name == "a":
                assert ran["b"] == []
                a_committed.set()
        finally:
            scoped.remove()

    run_threads(lambda: worker("a"), lambda: worker("b"))
    assert ran == {"a": ["a1", "a2"], "b": ["b1", "b2"]}
    assert len(seen_by_hash) == 1


def test_many_threads_commit_and_roll_back_at_once_without_mixing(engine: Engine) -> None:
    scoped = scoped_session(sessionmaker(engine))
    start = threading.Barrier(4, timeout=TIMEOUT)
    results: dict[int, tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]] = {}

    def worker(number: int) -> None:
        chooser = random.Random(number)
        expected: list[tuple[int, int, int]] = []
        ran: list[tuple[int, int, int]] = []
        start.wait()
        try:
            for transaction in range(60):
                session = scoped()
                session.begin()
                hooks = [(number, transaction, i) for i in range(chooser.randint(0, 3))]
                for hook in hooks:
                    on_commit(partial(ran.append, hook), session=scoped)
                with session.begin_nested() as savepoint:
                    on_commit(partial(ran.append, (number, transaction, -1)), session=scoped)
                    keep_savepoint = chooser.random() < 0.5
                    if not keep_savepoint:
                        savepoint.rollback()
                if chooser.random() < 0.3:
                    session.rollback()
                else:
                    session.commit()
                    expected.extend(hooks)
                    if keep_savepoint:
                        expected.append((number, transaction, -1))
                if chooser.random() < 0.2:
                    scoped.remove()
        finally:
            scoped.remove()
            results[number] = (expected, ran)

    run_threads(*(lambda n=n: worker(n) for n in range(4)))
    assert set(results) == {0, 1, 2, 3}
    for expected, ran in results.values():
        assert ran == expected


def test_sessions_of_one_maker_in_threads_are_independent(engine: Engine) -> None:
    maker = sessionmaker(engine)
    ran: list[str] = []
    registered = threading.Barrier(2, timeout=TIMEOUT)

    def committer() -> None:
        with maker() as session, session.begin():
            on_commit(lambda: ran.append("committed"), session=session)
            registered.wait()

    def roller() -> None:
        with maker() as session:
            session.begin()
            on_commit(lambda: ran.append("rolled back"), session=session)
            registered.wait()
            session.rollback()

    run_threads(committer, roller)
    assert ran == ["committed"]
