"""Property test: any sequence of registrations, savepoints, commits and rollbacks runs exactly the hooks a
plain model of the semantics says, in its order (stages, then registration order).

The model keeps one list of hooks per open level (the root transaction, then each SAVEPOINT): a release
appends a level's hooks to its parent's, a savepoint rollback forgets them, a rollback forgets every level,
and a commit runs them all, sorted by stage, in registration order within a stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session, SessionTransaction

from flask_queue.commit_hooks import on_commit

from ._models import Thing
from .conftest import sqlite_engine

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.integers(0, 2)),
        st.tuples(st.just("write"), st.integers(0, 2)),
        st.just(("savepoint",)),
        st.just(("release",)),
        st.just(("rollback savepoint",)),
        st.just(("commit",)),
        st.just(("rollback",)),
        st.just(("close",)),
    ),
    max_size=40,
)


@pytest.fixture(scope="module")
def model_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = sqlite_engine(tmp_path_factory.mktemp("model") / "model.db")
    yield engine
    engine.dispose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_hooks_follow_the_model(model_engine: Engine, operations: list[tuple[object, ...]]) -> None:
    ran: list[int] = []
    expected: list[int] = []
    levels: list[list[tuple[int, int]]] = []  # the open levels' (stage, number), root first
    savepoints: list[SessionTransaction] = []
    number = 0

    def commit_model() -> None:
        pending = [hook for level in levels for hook in level]
        expected.extend(n for _, n in sorted(pending, key=lambda hook: hook[0]))  # stable: call order
        levels.clear()

    with Session(model_engine) as session:
        for operation in operations:
            kind = operation[0]
            if kind in ("register", "write"):
                stage = operation[1]
                assert isinstance(stage, int)
                if kind == "write":
                    session.add(Thing(num=number))
                number += 1
                on_commit(partial(ran.append, number), session=session, stage=stage)
                if levels or session.in_transaction():
                    if not levels:
                        levels.append([])
                    levels[-1].append((stage, number))
                else:
                    expected.append(number)  # no transaction open: at once
            elif kind == "savepoint":
                if not levels:
                    levels.append([])  # begin_nested() begins the root transaction first
                savepoints.append(session.begin_nested())
                levels.append([])
            elif kind == "release" and savepoints:
                savepoints.pop().commit()
                released = levels.pop()
                levels[-1].extend(released)
            elif kind == "rollback savepoint" and savepoints:
                savepoints.pop().rollback()
                levels.pop()
            elif kind == "commit":
                session.commit()
                savepoints.clear()
                commit_model()
            elif kind in ("rollback", "close"):
                if kind == "rollback":
                    session.rollback()
                else:
                    session.close()
                savepoints.clear()
                levels.clear()
            assert ran == expected
        session.rollback()
        levels.clear()
    assert ran == expected
