"""Commit hooks on SQLAlchemy 2's session events; the API and its semantics are ``flask_queue.commit_hooks``'s.

The listeners are installed once per process, on ``sqlalchemy.orm.Session`` (so every session class and
sessionmaker inherits them), at the first ``on_commit`` or ``capture_on_commit``. A commit with no hook
pays two event calls that each look up one key in ``Session.info``; see ``bench/commit_hooks.py``.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

try:
    from sqlalchemy import event
    from sqlalchemy.orm import Session, SessionTransaction, scoped_session
    from sqlalchemy.orm.session import SessionTransactionOrigin
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "flask_queue.commit_hooks needs SQLAlchemy 2: pip install flask-queue[sqlalchemy]"
    ) from error

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

    SessionLike: TypeAlias = Session | scoped_session[Any] | AsyncSession | async_scoped_session[Any]

__all__ = ["capture_on_commit", "on_commit", "resolve_session"]

logger: Final = logging.getLogger("flask_queue.commit_hooks")

# A hook as it waits: (stage, sequence, function, robust, capture). The sequence is unique and grows in
# registration order, so a heap of these runs stages in ascending order and each stage in registration
# order, and hooks handed from a savepoint to its parent need no re-sorting. Comparison never reaches the
# function. A captured hook (capture_on_commit) stays with its transaction, so that a rollback takes it out
# of the capture, but is never run by a commit.
_Hook = tuple[int, int, Callable[[], object], bool, "_Capture | None"]

_STATE_KEY: Final = "flask_queue.commit_hooks"
_SUBTRANSACTION: Final = SessionTransactionOrigin.SUBTRANSACTION
_sequence = itertools.count()


class _Entry:
    """The hooks of one root or SAVEPOINT transaction, and whether it committed (set in ``after_commit``)."""

    __slots__ = ("committed", "hooks")

    def __init__(self) -> None:
        self.hooks: list[_Hook] = []
        self.committed = False


class _State:
    """What one Session keeps in ``Session.info``: hooks per open transaction, and the passes running.

    ``Session.info`` outlives transactions: an entry leaves ``open`` when its transaction ends, whatever
    the way, so nothing is carried into the next one.
    """

    __slots__ = ("open", "passes")

    def __init__(self) -> None:
        self.open: dict[SessionTransaction, _Entry] = {}
        self.passes: list[list[_Hook]] = []


# -- running hooks -----------------------------------------------------------------------------------


def _describe(func: Callable[[], object]) -> str:
    name = getattr(func, "__qualname__", None)
    return name if isinstance(name, str) else repr(func)


def _run(hooks: list[_Hook], passes: list[list[_Hook]]) -> None:
    """Run ``hooks`` (a list this takes over) in stage and registration order, as one pass.

    While it runs, the pass is the last of ``passes``, so a hook registered meanwhile with no transaction
    open joins it. A non-robust hook that raises ends the pass: the hooks left are dropped.
    """
    heapq.heapify(hooks)
    passes.append(hooks)
    try:
        while hooks:
            _, _, func, robust, captured = heapq.heappop(hooks)
            if captured is not None:
                continue  # the capture has it
            if not robust:
                func()
                continue
            try:
                func()
            except Exception:
                logger.error("Error calling %s in on_commit() (robust hook).", _describe(func), exc_info=True)
    finally:
        hooks.clear()
        # Passes of one session nest (a hook's own commit runs its pass inside), so this one is the last.
        passes.pop()


def _drop(hooks: list[_Hook]) -> None:
    """Forget the hooks of a transaction that did not commit (and take captured ones out of their capture)."""
    logger.debug("on_commit(): %d hook(s) dropped: their transaction did not commit", len(hooks))
    for hook in hooks:
        if hook[4] is not None:
            hook[4].discard(hook)


# -- the session listeners -----------------------------------------------------------------------------


def _after_commit(session: Session) -> None:
    """Mark the transaction that committed; its hooks are resolved when it ends (SAVEPOINT release too)."""
    state: _State | None = session.info.get(_STATE_KEY)
    if state is None or not state.open:
        return  # the common case: a commit without hooks costs this lookup only
    # Here the committing transaction is the innermost one: SQLAlchemy commits open subtransactions and
    # savepoints before their parent, and closes the committing one only after this event.
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # pragma: no cover - after_commit always has a transaction
        return
    entry = state.open.get(transaction)
    if entry is not None:
        entry.committed = True


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """Resolve a transaction's hooks: drop them (not committed), hand them up (savepoint) or run them (root)."""
    state: _State | None = session.info.get(_STATE_KEY)
    if state is None or not state.open:
        return
    entry = state.open.pop(transaction, None)
    if entry is None or not entry.hooks:
        return
    if not entry.committed:
        _drop(entry.hooks)
        return
    parent = transaction.parent
    if parent is not None:
        # A released SAVEPOINT: its hooks wait for the enclosing transaction. (A SAVEPOINT is never begun
        # inside a flush, but skip flush subtransactions all the same: they are never resolved.)
        while parent.origin is _SUBTRANSACTION and parent.parent is not None:  # pragma: no cover
            parent = parent.parent
        target = state.open.get(parent)
        if target is None:
            target = state.open[parent] = _Entry()
        target.hooks.extend(entry.hooks)
        return
    # The root committed and is closed: session.get_transaction() is None and the session is clean, so a
    # hook may use the session (a new transaction begins) and a hook that raises leaves it usable.
    # One thing is left to undo: a commit made by leaving `with session.begin():` still has that block
    # marked as the session's transaction context until __exit__ returns, and SQLAlchemy refuses any use
    # of the session "inside" a closed one. The block resets the mark to the enclosing one as it returns;
    # do it for the hooks' time already (SQLAlchemy has no public way to).
    context = getattr(session, "_trans_context_manager", None)
    if context is None or context._transaction_is_active():
        _run(entry.hooks, state.passes)
        return
    session._trans_context_manager = getattr(context, "_outer_trans_ctx", None)
    try:
        _run(entry.hooks, state.passes)
    finally:
        session._trans_context_manager = context


