"""The process's WSGI+ runtime: one event loop thread and one thread pool, started at first use after a fork.

``run_async(coro)`` starts a coroutine on the loop and ``in_thread(fn)`` runs a function on the pool, each
returning a ``concurrent.futures.Future`` that a WSGI+ view can yield; ``call_later`` is a timer on the loop
(the request queue's deadlines for parked waiters). ``WSGI_PLUS_EVENT_LOOP`` picks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Final, ParamSpec, TypeVar, cast

from .. import _checks
from ..exceptions import ConfigurationError

__all__ = ["EVENT_LOOP_ENV", "call_later", "event_loop_factory", "in_thread", "run_async", "shutdown"]

log = logging.getLogger("flask_queue.wsgiplus")

P = ParamSpec("P")
R = TypeVar("R")

_LOOP_THREAD_NAME: Final = "flask-queue-wsgiplus-loop"


# -- the process's event loop and thread pool ---------------------------------------------------------------

#: The environment variable that picks the event loop: ``auto`` (the default), ``asyncio`` or ``uvloop``.
EVENT_LOOP_ENV: Final = "WSGI_PLUS_EVENT_LOOP"
_EVENT_LOOPS: Final = ("auto", "asyncio", "uvloop")


def event_loop_factory(environ: Mapping[str, str] = os.environ) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the process's event loop, as ``WSGI_PLUS_EVENT_LOOP`` says.

    ``auto`` (unset or empty): uvloop's loop when uvloop is installed, as uvicorn does, since its C loop
    spends less CPU per awaited call than asyncio's (figures in ``docs/benchmarks.md``); an application
    that set an event loop policy of its own gets the policy's loop. ``asyncio``: the policy's loop always.
    ``uvloop``: uvloop's, which must be installed.

    :raises ConfigurationError: naming the setting, for another value or ``uvloop`` not installed.
    """
    raw = environ.get(EVENT_LOOP_ENV, "").strip()
    choice = raw.lower() or "auto"
    if choice not in _EVENT_LOOPS:
        _checks.choice(EVENT_LOOP_ENV, raw, _EVENT_LOOPS, hint=" (unset it for auto)")
    if choice == "asyncio" or (choice == "auto" and _custom_policy()):
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed: pip install 'flask-queue[uvloop]'"
                " (or unset it: auto uses uvloop only when it is installed)"
            ) from None
        return asyncio.new_event_loop
    return cast("Callable[[], asyncio.AbstractEventLoop]", uvloop.new_event_loop)


def _custom_policy() -> bool:
    """Whether the application set an event loop policy of its own (policies are deprecated from 3.14)."""
    if sys.version_info >= (3, 14):
        return False
    return type(asyncio.get_event_loop_policy()) is not asyncio.DefaultEventLoopPolicy


class _Runtime:
    """The event loop thread and thread pool of one process, started at first use, after any fork."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.starter: _Starter | None = None
        self.thread: threading.Thread | None = None
        self.executor: ThreadPoolExecutor | None = None

    def get_starter(self) -> _Starter:
        """The hand-over to the event loop, started (with its thread) at the first call in this process."""
        starter = self.starter
        if starter is not None and self.pid == os.getpid():
            return starter
        with self.lock:
            self._forget_if_forked()
            if self.starter is None:
                # In an empty context: the loop keeps the context it is made in for its whole life (in the
                # handle that reads its self-pipe), and the first caller's is often a request's.
                loop = contextvars.Context().run(event_loop_factory())
                started = threading.Event()
                # Not a daemon: at exit the loop is stopped and joined (see shutdown), so a coroutine is never
                # cut off mid-way by the interpreter tearing down under it.
                thread = threading.Thread(
                    target=_run_loop, args=(loop, started), name=_LOOP_THREAD_NAME, daemon=False
                )
                thread.start()
                started.wait()
                self.loop, self.starter, self.thread = loop, _Starter(loop), thread
            return self.starter

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.get_starter().loop

    def get_executor(self) -> ThreadPoolExecutor:
        executor = self.executor
        if executor is not None and self.pid == os.getpid():
            return executor
        with self.lock:
            self._forget_if_forked()
            if self.executor is None:
                self.executor = ThreadPoolExecutor(thread_name_prefix="flask-queue-wsgiplus")
            return self.executor

    def _forget_if_forked(self) -> None:
        # A child of fork() has none of its parent's threads: what the parent started is not ours to stop.
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.loop = self.starter = self.thread = self.executor = None

    def shutdown(self, timeout: float) -> None:
        with self.lock:
            self._forget_if_forked()
            loop, thread, executor = self.loop, self.thread, self.executor
            self.loop = self.starter = self.thread = self.executor = None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the WSGI+ event loop did not stop within %.1f s", timeout)
            else:
                loop.close()


def _run_loop(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        # Start what was handed over meanwhile (a coroutine never started warns), then let every task see
        # its cancellation before the loop goes away.
        loop.run_until_complete(asyncio.sleep(0))
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())


class _Starter:
    """Starts coroutines handed over by other threads on one event loop, waking the loop once per batch.

    ``asyncio.run_coroutine_threadsafe`` writes to the loop's self-pipe for every coroutine: a system call
    in the caller and, when the loop is busy, a wasted wake-up after it. Here a coroutine handed over while
    a wake-up is already on its way only joins the queue. The loop clears the flag before it drains the
    queue, so a coroutine queued after that is either started by this drain or has scheduled one of its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queued: deque[tuple[Coroutine[Any, Any, Any], Future[Any], contextvars.Context]] = deque()
        self._scheduled = False

    def start(self, coro: Coroutine[Any, Any, R]) -> Future[R]:
        """Start ``coro`` on the loop in a copy of the caller's context; a Future of its outcome (any thread)."""
        future: Future[R] = Future()
        self._queued.append((coro, future, contextvars.copy_context()))
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._start_queued)
            except RuntimeError:  # the loop is closed: as run_coroutine_threadsafe, say so to the caller
                self._scheduled = False
                raise
        return future

    def _start_queued(self) -> None:
        self._scheduled = False
        queued = self._queued
        while queued:
            coro, future, context = queued.popleft()
            if future.cancelled():  # before it started: it never runs (not even to its first await)
                coro.close()
                continue
            # The task copies the current context: the caller's, entered here.
            task = context.run(self.loop.create_task, coro)
            task.add_done_callback(functools.partial(_settle, future))
            future.add_done_callback(functools.partial(_cancel_task, self.loop, task))


