"""``TaskQueue``, the Flask extension, and ``Task``, what ``@tasks.task`` makes of a function.

::

    from flask_queue import TaskQueue

    tasks = TaskQueue(app)              # TASK_QUEUE_* config; default: SQLite in app.instance_path, 2 threads

    @tasks.task(retries=3, timeout=60)
    def send_mail(to, subject): ...

    job = send_mail.enqueue("a@example.com", "hi")
    job.result(timeout=5)

Tasks belong to the ``TaskQueue``; backends and workers belong to each app it is set up on (kept in
``app.extensions["flask-queue.tasks"]``). In-process workers start at the first request or the first
enqueue of a process, whichever comes first, never in the reloader's watching parent nor in ``flask queue``
commands, and again in a child after a fork.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, overload

import click
from flask import current_app, has_app_context
from flask.cli import FlaskGroup
from flask.helpers import get_debug_flag

from .. import _checks, _keys, signals
from ..exceptions import ConfigurationError, DuplicateJob
from .backends import backend_from_url
from .job import Job
from .records import JobRecord, JobStatus
from .schedule import Schedule, Scheduler
from .serializer import JSONSerializer, Serializer
from .task import DEFAULT_QUEUE, Task, _Options
from .worker import Executor, StopReport, Worker

if TYPE_CHECKING:
    from flask import Flask

    from .backends.base import Backend

__all__ = ["DEFAULTS", "QueueState", "TaskQueue"]

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("flask_queue.tasks")

#: Every setting, its default, and its config key (``TASK_QUEUE_<NAME>``). ``backend`` ``None``: the SQLite
#: file ``flask_queue.sqlite3`` in the app's instance folder.
DEFAULTS: Final[Mapping[str, Any]] = {
    "backend": None,
    "workers": None,
    "queues": None,
    "lease": 30.0,
    "result_ttl": 86400.0,
    "failed_ttl": None,
    "retry_backoff_max": 300.0,
    "eager": False,
    "shutdown_timeout": 10.0,
}
DEFAULT_SQLITE: Final = "sqlite:///flask_queue.sqlite3"
#: Worker threads per web process when ``TASK_QUEUE_WORKERS`` is unset.
DEFAULT_WORKERS: Final = 2
#: The backend of an app with ``TESTING = True`` and no ``TASK_QUEUE_BACKEND``: its own, in memory.
DEFAULT_TESTING: Final = "memory://"
#: Seconds after ``init_app`` at which ``flask run``'s serving process starts its workers.
FLASK_RUN_START_DELAY: Final = 0.5


@dataclass(eq=False)
class QueueState:
    """What a ``TaskQueue`` keeps per app (``tasks.state(app)``): its settings, backend and in-process worker.

    Read it, do not change it: the CLI, the dashboard and the test helpers find the queue's backend and
    settings here. ``pid`` is the process it belongs to; ``tasks.after_fork(state)`` renews it in a child.
    """

    app: Flask
    #: The ``TaskQueue`` set up on the app: how a dashboard or a test finds it from the app.
    extension: TaskQueue
    settings: dict[str, Any]
    backend: Backend
    executor: Executor
    pid: int = field(default_factory=os.getpid)
    worker: Worker | None = None
    #: In-process workers are not started here (``flask queue ...`` commands, ``workers=0``).
    no_workers: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The config keys ``init_app`` read, with their values: a later change to one is warned about.
    read: dict[str, Any] = field(default_factory=dict)
    #: Whether the app's config was compared with ``read`` already (at the first request or enqueue).
    config_checked: bool = False
    #: Whether a ``flask`` command that runs no worker said so already (at its first enqueue).
    hinted: bool = False


class TaskQueue:
    """Background tasks for a Flask app: ``@tasks.task`` functions, run by workers from a backend.

    Every constructor argument but ``serializer`` is the default of a ``TASK_QUEUE_<NAME>`` config key read
    in ``init_app``:

    :param backend: the backend's URL (default: ``sqlite:///flask_queue.sqlite3`` in the instance folder).
    :param workers: worker threads per web process; 0 for none (with ``flask queue worker``, say). Unset: 2,
        or 0 for an app under test (``TESTING``) with no backend set, whose jobs run with ``tasks.drain(app)``.
    :param queues: the queues the in-process workers take; ``None`` for all.
    :param lease: seconds a worker holds a job before another may take it (renewed while it runs).
    :param result_ttl: seconds a succeeded job is kept; ``None``: for ever.
    :param failed_ttl: seconds a failed job is kept; ``None`` (default): for ever.
    :param retry_backoff_max: the longest wait before a retry, in seconds.
    :param eager: run each job inline at enqueue (for tests).
    :param shutdown_timeout: seconds a drain waits for running jobs at exit.
    :param serializer: how calls and results are stored (default: JSON).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        backend: str | None = DEFAULTS["backend"],
        workers: int | None = DEFAULTS["workers"],
        queues: Sequence[str] | str | None = DEFAULTS["queues"],
        lease: float = DEFAULTS["lease"],
        result_ttl: float | None = DEFAULTS["result_ttl"],
        failed_ttl: float | None = DEFAULTS["failed_ttl"],
        retry_backoff_max: float = DEFAULTS["retry_backoff_max"],
        eager: bool = DEFAULTS["eager"],
        shutdown_timeout: float = DEFAULTS["shutdown_timeout"],
        serializer: Serializer | None = None,
    ) -> None:
        self.defaults: dict[str, Any] = {
            "backend": backend,
            "workers": workers,
            "queues": queues,
            "lease": lease,
            "result_ttl": result_ttl,
            "failed_ttl": failed_ttl,
            "retry_backoff_max": retry_backoff_max,
            "eager": eager,
            "shutdown_timeout": shutdown_timeout,
        }
        self.serializer: Serializer = serializer if serializer is not None else JSONSerializer()
        self.tasks: dict[str, Task[..., Any]] = {}
        #: The periodic schedules, by name (``@tasks.periodic``).
        self.schedules: dict[str, Schedule] = {}
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        #: The state of the one app this queue is set up on, while there is only one.
        self._only: QueueState | None = None
        if app is not None:
            self.init_app(app)

    # -- set-up --------------------------------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Set up the queue on ``app``: read its config, open its backend. Raises ``RuntimeError`` if done twice,
        ``ConfigurationError`` for a bad setting, ``BackendError`` for a backend it cannot use."""
        _checks.flask_app("TaskQueue", app, hint=" (the backend is a setting: TaskQueue(app, backend=URL))")
        if _keys.TASKS in app.extensions:
            raise RuntimeError(
                f"a TaskQueue is already set up on app {app.name!r}; init_app runs once per app"
            )
        _checks.unknown_settings(app, "TASK_QUEUE_", DEFAULTS)
        settings = {
            name: app.config.setdefault(f"TASK_QUEUE_{name.upper()}", value)
            for name, value in self.defaults.items()
        }
        read = {f"TASK_QUEUE_{name.upper()}": value for name, value in settings.items()}
        read["TESTING"] = app.testing
        if settings["workers"] is None:
            # Under test with no backend set: nor threads that race the test's tasks.drain() and keep each
            # test's app alive.
            settings["workers"] = 0 if app.testing and settings["backend"] is None else DEFAULT_WORKERS
        _check_settings(settings)
        # An app's test suite must not share the queue of its dev server (the SQLite file in instance/): the
        # pytest process would run the dev server's jobs against the test database, and the other way round.
        testing_default = settings["backend"] is None and app.testing
        url = DEFAULT_TESTING if testing_default else (settings["backend"] or DEFAULT_SQLITE)
        backend = backend_from_url(url, base_dir=app.instance_path)
        executor = Executor(
            app=app,
            backend=backend,
            tasks=self.tasks,
            serializer=self.serializer,
            result_ttl=settings["result_ttl"],
            failed_ttl=settings["failed_ttl"],
            retry_backoff_max=settings["retry_backoff_max"],
            immediate_retries=bool(settings["eager"]),
        )
        state = QueueState(
            app=app, extension=self, settings=settings, backend=backend, executor=executor, read=read
        )
        state.no_workers = settings["workers"] == 0 or bool(settings["eager"])
        app.extensions[_keys.TASKS] = state
        self._apps.add(app)
        self._only = state if len(self._apps) == 1 else None
        app.before_request(lambda: self._ensure_started(state))
        if not state.no_workers:
            server = _server_loading_app()
            if server == "serving" or _flask_command() == ("run", True):
                # A process that serves requests (flask run's, a gunicorn worker, waitress-serve's): start the
                # workers without waiting for a request, so that schedules tick and a backlog drains on an idle
                # app, but once the app factory has finished setting the app up (a job must not run before
                # the extensions it uses exist).
                self._start_soon(state)
            elif server == "forking":
                # gunicorn --preload: this is the master, which forks the workers after this: each starts its own.
                _FORKED_SERVERS.add(state)
        from .cli import queue_command

        if "queue" not in app.cli.commands:
            app.cli.add_command(queue_command)
        _AT_EXIT.add(state)

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = ...,
        retries: int = ...,
        retry_backoff: float = ...,
        retry_backoff_max: float | None = ...,
        timeout: float | None = ...,
        queue: str = ...,
        priority: int = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
        fail_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_backoff_max: float | None = None,
        timeout: float | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        fail_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    ) -> Any:
        """Make a function a task: ``@tasks.task`` or ``@tasks.task(name=..., retries=..., ...)``.

        ``name`` (default: ``module.qualname``) is what a job records, so keep it stable across deploys;
        ``retries`` attempts after the first; ``retry_backoff`` seconds before the first retry, doubled each
        time with full jitter, at most ``retry_backoff_max`` (default ``TASK_QUEUE_RETRY_BACKOFF_MAX``);
        ``timeout`` seconds an attempt may run; ``queue`` and ``priority`` (lower runs first); ``retry_on``
        (an exception class or a tuple: only those are retried, any other fails the job at once) and
        ``fail_on`` (those fail it at once, whatever ``retry_on`` says). Bad values raise ``ValueError`` here, at
        decoration.
        """

        def decorate(func: Callable[P, R]) -> Task[P, R]:
            task = Task(
                self,
                func,
                name=name,
                retries=retries,
                retry_backoff=retry_backoff,
                retry_backoff_max=retry_backoff_max,
                timeout=timeout,
                queue_name=queue,
                priority=priority,
                retry_on=retry_on,
                fail_on=fail_on,
            )
            if task.name in self.tasks and self.tasks[task.name].func is not func:
                raise ValueError(f"two tasks are named {task.name!r}; give one of them name=...")
            self.tasks[task.name] = task
            return task

        return decorate if func is None else decorate(func)

    def periodic(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        catch_up: str = "latest",
        max_lateness: float | None = None,
        overlap: bool = True,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Any:
        """Run a task on a schedule: ``@tasks.periodic(cron="*/5 * * * *", tz="Europe/Paris")`` or
        ``@tasks.periodic(every=30)``, over a function (made a task, as ``@tasks.task`` would) or over a task
        (``@tasks.periodic(...)`` above ``@tasks.task(...)``, or ``tasks.periodic(every=60)(existing)``).

        Each tick's job is enqueued exactly once, however many processes run workers on the backend: their
        keepers all compute the tick, and the backend lets one of them store it. ``tick=`` is passed (an aware
        ``datetime`` in ``tz``) when the function takes it; it must need no other argument. ``catch_up``
        (``"latest"``, ``"all"``, ``"none"``), ``max_lateness`` and ``overlap``: see ``Schedule`` and
        ``docs/scheduling.md``. ``name`` (default: the task's) names the schedule in the backend, the CLI and
        the dashboard; ``queue`` and ``priority`` (default: the task's) are its jobs'.
        """

        def decorate(target: Callable[..., Any]) -> Task[..., Any]:
            task = target if isinstance(target, Task) else self.task(target)
            if task._queue is not self:
                raise ValueError(f"{task!r} belongs to another TaskQueue")
            schedule = Schedule(
                task,
                name=task.name if name is None else name,
                cron=cron,
                every=every,
                tz=tz,
                catch_up=catch_up,
                max_lateness=max_lateness,
                overlap=overlap,
                queue=queue,
                priority=priority,
            )
            if schedule.name in self.schedules:
                raise ValueError(
                    f"two schedules are named {schedule.name!r}; give one of them @tasks.periodic(name=...)"
                )
            if schedule.takes_tick:
                task.tick_zone = schedule.tz
            self.schedules[schedule.name] = schedule
            return task

        return decorate if func is None else decorate(func)

    def schedule_states(self, app: Flask | None = None) -> list[dict[str, Any]]:
        """Each schedule of the code, as ``flask queue schedules`` and the dashboard show it: ``name``,
        ``task``, ``when`` (``cron "..." tz`` or ``every N s``), ``last_tick`` and ``next_tick`` (aware
        ``datetime`` in the schedule's zone, ``None`` before the first), ``paused``."""
        state = self.state(app)
        stored = {record.name: record for record in state.backend.schedules()}
        now = time.time()
        listed = []
        for name, schedule in sorted(self.schedules.items()):
            record = stored.get(name)
            last = None if record is None else record.last_tick
            listed.append(
                {
                    "name": name,
                    "task": schedule.task.name,
                    "when": schedule.describe(),
                    "last_tick": None if last is None else schedule.tick_time(last),
                    "next_tick": schedule.tick_time(schedule.next_after(max(now, last or now))),
                    "paused": record is not None and record.paused,
                }
            )
        return listed

    def pause(self, name: str | Task[..., Any], app: Flask | None = None) -> None:
        """Pause a schedule in every process: its ticks pass without jobs until ``resume``."""
        self.state(app).backend.pause_schedule(self._schedule(name).name, True)

    def resume(self, name: str | Task[..., Any], app: Flask | None = None) -> None:
        """Resume a paused schedule from its next tick (the ticks that passed paused are not caught up)."""
        self.state(app).backend.pause_schedule(self._schedule(name).name, False)

    def run_now(self, name: str | Task[..., Any], app: Flask | None = None) -> Job:
        """Enqueue a schedule's job now, outside its ticks (``tick`` is now); its ticks are not changed. With
        ``overlap=False``, a job of the schedule still unfinished is returned instead."""
        schedule = self._schedule(name)
        state = self.state(app)
        key = schedule.key()
        # With overlap=False the run takes the schedule's key too: it returns the job still unfinished.
        options = schedule.options if key is None else schedule.options.but(key=key, keys=(key,))
        [job] = self._store(state, schedule.task, options, [self._tick_payload(schedule, time.time())])
        return job

    def _schedule(self, name: str | Task[..., Any]) -> Schedule:
        """The schedule named ``name``, or the one schedule of the task ``name``."""
        if isinstance(name, Task):
            mine = [schedule for schedule in self.schedules.values() if schedule.task is name]
            if len(mine) == 1:
                return mine[0]
            raise LookupError(
                f"{name!r} has {'no schedule' if not mine else 'several schedules'}: name one"
                f" ({', '.join(sorted(schedule.name for schedule in mine)) or 'none'})"
            )
        try:
            return self.schedules[name]
        except KeyError:
            known = ", ".join(sorted(self.schedules)) or "none"
            raise LookupError(f"no schedule is named {name!r} (schedules: {known})") from None

    def _tick_payload(self, schedule: Schedule, tick: float) -> str:
        return self.serializer.dumps_call(schedule.task.name, (), schedule.kwargs(tick))

    def _tick_records(self, state: QueueState, schedule: Schedule, tick: float) -> list[JobRecord]:
        """The job of one tick of ``schedule``: its key when it may not overlap, its expiry by ``max_lateness``."""
        [record] = self._records(state, schedule.task, schedule.options, [self._tick_payload(schedule, tick)])
        record.key = schedule.key()
        if schedule.max_lateness is not None:
            record.start_by = tick + schedule.max_lateness
        return [record]

    def scheduler(self, app: Flask | None = None) -> Scheduler:
        """A ``Scheduler`` of this queue's schedules on ``app``'s backend, for a worker's keeper."""
        state = self.state(app)
        return Scheduler(
            state.backend, self.schedules, lambda schedule, tick: self._tick_records(state, schedule, tick)
        )

    # -- which app -----------------------------------------------------------------------------------------

    def state(self, app: Flask | None = None) -> QueueState:
        """What this queue keeps for ``app`` (default: the current app, or the only one it is set up on).

        :raises RuntimeError: naming the fix, when the queue is set up on no such app, or on several apps and
            none is current.
        """
        only = self._only
        if app is None and only is not None and only.pid == os.getpid():
            return only  # the common case, set up on one app: no context lookup on every enqueue
        if app is None:
            if has_app_context() and _keys.TASKS in current_app.extensions:
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            else:
                apps = list(self._apps)
                if len(apps) != 1:
                    raise RuntimeError(
                        "this TaskQueue is set up on no app yet (call tasks.init_app(app))"
                        if not apps
                        else "this TaskQueue serves several apps (in a test suite: each test's): name the app"
                        " (tasks.drain(app), tasks.run_now(name, app), tasks.state(app)) or call it inside an"
                        " app context (with app.app_context())"
                    )
                app = apps[0]
        state: QueueState | None = app.extensions.get(_keys.TASKS)
        if state is None or app not in self._apps:
            raise RuntimeError(
                f"no TaskQueue is set up on app {app.name!r}: did you forget tasks.init_app(app)?"
            )
        if state.pid != os.getpid():
            self.after_fork(state)
        return state

    def backend(self, app: Flask | None = None) -> Backend:
        """The backend of ``app`` (default: the current app, or the only one)."""
        return self.state(app).backend

    # -- enqueue -------------------------------------------------------------------------------------------

    def _enqueue(
        self,
        task: Task[Any, Any],
        options: _Options,
        calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
    ) -> list[Job]:
        payloads = [self.serializer.dumps_call(task.name, args, kwargs) for args, kwargs in calls]
        if options.key is not None and (len(calls) > 1 or not isinstance(options.key, str)):
            options = options.but(keys=_keys_of(task, options, calls))
        if options.session is not None:
            return self._store_in_transaction(self.state(), task, options, payloads)
        return self._store(self.state(), task, options, payloads)

    def _enqueue_on_commit(
        self, task: Task[Any, Any], options: _Options, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> None:
        # Imported here: its ImportError names the extra to install.
        from ..commit_hooks import on_commit

        # The arguments are serialized now, so that a bad one raises here in the caller (not out of commit())
        # and a later change to a mutable argument does not change the job.
        state = self.state()
        payload = self.serializer.dumps_call(task.name, args, kwargs)
        if options.key is not None:
            options = options.but(keys=_keys_of(task, options, [(args, kwargs)]))
        on_commit(lambda: self._store(state, task, options, [payload]), session=options.session)

    def _store(
        self, state: QueueState, task: Task[Any, Any], options: _Options, payloads: Sequence[str]
    ) -> list[Job]:
        if not payloads:
            return []
        records = self._records(state, task, options, payloads)
        try:
            ids = state.backend.enqueue(records, on_conflict=options.on_conflict)
        except DuplicateJob as exc:
            exc.job = Job(exc.job_id, state.backend)
            raise
        jobs = self._jobs(state, records, ids)
        self._enqueued(state, jobs)
        return jobs

    @staticmethod
    def _jobs(state: QueueState, records: list[JobRecord], ids: list[str]) -> list[Job]:
        """The handles of stored ``records``: with a key, the job may be another one (it is read when asked)."""
        jobs = []
        for record, job_id in zip(records, ids, strict=True):
            record.id = job_id
            jobs.append(Job(job_id, state.backend, None if record.key is not None else record))
        return jobs

    def _store_in_transaction(
        self, state: QueueState, task: Task[Any, Any], options: _Options, payloads: Sequence[str]
    ) -> list[Job]:
        """The outbox: insert the jobs through the connection of ``options.session``'s transaction.

        They exist if and only if it commits; their ids are known now. What follows an enqueue (signals, eager
        runs) waits for the commit, as the jobs do: before it, no other connection sees them.
        """
        # Imported here: SQLAlchemy is an optional extra.
        from ..commit_hooks import on_commit, resolve_session

        session = options.session
        if _is_async_session(session):
            raise TypeError(
                "task.options(session=...).enqueue() runs SQL now, which an AsyncSession cannot do from"
                " synchronous code: call it inside `await session.run_sync(lambda s:"
                " task.options(session=s).enqueue(...))`, or use enqueue_on_commit, which takes an AsyncSession"
            )
        if not payloads:
            return []
        session = resolve_session(session)
        records = self._records(state, task, options, payloads)
        try:
            ids = state.backend.enqueue_in_transaction(
                session.connection(), records, on_conflict=options.on_conflict
            )
        except DuplicateJob as exc:
            exc.job = Job(exc.job_id, state.backend)
            raise
        jobs = self._jobs(state, records, ids)
        on_commit(lambda: self._enqueued(state, jobs), session=session)
        return jobs

    def _records(
        self, state: QueueState, task: Task[Any, Any], options: _Options, payloads: Sequence[str]
    ) -> list[JobRecord]:
        now = time.time()
        eager = bool(state.settings["eager"])
        due = now if eager else now + options.delay
        start_by = options.expires_at if options.expires_in is None else due + options.expires_in
        if start_by is not None and start_by <= due and not eager:
            raise ValueError(
                f"{task.name}: expires_at is not after the time the job is due, so it could never run"
            )
        key = options.key if isinstance(options.key, str) else None
        records = [
            JobRecord(
                id="",
                task=task.name,
                queue=options.queue,
                payload=payload,
                priority=options.priority,
                retries=options.retries,
                timeout=options.timeout,
                eta=due,
                enqueued_at=now,
                key=key,
                start_by=start_by,
            )
            for payload in payloads
        ]
        if options.keys is not None:
            for record, each in zip(records, options.keys, strict=True):
                record.key = each
        return records

    def _enqueued(self, state: QueueState, jobs: list[Job]) -> None:
        """What follows the storing of jobs: their signals, and a run now in eager mode (else the workers)."""
        if signals.task_enqueued.receivers:
            for job in jobs:
                signals.task_enqueued.send(state.app, job=job)
        if state.settings["eager"]:
            self._drain(state)
        else:
            self._ensure_started(state)

    def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or ``None`` if there is none (any more)."""
        backend = self.state().backend
        record = backend.get(job_id)
        return None if record is None else Job(job_id, backend, record)

    def size(self, queue: str | None = None) -> int:
        """Jobs ready to run now in ``queue``, or in every queue."""
        return self.state().backend.size(queue)

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """Plain data, as ``flask queue status --json`` prints it: the backend's URL (password hidden),
        ``{queue: {status: count}}``, and the live workers of every process on the backend, a dict each
        (``name``, ``host``, ``pid``, ``queues``, ``threads``, ``running``, ``processed``, ``started_at``,
        ``seen_at``, ``ttl``; see ``WorkerInfo``). Works outside an app context when the queue has one app."""
        state = self.state(app)
        return {
            "backend": state.backend.url,
            "queues": state.backend.counts(),
            "workers": [asdict(info) for info in state.backend.workers()],
        }

    # -- workers -------------------------------------------------------------------------------------------

    def start(self, app: Flask | None = None) -> None:
        """Start this process's workers now (they otherwise start at the first request or enqueue)."""
        self._ensure_started(self.state(app), explicit=True)

    def _ensure_started(self, state: QueueState, explicit: bool = False) -> None:
        if state.worker is not None and state.pid == os.getpid():
            return
        if not state.config_checked:
            state.config_checked = True
            _checks.changed_settings(state.app, state.read, since="TaskQueue.init_app")
        if state.pid != os.getpid():
            self.after_fork(state)
        if state.no_workers:
            return
        if not explicit and _must_not_start_workers():
            if not state.hinted:
                state.hinted = True
                log.warning(
                    "`%s` runs no task worker, so the jobs it enqueues wait for a web process's workers or"
                    " `flask queue worker` (call tasks.drain() to run them here and now)",
                    _command_name(),
                )
            return
        with state.lock:
            if state.worker is not None:
                return
            worker = Worker(
                state.executor,
                threads=state.settings["workers"],
                queues=state.settings["queues"],
                lease=state.settings["lease"],
                name="web",
                scheduler=self.scheduler(state.app),
            )
            worker.start()
            state.worker = worker

    def _start_soon(self, state: QueueState) -> None:
        starter = threading.Timer(FLASK_RUN_START_DELAY, self._start_quietly, args=(state,))
        starter.daemon = True
        starter.start()

    def _start_quietly(self, state: QueueState) -> None:
        try:
            self._ensure_started(state, explicit=True)
        except Exception:
            log.exception(
                "could not start the task workers of %r; they start at the first request", state.app.name
            )

    def after_fork(self, state: QueueState) -> None:
        """Renew ``state`` in a child process: forget the parent's workers, reopen the backend (once).

        ``state()`` calls it when it notices a fork; a process that forks children itself (the CLI's
        supervisor) calls it in each child straight away.
        """
        # The parent's threads do not exist here, and its connections must not be used: start afresh, once
        # (several threads of the child may notice the fork at the same time).
        with _fork_lock:
            if state.pid == os.getpid():
                return
            self._reset(state)

    def _reset(self, state: QueueState) -> None:
        state.pid = os.getpid()
        state.worker = None
        state.lock = threading.Lock()
        state.backend.after_fork()

    def shutdown(self, timeout: float | None = None, app: Flask | None = None) -> StopReport:
        """Drain and stop this process's workers: running jobs get ``timeout`` seconds (default
        ``shutdown_timeout``) to finish; those still running are given back to the queue."""
        state = self.state(app)
        return _shutdown(state, timeout)

    def drain(self, app: Flask | None = None, *, queue: str | None = None) -> int:
        """Run every job ready now (and those they enqueue) in the calling thread; return how many ran.

        For tests: jobs run one after the other, retries are due at once, timeouts are not enforced, and jobs
        scheduled for later stay scheduled.
        """
        return self._drain(self.state(app), queue)

    def _drain(self, state: QueueState, queue: str | None = None) -> int:
        executor = state.executor
        drainer = Executor(**{**executor.__dict__, "immediate_retries": True})
        worker = f"drain:{os.getpid()}:{threading.get_ident()}"
        ran = 0
        while True:
            record = state.backend.dequeue(
                None if queue is None else (queue,), worker, state.settings["lease"], 0.0
            )
            if record is None:
                return ran
            drainer.run(record, worker)
            ran += 1

    def status(self, job_id: str) -> JobStatus | None:
        """The status of the job with this id, or ``None`` if there is none."""
        job = self.get_job(job_id)
        return None if job is None else job.record.effective_status()


def _keys_of(
    task: Task[Any, Any], options: _Options, calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]]
) -> tuple[str, ...]:
    """The key of each call; with ``on_conflict="raise"``, two calls of one enqueue may not share one."""
    keys = tuple(options.key_of(task.name, args, kwargs) or "" for args, kwargs in calls)
    if options.on_conflict == "raise" and len(set(keys)) < len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(
            f"{task.name}: two calls of one enqueue_many have the key {twice!r}, and on_conflict='raise'"
            " allows one"
        )
    return keys


def _is_async_session(session: object) -> bool:
    """Whether ``session`` is SQLAlchemy's ``AsyncSession`` (or its scoped form), without importing its asyncio
    module when it cannot be one: that module needs greenlet, which SQLAlchemy 2.1 no longer installs."""
    if sys.modules.get("sqlalchemy.ext.asyncio") is None:
        return False  # nobody made an AsyncSession in this process
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

    return isinstance(session, (AsyncSession, async_scoped_session))


def _check_settings(settings: dict[str, Any]) -> None:
    _checks.flag("TASK_QUEUE_EAGER", settings["eager"])
    if settings["backend"] is not None:
        _checks.text("TASK_QUEUE_BACKEND", settings["backend"], what="a backend URL or None")
    _checks.integer("TASK_QUEUE_WORKERS", settings["workers"], minimum=0)
    _checks.number("TASK_QUEUE_LEASE", settings["lease"], strict=True)
    _checks.optional_number("TASK_QUEUE_RESULT_TTL", settings["result_ttl"])
    _checks.optional_number("TASK_QUEUE_FAILED_TTL", settings["failed_ttl"])
    _checks.number("TASK_QUEUE_RETRY_BACKOFF_MAX", settings["retry_backoff_max"])
    _checks.number("TASK_QUEUE_SHUTDOWN_TIMEOUT", settings["shutdown_timeout"])
    queues = settings["queues"]
    if queues is not None:
        if isinstance(queues, str):
            queues = settings["queues"] = [name.strip() for name in queues.split(",") if name.strip()]
        if (
            not queues
            or isinstance(queues, (bytes, dict))
            or not all(isinstance(name, str) and name for name in queues)
        ):
            raise ConfigurationError(
                f"TASK_QUEUE_QUEUES must be None or a list of queue names, not {queues!r}"
            )
        for name in queues:
            _checks.name("TASK_QUEUE_QUEUES", name)


def _flask_command() -> tuple[str | None, bool]:
    """The ``flask`` command this process runs (``None`` outside Flask's CLI), and whether it serves.

    ``flask run`` serves in the process that has ``WERKZEUG_RUN_MAIN`` set (the reloader's child), or in its
    own process without the reloader; the reloader's watching parent never serves. Any other command
    (``flask shell``, ``flask queue``, a migration, a command of the app's) never serves: its jobs wait for
    the processes that serve, or for ``flask queue worker``.
    """
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        return "run", True
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.info_name == "run":
            reload = ctx.params.get("reload")
            # Unset, it follows --debug (flask run decides so only after loading the app).
            return "run", not bool(get_debug_flag() if reload is None else reload)
        if ctx.parent is None:
            return (ctx.info_name or "flask", False) if isinstance(ctx.command, FlaskGroup) else (None, False)
        ctx = ctx.parent
    return None, False


def _server_loading_app() -> str | None:
    """What is loading the app, from the modules on the stack: ``"serving"`` in a process that serves requests
    and forks no more (a gunicorn worker, ``waitress-serve``), ``"forking"`` in gunicorn's master with
    ``--preload`` (it forks the workers next), ``None`` for anything else (a script, a test, uWSGI, whose
    workers start at their first request)."""
    frame: types.FrameType | None = sys._getframe(1)
    found = None
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        if module.startswith("gunicorn.workers.") or module == "waitress.runner":
            return "serving"
        if module == "gunicorn.arbiter":
            found = "forking"
        frame = frame.f_back
    return found


def _must_not_start_workers() -> bool:
    """Whether this process must not start workers by itself: a ``flask`` command that does not serve."""
    command, serving = _flask_command()
    return command is not None and not serving


def _command_name() -> str:
    """The ``flask`` command being run, as ``flask <command> <subcommand>`` (however flask was started)."""
    ctx = click.get_current_context(silent=True)
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["flask", *reversed([name for name in names if name])])


def _shutdown(state: QueueState, timeout: float | None) -> StopReport:
    with state.lock:
        worker, state.worker = state.worker, None
    if worker is None or state.pid != os.getpid():
        report = StopReport()
    else:
        report = worker.stop(state.settings["shutdown_timeout"] if timeout is None else timeout)
    if not state.backend.shared:
        report.unfinished = state.backend.pending()
        if report.unfinished:
            log.warning(
                "%d job(s) of memory:// were not run and are lost with this process (use a durable backend,"
                " or tasks.drain() before exit)",
                report.unfinished,
            )
    return report


_fork_lock = threading.Lock()

#: The states set up in gunicorn's master with ``--preload``: each worker it forks starts their workers.
_FORKED_SERVERS: weakref.WeakSet[QueueState] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()  # a parent thread may have held the old one at the fork
    # A gunicorn worker: start the workers of the master's apps, then forget them, so that a process this
    # worker forks in turn (multiprocessing, say) does not start workers of its own.
    forked = list(_FORKED_SERVERS)
    _FORKED_SERVERS.clear()
    for state in forked:
        state.extension._start_soon(state)


os.register_at_fork(after_in_child=_after_fork_in_child)


class _AtExit:
    """Drains the workers of every live app when the interpreter exits (after SIGTERM too, where the server
    turns it into a normal exit, as gunicorn and waitress do)."""

    def __init__(self) -> None:
        self._states: weakref.WeakSet[QueueState] = weakref.WeakSet()
        self._registered = False

    def add(self, state: QueueState) -> None:
        self._states.add(state)
        if not self._registered:
            self._registered = True
            atexit.register(self.run)

    def run(self) -> None:
        # The dev server's process exits for a restart (or a Ctrl-C): give running jobs back at once, so the
        # restart is not held up for TASK_QUEUE_SHUTDOWN_TIMEOUT; the restarted process runs them again.
        timeout = 0.0 if os.environ.get("WERKZEUG_RUN_MAIN") == "true" else None
        for state in list(self._states):
            _shutdown(state, timeout)


_AT_EXIT = _AtExit()
