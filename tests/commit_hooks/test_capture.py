"""``capture_on_commit``: Django's ``captureOnCommitCallbacks`` tests, translated, and what differs here."""

from __future__ import annotations

import logging
from contextlib import suppress

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from flask_queue.commit_hooks import capture_on_commit, on_commit

from ._models import Thing
from .conftest import ForcedError, Notes


def test_captures_without_running(notes: Notes, session: Session) -> None:
    session.add(Thing(num=1))
    with capture_on_commit(session) as hooks:
        on_commit(notes.hook(1), session=session)
        assert len(hooks) == 1
    assert notes.notified == []
    hooks[0]()
    assert notes.notified == [1]


def test_no_session_captures_every_hook_even_with_no_app_context(notes: Notes) -> None:
    with capture_on_commit() as hooks:
        on_commit(notes.hook(1))  # no session and no app: captured, not an error
    assert len(hooks) == 1
    assert notes.notified == []


def test_a_given_session_captures_only_its_own(notes: Notes, maker: sessionmaker[Session]) -> None:
    with maker() as mine, maker() as other:
        with capture_on_commit(mine) as hooks:
            on_commit(notes.hook("mine"), session=mine)  # no transaction: would run at once
            on_commit(notes.hook("other"), session=other)
        assert notes.notified == ["other"]
        assert len(hooks) == 1
        hooks[0]()
    assert notes.notified == ["other", "mine"]


def test_a_scoped_session_captures_its_current_session(notes: Notes, maker: sessionmaker[Session]) -> None:
    scoped = scoped_session(maker)
    try:
        with capture_on_commit(scoped) as hooks:
            on_commit(notes.hook(1), session=scoped())
        assert len(hooks) == 1
    finally:
        scoped.remove()


def test_execute_runs_them_at_the_end_of_the_block(notes: Notes, session: Session) -> None:
    with capture_on_commit(session, execute=True) as hooks:
        notes.do(1)
        on_commit(notes.hook("email"), session=session, stage=1)
        notes.do(2)
        assert notes.notified == []
    assert len(hooks) == 3
    assert notes.notified == [1, 2, "email"]
    session.rollback()  # nothing in the block was committed by the capture
    assert notes.stored() == []


def test_a_commit_inside_the_block_does_not_run_captured_hooks(notes: Notes, session: Session) -> None:
    with capture_on_commit(session) as hooks:
        notes.do(1)
        session.commit()
        assert notes.notified == []
    assert notes.stored() == [1]
    assert len(hooks) == 1
    notes.do(2)
    session.commit()
    assert notes.notified == [2]


def test_hooks_registered_before_the_block_are_not_captured(notes: Notes, session: Session) -> None:
    session.add(Thing(num=0))
    on_commit(notes.hook("pre"), session=session)
    with capture_on_commit(session) as hooks:
        on_commit(notes.hook("in"), session=session)
    assert len(hooks) == 1
    session.commit()
    assert notes.notified == ["pre"]


def test_a_rolled_back_savepoint_takes_its_hooks_out_of_the_capture(notes: Notes, session: Session) -> None:
    with capture_on_commit(session) as hooks:
        with suppress(ForcedError), session.begin_nested():
            notes.do(1)
            raise ForcedError
        notes.do(2)
    assert len(hooks) == 1
    hooks[0]()
    assert notes.notified == [2]


def test_execute_is_recursive(session: Session) -> None:
    called = []

    def enqueue() -> None:
        on_commit(lambda: called.append(True), session=session)

    with capture_on_commit(session, execute=True) as hooks:
        on_commit(enqueue, session=session)
    assert len(hooks) == 2
    assert called == [True]


def test_execute_runs_a_tree_of_hooks_once_each(session: Session) -> None:
    """branch_1 registers branch_2 and leaf_3; branch_2 registers leaf_1 and leaf_2."""
    visited: list[str] = []

    def node(name: str, *children: str) -> None:
        visited.append(name)
        for child in children:
            on_commit(tree[child], session=session)

    tree = {
        "branch_1": lambda: node("branch_1", "branch_2", "leaf_3"),
        "branch_2": lambda: node("branch_2", "leaf_1", "leaf_2"),
        "leaf_1": lambda: node("leaf_1"),
        "leaf_2": lambda: node("leaf_2"),
        "leaf_3": lambda: node("leaf_3"),
    }
    with capture_on_commit(session, execute=True) as hooks:
        on_commit(tree["branch_1"], session=session)
    assert visited == ["branch_1", "branch_2", "leaf_3", "leaf_1", "leaf_2"]
    assert len(hooks) == 5


def test_execute_robust_logs_and_continues(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    called = []

    def hook() -> None:
        raise ForcedError("robust callback")

    with (
        caplog.at_level(logging.ERROR, logger="flask_queue.commit_hooks"),
        capture_on_commit(session, execute=True) as hooks,
    ):
        on_commit(hook, session=session, robust=True)
        on_commit(lambda: called.append(True), session=session)
    assert len(hooks) == 2
    assert called == [True]
    record = caplog.records[0]
    assert record.getMessage().endswith("hook in on_commit() (robust hook).")
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "robust callback"


def test_execute_not_robust_raises_and_skips_the_rest(session: Session) -> None:
    called = []

    def hook() -> None:
        raise ForcedError

    def block() -> None:
        with capture_on_commit(session, execute=True):
            on_commit(hook, session=session)
            on_commit(lambda: called.append(True), session=session)

    with pytest.raises(ForcedError):
        block()
    assert called == []


def test_an_error_in_the_block_executes_nothing(notes: Notes, session: Session) -> None:
    with suppress(ForcedError), capture_on_commit(session, execute=True) as hooks:
        on_commit(notes.hook(1), session=session)
        raise ForcedError
    assert len(hooks) == 1
    assert notes.notified == []


def test_captures_nest_and_the_innermost_takes_the_hook(notes: Notes, engine: Engine) -> None:
    with Session(engine) as session:
        with capture_on_commit() as outer:
            with capture_on_commit(session) as inner:
                on_commit(notes.hook(1), session=session)
            on_commit(notes.hook(2), session=session)
        assert (len(outer), len(inner)) == (1, 1)
    assert notes.notified == []
