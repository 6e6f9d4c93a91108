"""``Task``: what ``@tasks.task`` makes of a function, and ``BoundTask``, the same with per-call options.

A task's options are checked when it is decorated (or when ``options()`` is called), so a bad value raises
``ConfigurationError`` (a ``ValueError``) where it is written, not in a worker.
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, ParamSpec, TypeVar

from .. import _checks
from .backends.base import ON_CONFLICT

if TYPE_CHECKING:
    from .job import Job
    from .queue import TaskQueue

__all__ = ["DEFAULT_QUEUE", "BoundTask", "Task"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_QUEUE: Final = "default"


@dataclass(frozen=True)
class _Options:
    queue: str
    priority: int
    retries: int
    timeout: float | None
    delay: float = 0.0
    #: The SQLAlchemy session whose transaction ``enqueue*`` join (the outbox) and whose commit
    #: ``enqueue_on_commit`` waits for (``None``: no outbox, and Flask-SQLAlchemy's session for the latter).
    session: Any = None
    #: A string, or a function of the call's arguments that returns one (``None``: no key).
    key: str | Callable[..., str] | None = None
    on_conflict: str = "return"
    #: Seconds after it is due that a job may still start (``None``: no limit), or an absolute time.
    expires_in: float | None = None
    expires_at: float | None = None
    #: The key of each call of one enqueue, computed from ``key`` by the ``TaskQueue``.
    keys: tuple[str, ...] | None = None

    def but(self, **changes: Any) -> _Options:
        """A copy with ``changes``: ``dataclasses.replace`` without its checks, which cost a quarter of a
        per-call ``task.options(key=...).enqueue()``; the values are checked by the caller."""
        copy = object.__new__(_Options)
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    def key_of(self, task: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """The key of one call: the string given, or what the key function returns for its arguments."""
        if self.key is None or isinstance(self.key, str):
            return self.key
        key = self.key(*args, **kwargs)
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"{task}: the key function {self.key!r} returned {key!r}, not a non-empty string"
            )
        return key


class Task(Generic[P, R]):
    """A function made into a task by ``@tasks.task``. Calling it runs it here, now; ``enqueue`` runs it in a
    worker. Its options are checked when it is decorated."""

    def __init__(
        self,
        queue: TaskQueue,
        func: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_backoff_max: float | None = None,
        timeout: float | None = None,
        queue_name: str = DEFAULT_QUEUE,
        priority: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        fail_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    ) -> None:
        if not callable(func) or isinstance(func, type):
            raise TypeError(f"@task decorates a function, not {type(func).__name__} {func!r}")
        if isinstance(func, Task):
            raise TypeError(
                f"{func!r} is a task already: decorate the function once (with @tasks.periodic, put it above"
                " @tasks.task)"
            )
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            # Until async tasks exist (they will run on the process's event loop), every job would fail.
            raise TypeError(
                f"@tasks.task got the async function {getattr(func, '__qualname__', func)!r}: async def tasks"
                " are not supported yet; make it a plain def that calls asyncio.run(...)"
            )
        self.func = func
        self.name = name if name is not None else f"{func.__module__}.{func.__qualname__}"
        _checks.name("task name", self.name)
        self.retry_backoff = _checks.number(f"{self.name}: retry_backoff", retry_backoff)
        self.retry_backoff_max = _checks.optional_number(f"{self.name}: retry_backoff_max", retry_backoff_max)
        #: The exceptions that are retried (``None``: every one), and those that fail the job at once.
        self.retry_on = _exception_types(f"{self.name}: retry_on", retry_on)
        self.fail_on = _exception_types(f"{self.name}: fail_on", fail_on)
        self._queue = queue
        self.defaults = _make_options(self.name, queue_name, priority, retries, timeout)
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", self.name)
        self.__wrapped__ = func
        #: The time zone of the ``tick`` its schedule passes it, which a job stores as ISO 8601 text; ``None``
        #: while no schedule passes one.
        self.tick_zone: dt.tzinfo | None = None

    def retries_on(self, exc: BaseException) -> bool:
        """Whether a failed attempt that raised ``exc`` may be retried (if retries are left): not if it is one
        of ``fail_on``, nor, when ``retry_on`` is given, if it is none of those."""
        if self.fail_on and isinstance(exc, self.fail_on):
            return False
        return self.retry_on is None or isinstance(exc, self.retry_on)

    def run(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> R:
        """Run one job's call here (a worker does): ``func`` with a schedule's ``tick`` made a ``datetime``."""
        if self.tick_zone is not None and isinstance(kwargs.get("tick"), str):
            tick = dt.datetime.fromisoformat(kwargs["tick"]).astimezone(self.tick_zone)
            kwargs = {**kwargs, "tick": tick}
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    @property
    def queue(self) -> str:
        return self.defaults.queue

    @property
    def priority(self) -> int:
        return self.defaults.priority

    @property
    def retries(self) -> int:
        return self.defaults.retries

    @property
    def timeout(self) -> float | None:
        return self.defaults.timeout

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        session: Any = None,
        key: str | Callable[..., str] | None = None,
        on_conflict: str | None = None,
        expires_in: float | None = None,
        expires_at: dt.datetime | None = None,
    ) -> BoundTask[P, R]:
        """This task with some options changed for the calls made through the handle returned.

        ``task.options(queue="urgent", priority=-1).enqueue(...)``: options never clash with the task's own
        argument names. Values are checked as at decoration. ``session`` is a SQLAlchemy ``Session`` or
        ``scoped_session`` (Flask-SQLAlchemy's ``db.session``): ``enqueue*`` then store the jobs inside its
        transaction (the outbox: they exist if and only if it commits), which needs the queue in the session's
        own database (PostgreSQL, or the app's SQLite file); ``enqueue_on_commit`` waits for its commit (an
        ``AsyncSession`` too).

        ``key`` (a string, or a function of the call's arguments that returns one, for ``enqueue_many``): at
        most one unfinished job of this task has it, decided by the backend in the write that stores the job.
        ``on_conflict`` says what an enqueue that meets it does: ``"return"`` (default) the existing job,
        ``"raise"`` ``DuplicateJob`` (its ``.job`` the existing one), ``"replace"`` give the existing job this
        call's arguments and time if it has not started (if it runs, this call waits for it to end). See
        ``docs/scheduling.md``.

        ``expires_in`` (seconds after the job is due: now, or its ``enqueue_in``/``enqueue_at`` time) or
        ``expires_at`` (an aware ``datetime``): a job that no worker started by then is ``EXPIRED`` and never
        runs.
        """
        d = self.defaults
        if (
            type(key) is str
            and 0 < len(key) <= MAX_KEY
            and key.isprintable()
            and queue is None
            and priority is None
            and retries is None
            and timeout is None
            and session is None
            and on_conflict is None
            and expires_in is None
            and expires_at is None
        ):
            # The call made on every enqueue of a keyed task, options(key=f"invoice:{id}"): kept short.
            return BoundTask(self, d.but(key=key))
        if queue is None and priority is None and retries is None and timeout is None:
            options = d  # checked at decoration already: a per-call options(key=...) need not do it again
        else:
            options = _make_options(
                self.name,
                d.queue if queue is None else queue,
                d.priority if priority is None else priority,
                d.retries if retries is None else retries,
                d.timeout if timeout is None else timeout,
            )
        changes = _scheduling_options(self.name, key, on_conflict, expires_in, expires_at)
        if session is not None or changes:
            options = options.but(session=session, **changes)
        return BoundTask(self, options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Have a worker run ``func(*args, **kwargs)``; return the job at once.

        Arguments are serialized here: one JSON cannot carry raises ``TypeError`` naming it.
        """
        return self._queue._enqueue(self, self.defaults, [(args, kwargs)])[0]

    def enqueue_in(self, delay: float, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Like ``enqueue``, to run ``delay`` seconds from now (at the earliest)."""
        return BoundTask(self, self.defaults).enqueue_in(delay, *args, **kwargs)

    def enqueue_at(self, when: dt.datetime, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Like ``enqueue``, to run at ``when``, an aware ``datetime`` (a naive one raises ``ValueError``)."""
        return BoundTask(self, self.defaults).enqueue_at(when, *args, **kwargs)

    def enqueue_many(self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]) -> list[Job]:
        """Enqueue many calls at once (one write for all): ``[(args, kwargs), ...]``; return their jobs."""
        return self._queue._enqueue(self, self.defaults, _calls(calls))

    def enqueue_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Enqueue the call once the SQLAlchemy transaction commits; never if it rolls back.

        The session is Flask-SQLAlchemy's ``db.session`` of the current app, or the one given with
        ``task.options(session=...)``; with no transaction open the job is enqueued at once. Arguments are
        serialized here, so one JSON cannot carry raises ``TypeError`` now. See ``docs/commit-hooks.md``.
        """
        self._queue._enqueue_on_commit(self, self.defaults, args, kwargs)


class BoundTask(Generic[P, R]):
    """A task with per-call options (``task.options(...)``): the same ``enqueue*`` methods."""

    def __init__(self, task: Task[P, R], options: _Options) -> None:
        self.task = task
        self._options = options

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self.task._queue._enqueue(self.task, self._options, [(args, kwargs)])[0]

    def enqueue_in(self, delay: float, *args: P.args, **kwargs: P.kwargs) -> Job:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay):
            raise TypeError(f"enqueue_in takes a delay in seconds first, not {delay!r}")
        options = self._options.but(delay=max(float(delay), 0.0))
        return self.task._queue._enqueue(self.task, options, [(args, kwargs)])[0]

    def enqueue_at(self, when: dt.datetime, *args: P.args, **kwargs: P.kwargs) -> Job:
        return self.enqueue_in(max(_timestamp("enqueue_at", when) - time.time(), 0.0), *args, **kwargs)

    def enqueue_many(self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]) -> list[Job]:
        return self.task._queue._enqueue(self.task, self._options, _calls(calls))

    def enqueue_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        self.task._queue._enqueue_on_commit(self.task, self._options, args, kwargs)


def _exception_types(setting: str, value: object) -> tuple[type[BaseException], ...] | None:
    """``None``, or exception classes as a tuple (one class is a tuple of one)."""
    if value is None:
        return None
    classes = value if isinstance(value, tuple) else (value,)
    if not classes or not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in classes):
        raise _checks.fail(setting, "an exception class or a tuple of them", value)
    return classes


def _timestamp(what: str, when: object) -> float:
    """The time of an aware ``datetime``, as seconds since the epoch."""
    if not isinstance(when, dt.datetime):
        raise TypeError(f"{what} takes a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        raise ValueError(
            f"{what} needs an aware datetime (with a time zone), not {when!r}: a naive one is ambiguous"
            " between processes; use datetime.now(timezone.utc) + timedelta(...)"
        )
    return when.timestamp()


#: The longest key: it goes into an index (SQLite and PostgreSQL) and a hash field (Redis).
MAX_KEY = 1000


def _scheduling_options(
    name: str,
    key: object,
    on_conflict: object,
    expires_in: object,
    expires_at: object,
) -> dict[str, Any]:
    """The checked ``key``, ``on_conflict``, ``expires_in`` and ``expires_at`` of ``task.options``, those given.

    Written for the common call, ``options(key=f"invoice:{id}")`` on every enqueue: nothing is formatted unless
    a value is wrong."""
    changes: dict[str, Any] = {}
    if key is not None:
        if not (isinstance(key, str) and key.isprintable() and 0 < len(key) <= MAX_KEY) and not callable(key):
            _checks.name(f"{name}: key", key)
            raise _checks.fail(f"{name}: key", f"a string of at most {MAX_KEY} characters", key)
        changes["key"] = key
    if on_conflict is not None:
        if key is None:
            raise ValueError(f"{name}: on_conflict={on_conflict!r} needs a key= to conflict on")
        changes["on_conflict"] = _checks.choice(f"{name}: on_conflict", on_conflict, ON_CONFLICT)  # type: ignore[arg-type]
    if expires_in is not None:
        if expires_at is not None:
            raise ValueError(f"{name}: give expires_in or expires_at, not both")
        changes["expires_in"] = _checks.number(f"{name}: expires_in", expires_in, strict=True)
    elif expires_at is not None:
        changes["expires_at"] = _timestamp(f"{name}: expires_at", expires_at)
    return changes


def _calls(
    calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
) -> list[tuple[Sequence[Any], Mapping[str, Any]]]:
    checked = []
    for index, call in enumerate(calls):
        if not (isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], Mapping)):
            raise TypeError(f"enqueue_many: call {index} must be an (args, kwargs) pair, not {call!r}")
        args, kwargs = call
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise TypeError(f"enqueue_many: call {index}'s args must be a list or tuple, not {args!r}")
        checked.append((args, kwargs))
    return checked


#: Retry counts are stored as 64-bit integers by the SQL backends.
_INT64 = 2**63
#: Priorities must also order exactly as Redis's sorted-set scores, which are doubles: integers of up to 53
#: bits are exact there.
_PRIORITY_LIMIT = 2**53


def _make_options(name: str, queue: str, priority: int, retries: int, timeout: float | None) -> _Options:
    _checks.name(f"{name}: queue", queue)
    _checks.integer(
        f"{name}: priority",
        priority,
        minimum=-_PRIORITY_LIMIT,
        maximum=_PRIORITY_LIMIT,
        what="an integer from -2**53 to 2**53 (lower runs first)",
    )
    _checks.integer(
        f"{name}: retries",
        retries,
        minimum=0,
        maximum=_INT64 - 1,
        what="an integer >= 0 and < 2**63 (attempts after the first)",
    )
    return _Options(
        queue, priority, retries, _checks.optional_number(f"{name}: timeout", timeout, strict=True)
    )