_install_lock = threading.Lock()
_installed = False


def _install_listeners() -> None:
    """Listen on ``Session`` once per process; every subclass and sessionmaker inherits the listeners."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if not _installed:
            event.listen(Session, "after_commit", _after_commit)
            event.listen(Session, "after_transaction_end", _after_transaction_end)
            _installed = True


# -- sessions ------------------------------------------------------------------------------------------


def _flask_sqlalchemy_session() -> Session:
    from flask import current_app, has_app_context

    if not has_app_context():
        raise RuntimeError(
            "on_commit() was given no session and there is no Flask app context to find Flask-SQLAlchemy's"
            " db.session in: pass session=... (a Session, scoped_session or AsyncSession), or call it inside"
            " an app context (`with app.app_context():`)."
        )
    extension = current_app.extensions.get("sqlalchemy")
    if extension is None:
        raise RuntimeError(
            f"on_commit() was given no session and the app {current_app.name!r} has no Flask-SQLAlchemy"
            " extension: pass session=..., or register Flask-SQLAlchemy with db.init_app(app)."
        )
    return resolve_session(extension.session)


def _flask_sqlalchemy_available() -> bool:
    from flask import current_app, has_app_context

    return has_app_context() and "sqlalchemy" in current_app.extensions


def resolve_session(session: SessionLike | None) -> Session:
    """The ``Session`` whose transactions carry the hooks of ``session``.

    ``session`` is a ``Session``, a ``scoped_session`` (its session for the current scope), an ``AsyncSession``
    or ``async_scoped_session`` (its ``sync_session``), or ``None`` (Flask-SQLAlchemy's ``db.session`` of the
    current app). Raises ``TypeError`` for anything else, ``RuntimeError`` when ``None`` finds no session.
    """
    if isinstance(session, Session):
        return session
    if session is None:
        return _flask_sqlalchemy_session()
    if isinstance(session, scoped_session):
        return resolve_session(session())
    sync_session = getattr(session, "sync_session", None)  # AsyncSession
    if isinstance(sync_session, Session):
        return sync_session
    if callable(session) and hasattr(session, "registry"):  # async_scoped_session
        return resolve_session(session())
    raise TypeError(
        "session= must be a SQLAlchemy Session, scoped_session, AsyncSession or async_scoped_session,"
        f" not {type(session).__name__}"
    )


def _register(session: Session, hook: _Hook) -> None:
    """Attach ``hook`` to the innermost open transaction of ``session``, or run it now if there is none."""
    state: _State | None = session.info.get(_STATE_KEY)
    if state is None:
        state = session.info[_STATE_KEY] = _State()
    # On SQLAlchemy 2 any change (add, delete, setting an attribute) begins the session's transaction, or
    # raises when autobegin=False and none was begun: pending changes always come with an open transaction,
    # so "no transaction" is "nothing to wait for".
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is not None:
        entry = state.open.get(transaction)
        if entry is None:
            entry = state.open[transaction] = _Entry()
        entry.hooks.append(hook)
    elif hook[4] is not None:
        return  # captured, and nothing to wait for
    elif state.passes:
        heapq.heappush(state.passes[-1], hook)  # registered by a running hook: same pass, after those queued
    else:
        _run([hook], state.passes)


# -- capture -------------------------------------------------------------------------------------------


class _Capture:
    """One ``capture_on_commit`` block: the hooks it took, in registration order, and its pass once it runs."""

    __slots__ = ("callables", "hooks", "open", "running", "target")

    def __init__(self, target: SessionLike | None) -> None:
        self.target = target
        self.callables: list[Callable[[], object]] = []  # what the block yields
        self.hooks: list[_Hook] = []  # the same hooks, as registered
        self.open = True
        self.running: list[_Hook] | None = None

    def take(self, hook: _Hook) -> None:
        self.callables.append(hook[2])
        self.hooks.append(hook)
        if self.running is not None:  # registered by a captured hook that execute=True runs: same pass
            heapq.heappush(self.running, (*hook[:4], None))

    def discard(self, hook: _Hook) -> None:
        """Take out a hook whose savepoint or transaction rolled back, while the block lasts (as Django)."""
        if not self.open:
            return
        for index, taken in enumerate(self.hooks):
            if taken[1] == hook[1]:
                del self.hooks[index], self.callables[index]
                return


_captures: ContextVar[tuple[_Capture, ...]] = ContextVar("flask_queue_commit_hook_captures", default=())


def _capture(
    func: Callable[[], object],
    session: SessionLike | None,
    robust: bool,
    stage: int,
    captures: tuple[_Capture, ...],
) -> None:
    """``on_commit`` inside ``capture_on_commit``: the innermost capture for the session takes the hook.

    A captured hook registered in an open transaction also goes with that transaction, marked captured, so
    that a rollback of its savepoint or transaction takes it back out of the capture.
    """
    resolved: Session | None = None
    taker: _Capture | None = None
    for capture in reversed(captures):
        if capture.target is None:
            taker = capture
            break
        if resolved is None:
            resolved = resolve_session(session)
        if resolve_session(capture.target) is resolved:
            taker = capture
            break
    # A catch-all capture needs no session: code under test may call on_commit() outside an app context.
    if resolved is None and (session is not None or _flask_sqlalchemy_available()):
        resolved = resolve_session(session)
    hook: _Hook = (stage, next(_sequence), func, robust, taker)
    if taker is not None:
        taker.take(hook)
    if resolved is not None:
        _register(resolved, hook)


# -- the public API ------------------------------------------------------------------------------------


def on_commit(
    func: Callable[[], object],
    *,
    session: SessionLike | None = None,
    robust: bool = False,
    stage: int = 0,
) -> None:
    """Run ``func()`` after the current transaction of ``session`` commits; drop it if it rolls back.

    ``session`` defaults to Flask-SQLAlchemy's ``db.session`` of the current app; outside an app context,
    pass one. ``func`` takes no argument (bind them with ``functools.partial``). See the module docstring
    for when it runs, ``stage`` and ``robust``.

    Raises ``TypeError`` at once when ``func`` is not callable (or is a coroutine function: hooks are
    called, never awaited), ``RuntimeError`` when no session is given and none can be found. With no
    transaction open ``func`` runs before this returns, and a non-robust error comes out of this call.
    """
    if not callable(func):
        raise TypeError(f"on_commit()'s hook must be a callable taking no argument, not {func!r}")
    if inspect.iscoroutinefunction(func):
        raise TypeError(
            f"on_commit() calls its hook and never awaits it, so {_describe(func)} (a coroutine function)"
            " would never run: pass a plain function, e.g. one that schedules the coroutine on your loop"
        )
    if type(stage) is not int:  # bool is an int, but a stage of True is a mistake
        raise TypeError(f"on_commit()'s stage must be an int, not {stage!r}")
    _install_listeners()
    robust = bool(robust)
    captures = _captures.get()
    if captures:
        _capture(func, session, robust, stage, captures)
        return
    _register(resolve_session(session), (stage, next(_sequence), func, robust, None))


@contextmanager
def capture_on_commit(
    session: SessionLike | None = None, *, execute: bool = False
) -> Iterator[list[Callable[[], object]]]:
    """Capture the hooks registered inside the block instead of registering them (a test helper).

    Yields the list of captured callables, in registration order, filled as the block runs (Django's
    ``captureOnCommitCallbacks``). ``session=None`` captures every hook registered in this thread (and
    context) whatever its session, so code that uses Flask-SQLAlchemy's per-app-context session is caught
    inside a test client request too; a given session captures only that session's hooks. A hook whose
    savepoint or transaction rolls back while the block runs is taken back out of the list (as Django's).
    Nothing is committed or rolled back by this, and a commit in the block does not run captured hooks.
    With ``execute=True`` the hooks run when the block exits without an
    exception, as a commit would run them (stages, ``robust``), and hooks they register are captured and
    run in the same pass.
    """
    _install_listeners()
    capture = _Capture(session)
    token = _captures.set((*_captures.get(), capture))
    try:
        yield capture.callables
        capture.open = False
        if execute:
            capture.running = [(*hook[:4], None) for hook in capture.hooks]
            _run(capture.running, [])
    finally:
        capture.open = False
        capture.running = None
        _captures.reset(token)