def _settle(future: Future[Any], task: asyncio.Task[Any]) -> None:
    """Give a finished task's outcome to the Future its caller holds (on the loop)."""
    if task.cancelled():
        future.cancel()
        return
    if not future.set_running_or_notify_cancel():  # cancelled meanwhile: nobody wants the outcome
        return
    error = task.exception()
    if error is None:
        future.set_result(task.result())
    else:
        future.set_exception(_concurrent_error(error))


#: asyncio's errors that have a ``concurrent.futures`` counterpart of another class (the timeout's is the same
#: class since Python 3.11).
_CONCURRENT_ERRORS: Final[dict[type[BaseException], type[BaseException]]] = {
    asyncio.TimeoutError: FutureTimeoutError,
    asyncio.InvalidStateError: InvalidStateError,
}


def _concurrent_error(error: BaseException) -> BaseException:
    """asyncio's own timeout and state errors as ``concurrent.futures`` ones, as asyncio hands them over."""
    kind = _CONCURRENT_ERRORS.get(type(error))
    return error if kind is None or kind is type(error) else kind(*error.args)


def _cancel_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], future: Future[Any]) -> None:
    """Cancelling the caller's Future (any thread) cancels the coroutine."""
    if future.cancelled():
        with contextlib.suppress(RuntimeError):  # the loop is closed: the task is gone with it
            loop.call_soon_threadsafe(task.cancel)


_runtime = _Runtime()


def run_async(coro: Awaitable[R]) -> Future[R]:
    """Run a coroutine on this process's event loop; return a ``concurrent.futures.Future`` of its result.

    The loop runs in a thread of its own, started at the first call in each process (after a fork, never
    before). The coroutine sees the caller's context variables, so ``flask.request`` works in it. Cancelling
    the future cancels the coroutine (one that has not started yet never runs). Thread-safe; never call ``.result()`` on the future from a coroutine
    running on that same loop (it would wait for itself).

    :raises TypeError: when ``coro`` is not awaitable (a coroutine function called without ``()``, say).
    """
    if asyncio.iscoroutine(coro):
        return _runtime.get_starter().start(coro)
    if not inspect.isawaitable(coro):
        raise TypeError(f"run_async() needs a coroutine (call the async function), got {coro!r}")
    return _runtime.get_starter().start(_await(coro))


async def _await(awaitable: Awaitable[R]) -> R:
    return await awaitable


def call_later(seconds: float, callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback()`` on the event loop's thread after ``seconds``; returns a function that cancels it.

    A timer without a thread of its own and without a coroutine (the request queue's deadlines). The
    callback runs on the loop's thread, so it must not block.
    """
    loop = _runtime.get_loop()
    handles: list[asyncio.TimerHandle] = []
    cancelled = False

    def schedule() -> None:
        if not cancelled:
            handles.append(loop.call_later(seconds, callback))

    def cancel_handles() -> None:
        for handle in handles:
            handle.cancel()

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True
        with contextlib.suppress(RuntimeError):  # the loop has stopped: nothing left to cancel
            loop.call_soon_threadsafe(cancel_handles, context=contextvars.Context())

    # In an empty context: the timer needs none of the caller's, and a cancelled handle keeps its context
    # (asyncio clears only its callback) until it would have been due, when a timer due sooner is ahead of it.
    loop.call_soon_threadsafe(schedule, context=contextvars.Context())
    return cancel


def in_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
    """Run ``fn(*args, **kwargs)`` on this process's thread pool; return a Future of its result.

    The function sees the caller's context variables (a copy), so ``flask.request`` and ``current_app`` work
    in it; it must not change the request it reads (Flask's objects are not meant to be shared by threads).
    Cancelling the future stops it only if it has not started.
    """
    context = contextvars.copy_context()
    return _runtime.get_executor().submit(lambda: context.run(fn, *args, **kwargs))


def shutdown(timeout: float = 10.0) -> None:
    """Stop this process's event loop and thread pool, waiting up to ``timeout`` seconds for the loop.

    The ``WSGIPlusWorker`` calls it when it exits, and it runs at interpreter exit. Coroutines still
    running are cancelled; queued ``in_thread`` calls that have not started are cancelled. The next
    ``run_async`` or ``in_thread`` starts afresh.
    """
    _runtime.shutdown(timeout)


# Stop the loop and the pool before the interpreter joins its non-daemon threads (as concurrent.futures does),
# so that an app using run_async under a server that knows nothing of us still exits.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(shutdown)
