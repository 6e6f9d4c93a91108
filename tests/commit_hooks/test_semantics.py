"""The semantics of DESIGN section 3 on SQLite and PostgreSQL, with Django's on_commit tests translated.

Django's ``transaction.atomic()`` is ``session.begin()`` at the outside and ``session.begin_nested()`` (a
SAVEPOINT) inside. ``notes.do(n)`` writes a row and registers a hook noting ``n``; ``notes.assert_done``
checks the hooks that ran against the rows that were committed, as Django's tests do.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from flask_queue.commit_hooks import on_commit

from ._models import Thing
from .conftest import ForcedError, Notes

# -- Django's TestConnectionOnCommit, translated -------------------------------------------------------


def test_runs_at_once_when_no_transaction_is_open(notes: Notes, session: Session) -> None:
    assert not session.in_transaction()  # a new Session has not begun (autobegin happens at first use)
    on_commit(notes.hook(1), session=session)
    assert notes.notified == [1]
    assert not session.in_transaction()


def test_a_hook_run_at_once_raises_to_the_caller(notes: Notes, session: Session) -> None:
    with pytest.raises(ForcedError):
        on_commit(notes.hook("error"), session=session)
    on_commit(notes.hook(1), session=session)  # nothing is left over from the raising one
    assert notes.notified == [1]


def test_robust_hook_with_no_transaction_logs_and_returns(
    notes: Notes, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    def robust_callback() -> None:
        raise ForcedError("robust callback")

    with caplog.at_level(logging.ERROR, logger="flask_queue.commit_hooks"):
        on_commit(robust_callback, session=session, robust=True)
        notes.do(1)
        session.commit()
    notes.assert_done([1])
    (record,) = caplog.records
    assert record.getMessage() == (
        "Error calling test_robust_hook_with_no_transaction_logs_and_returns.<locals>.robust_callback"
        " in on_commit() (robust hook)."
    )
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ForcedError)
    assert str(record.exc_info[1]) == "robust callback"


def test_robust_hook_in_a_transaction_logs_and_the_rest_run(
    notes: Notes, session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    def robust_callback() -> None:
        raise ForcedError("robust callback")

    with caplog.at_level(logging.ERROR, logger="flask_queue.commit_hooks"), session.begin():
        on_commit(robust_callback, session=session, robust=True)
        notes.do(1)
    notes.assert_done([1])
    (record,) = caplog.records
    assert "robust_callback in on_commit() (robust hook)" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ForcedError)
    assert "Traceback" in caplog.text


def test_robust_hook_as_a_partial_is_named(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    def robust_callback(word: str) -> None:
        raise ForcedError(word)

    hook = partial(robust_callback, "robust")
    with caplog.at_level(logging.ERROR, logger="flask_queue.commit_hooks"):
        on_commit(hook, session=session, robust=True)
    assert caplog.records[0].getMessage() == f"Error calling {hook!r} in on_commit() (robust hook)."


def test_waits_for_the_commit(notes: Notes, session: Session) -> None:
    with session.begin():
        notes.do(1)
        session.flush()
        assert notes.notified == []
    notes.assert_done([1])


def test_does_not_run_if_the_transaction_rolls_back(notes: Notes, session: Session) -> None:
    with suppress(ForcedError), session.begin():
        notes.do(1)
        raise ForcedError
    notes.assert_done([])


def test_runs_only_after_the_outermost_commit(notes: Notes, session: Session) -> None:
    with session.begin():
        with session.begin_nested():
            notes.do(1)
            assert notes.notified == []
        # The SAVEPOINT was released: SQLAlchemy fires after_commit for that too.
        assert notes.notified == []
    notes.assert_done([1])


def test_drops_the_hooks_of_a_rolled_back_savepoint(notes: Notes, session: Session) -> None:
    with session.begin():
        with session.begin_nested():
            notes.do(1)
        with suppress(ForcedError), session.begin_nested():
            notes.do(2)
            raise ForcedError
        with session.begin_nested():
            notes.do(3)
    notes.assert_done([1, 3])


def test_no_hook_runs_from_a_failed_transaction(notes: Notes, session: Session) -> None:
    with suppress(ForcedError), session.begin():
        with session.begin_nested():
            notes.do(1)
        raise ForcedError
    notes.assert_done([])


def test_a_deeper_savepoint_goes_with_its_rolled_back_parent(notes: Notes, session: Session) -> None:
    with session.begin():
        with suppress(ForcedError), session.begin_nested():
            with session.begin_nested():
                notes.do(1)
            raise ForcedError
        notes.do(2)
    notes.assert_done([2])


def test_an_error_without_a_savepoint_rolls_back_everything(notes: Notes, session: Session) -> None:
    # Django's atomic(savepoint=False) merged with the outer block: here, an error with no begin_nested().
    with suppress(ForcedError), session.begin():
        with session.begin_nested():
            notes.do(1)
        raise ForcedError
    notes.assert_done([])


def test_a_rolled_back_inner_savepoint_does_not_touch_the_outer(notes: Notes, session: Session) -> None:
    with session.begin(), session.begin_nested():
        notes.do(1)
        with suppress(ForcedError), session.begin_nested():
            raise ForcedError
    notes.assert_done([1])


def test_runs_in_registration_order(notes: Notes, session: Session) -> None:
    with session.begin():
        notes.do(1)
        with session.begin_nested():
            notes.do(2)
        notes.do(3)
    notes.assert_done([1, 2, 3])


def test_hooks_are_cleared_after_a_commit(notes: Notes, session: Session) -> None:
    with session.begin():
        notes.do(1)
    with session.begin():
        notes.do(2)
    notes.assert_done([1, 2])  # not [1, 1, 2]


def test_hooks_are_cleared_after_a_rollback(notes: Notes, session: Session) -> None:
    with suppress(ForcedError), session.begin():
        notes.do(1)
        raise ForcedError
    with session.begin():
        notes.do(2)
    notes.assert_done([2])


def test_close_with_a_transaction_open_discards(notes: Notes, session: Session) -> None:
    # Django's "cleared on reconnect". close() fires after_transaction_end and no rollback event.
    notes.do(1)
    session.close()
    notes.do(2)
    session.commit()
    notes.assert_done([2])


def test_an_error_in_a_hook_does_not_keep_the_hooks(notes: Notes, session: Session) -> None:
    with suppress(ForcedError), session.begin():
        on_commit(notes.hook("error"), session=session)
    with session.begin():
        notes.do(1)
    notes.assert_done([1])


def test_a_hook_may_query(notes: Notes, session: Session) -> None:
    with session.begin():
        session.add(Thing(num=1))

        def hook() -> None:
            for num in session.scalars(select(Thing.num)):
                notes.notify(num)

        on_commit(hook, session=session)
    notes.assert_done([1])


def test_a_hook_may_run_a_transaction(notes: Notes, session: Session) -> None:
    def hook() -> None:
        with session.begin():
            thing = Thing(num=1)
            session.add(thing)
            session.flush()
            notes.notify(thing.num)

    with session.begin():
        on_commit(hook, session=session)
    notes.assert_done([1])


def test_a_hook_in_a_hook_waits_for_that_hooks_own_commit(notes: Notes, session: Session) -> None:
    def hook(i: int, add_hook: bool) -> None:
        with session.begin():
            if add_hook:
                on_commit(lambda: hook(i + 10, False), session=session)
            thing = Thing(num=i)
            session.add(thing)
            session.flush()
            notes.notify(thing.num)

    with session.begin():
        on_commit(lambda: hook(1, True), session=session)
        on_commit(lambda: hook(2, True), session=session)
    notes.assert_done([1, 11, 2, 12])


@pytest.mark.parametrize("func", [None, 42, "send_mail", object()])
def test_a_non_callable_raises_type_error_at_registration(session: Session, func: Any) -> None:
    with pytest.raises(TypeError, match=r"on_commit\(\)'s hook must be a callable"):
        on_commit(func, session=session)


# -- beyond Django: stages, pending changes, hooks that raise, savepoints, sessions ----------------------


def test_stages_run_in_ascending_order_each_in_registration_order(notes: Notes, session: Session) -> None:
    with session.begin():
        on_commit(notes.hook("email 1"), session=session, stage=1)
        on_commit(notes.hook("log 1"), session=session)
        on_commit(notes.hook("first"), session=session, stage=-1)
        with session.begin_nested():
            on_commit(notes.hook("email 2"), session=session, stage=1)
            on_commit(notes.hook("log 2"), session=session, stage=0)
        on_commit(notes.hook("log 3"), session=session)
    assert notes.notified == ["first", "log 1", "log 2", "log 3", "email 1", "email 2"]


@pytest.mark.parametrize("stage", [1.0, "1", True, None])
def test_a_stage_must_be_an_int(session: Session, stage: Any) -> None:
    with pytest.raises(TypeError, match="stage must be an int"):
        on_commit(print, session=session, stage=stage)


def test_a_coroutine_function_is_refused(session: Session) -> None:
    async def send() -> None:
        pass

    with pytest.raises(TypeError, match="never awaits"):
        on_commit(send, session=session)
    with pytest.raises(TypeError, match="never awaits"):
        on_commit(partial(send), session=session)


def test_a_session_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match="session= must be a SQLAlchemy Session"):
        on_commit(print, session=object())  # type: ignore[arg-type]


def test_a_hook_waits_for_the_commit_after_a_read(notes: Notes, session: Session) -> None:
    # Any use of the session begins its transaction: the hook belongs to it.
    session.scalar(select(func.count()).select_from(Thing))
    assert session.in_transaction()
    on_commit(notes.hook(1), session=session)
    assert notes.notified == []
    session.commit()
    assert notes.notified == [1]


def test_a_changed_object_makes_the_hook_wait(notes: Notes, engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        thing = Thing(num=1)
        session.add(thing)
        session.commit()
        assert not session.in_transaction()
        thing.num = 2  # a change not yet flushed
        on_commit(notes.hook("changed"), session=session)
        assert notes.notified == []
        session.commit()
    assert notes.notified == ["changed"]
    assert notes.stored() == [2]


def test_without_autobegin_hooks_run_at_once_until_begin(notes: Notes, engine: Engine) -> None:
    with Session(engine, autobegin=False) as session:
        on_commit(notes.hook("nothing begun"), session=session)
        assert notes.notified == ["nothing begun"]
        with session.begin():
            session.add(Thing(num=1))
            on_commit(notes.hook(1), session=session)
            assert notes.notified == ["nothing begun"]
        with suppress(ForcedError), session.begin():
            on_commit(notes.hook(2), session=session)
            raise ForcedError
    assert notes.notified == ["nothing begun", 1]
    assert notes.stored() == [1]


def test_non_robust_raises_after_the_commit_skips_the_rest_and_the_session_stays_usable(
    notes: Notes, session: Session
) -> None:
    notes.do(1)
    on_commit(notes.hook("error"), session=session)
    notes.do(2)
    with pytest.raises(ForcedError):
        session.commit()
    assert notes.notified == [1]  # 2 was skipped, as Django skips the rest
    assert notes.stored() == [1, 2]  # the commit happened before the error
    assert not session.in_transaction()
    notes.do(3)
    session.commit()
    assert notes.notified == [1, 3]
    assert notes.stored() == [1, 2, 3]


def test_a_hook_registered_while_hooks_run_runs_in_the_same_pass(notes: Notes, session: Session) -> None:
    def first() -> None:
        notes.notify("first")
        assert not session.in_transaction()
        on_commit(notes.hook("added by first"), session=session)
        on_commit(notes.hook("added email"), session=session, stage=1)
        assert notes.notified == ["first"], "a hook registered by a hook does not run inline"

    with session.begin():
        on_commit(first, session=session)
        on_commit(notes.hook("second"), session=session)
        on_commit(notes.hook("email"), session=session, stage=1)
    assert notes.notified == ["first", "second", "added by first", "email", "added email"]
    with session.begin():
        notes.do(5)
    assert notes.notified[-1] == 5  # nothing left behind


def test_hooks_never_leak_into_the_next_transaction_of_the_session(notes: Notes, session: Session) -> None:
    notes.do(1)
    session.rollback()
    notes.do(2)
    session.commit()
    session.commit()  # an empty commit runs nothing again
    session.close()
    assert notes.notified == [2]
    # Session.info outlives transactions: nothing may stay there.
    state = session.info.get("flask_queue.commit_hooks")
    assert state is None or (not state.open and not state.passes)


def test_savepoints_several_deep(notes: Notes, session: Session) -> None:
    with session.begin():
        notes.do(1)
        with session.begin_nested():
            notes.do(2)
            with session.begin_nested():
                notes.do(3)
                with suppress(ForcedError), session.begin_nested():
                    notes.do(4)
                    with session.begin_nested():
                        notes.do(5)
                    raise ForcedError
                notes.do(6)
            notes.do(7)
        assert notes.notified == []
    notes.assert_done([1, 2, 3, 6, 7])


def test_a_savepoint_rolled_back_by_method_and_commit_with_a_savepoint_open(
    notes: Notes, session: Session
) -> None:
    notes.do(1)
    savepoint = session.begin_nested()
    notes.do(2)
    savepoint.rollback()
    session.begin_nested()
    notes.do(3)
    session.commit()  # releases the open SAVEPOINT, then commits
    notes.assert_done([1, 3])


def test_a_failed_flush_drops_the_hooks(notes: Notes, session: Session) -> None:
    session.add(Thing(id=1, num=1))
    session.commit()
    session.add(Thing(id=1, num=2))  # the same primary key
    on_commit(notes.hook("duplicate"), session=session)
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    notes.do(3)
    session.commit()
    assert notes.notified == [3]


def test_an_after_commit_listener_sees_the_commit_before_the_hooks(
    notes: Notes, maker: sessionmaker[Session]
) -> None:
    order: list[str] = []
    with maker() as session:

        @event.listens_for(session, "after_commit")
        def _committed(session: Session) -> None:
            order.append("after_commit (savepoint)" if session.in_nested_transaction() else "after_commit")

        session.add(Thing(num=1))
        on_commit(lambda: order.append("hook"), session=session)
        with session.begin_nested():
            pass
        session.commit()
    assert order == ["after_commit (savepoint)", "after_commit", "hook"]


def test_scoped_session_is_its_current_session(notes: Notes, maker: sessionmaker[Session]) -> None:
    scoped = scoped_session(maker)
    try:
        scoped.add(Thing(num=1))
        on_commit(notes.hook(1), session=scoped)
        assert notes.notified == []
        scoped.commit()
        assert notes.notified == [1]
    finally:
        scoped.remove()


# -- a session bound to a connection with an external transaction ----------------------------------------


@pytest.mark.parametrize("mode", ["conditional_savepoint", "create_savepoint", "rollback_only"])
def test_a_session_joined_to_an_external_transaction_runs_hooks_at_its_own_commit(
    notes: Notes, engine: Engine, mode: Any
) -> None:
    """The test-suite pattern: the session's commit() runs the hooks; the outer transaction is the test's."""
    with engine.connect() as connection:
        outer = connection.begin()
        with Session(bind=connection, join_transaction_mode=mode) as session:
            session.add(Thing(num=1))
            on_commit(notes.hook(1), session=session)
            session.commit()
            assert notes.notified == [1]
            session.add(Thing(num=2))
            on_commit(notes.hook(2), session=session)
            session.rollback()
        assert notes.notified == [1]
        outer.rollback()
    assert notes.stored() == []


def test_control_fully_commits_the_external_transaction_before_the_hooks(
    notes: Notes, engine: Engine
) -> None:
    with engine.connect() as connection:
        connection.begin()
        with Session(bind=connection, join_transaction_mode="control_fully") as session:
            session.add(Thing(num=1))
            on_commit(lambda: notes.notify(notes.stored()), session=session)
            session.commit()
            assert not connection.in_transaction()
    assert notes.notified == [[1]]


def test_the_hook_sees_the_committed_row_from_another_connection(notes: Notes, session: Session) -> None:
    session.add(Thing(num=7))
    on_commit(lambda: notes.notify(notes.stored()), session=session)
    session.commit()
    assert notes.notified == [[7]]


def test_sqlite_savepoint_recipe_is_in_force(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        session.add(Thing(num=1))
        with session.begin_nested():
            session.add(Thing(num=2))
            session.flush()
        assert session.scalar(text("SELECT count(*) FROM fq_things")) == 2


def test_listeners_are_installed_once_for_every_session_class(engine: Engine) -> None:
    from flask_queue.commit_hooks.sqlalchemy import _after_commit, _after_transaction_end

    class MySession(Session):
        pass

    for session in (Session(engine), sessionmaker(engine)(), MySession(engine)):
        with session:
            for _ in range(3):
                on_commit(lambda: None, session=session)
            assert list(session.dispatch.after_commit).count(_after_commit) == 1
            assert list(session.dispatch.after_transaction_end).count(_after_transaction_end) == 1


def test_hooks_registered_by_flush_and_commit_listeners_run_after_that_commit(
    notes: Notes, maker: sessionmaker[Session]
) -> None:
    """The "notify about what was written" pattern: a listener registers hooks for the flushed objects."""
    with maker() as session:

        @event.listens_for(session, "after_flush")
        def _flushed(session: Session, context: object) -> None:
            for thing in session.new:
                if isinstance(thing, Thing):
                    on_commit(notes.hook(f"flushed {thing.num}"), session=session)

        @event.listens_for(session, "before_commit")
        def _committing(session: Session) -> None:
            if not session.in_nested_transaction():  # before_commit fires on SAVEPOINT release too
                on_commit(notes.hook("before_commit"), session=session, stage=1)

        session.add(Thing(num=1))
        with session.begin_nested():
            session.add(Thing(num=2))  # flushed when the SAVEPOINT is released
        session.add(Thing(num=3))
        assert notes.notified == []
        session.commit()
        assert notes.notified == ["flushed 1", "flushed 2", "flushed 3", "before_commit"]
        session.add(Thing(num=4))
        session.flush()
        session.rollback()
        assert notes.notified == ["flushed 1", "flushed 2", "flushed 3", "before_commit"]
