"""WSGI+: Flask views that wait on a Future without holding a thread.

A view decorated with ``@suspendable`` is a generator: it yields a ``concurrent.futures.Future`` and gets its
result back (``value = yield future``; a failed or cancelled future raises there, so ``try``/``except``
around the ``yield`` works), and its ``return`` value is the response, as from any view::

    from flask_queue.wsgiplus import in_thread, run_async, suspendable

    @app.get("/weather")
    @suspendable
    def weather():
        reply = yield run_async(client.get(URL))  # a coroutine on this process's event loop
        rows = yield in_thread(slow_query)  # a function on this process's thread pool
        return {"temp": reply.json()["temp"], "rows": len(rows)}

Under a WSGI+ server (``gunicorn -k flask_queue.gunicorn.WSGIPlusWorker``) the request is parked while the
future runs, and its thread serves other requests; ``async def`` views are parked the same way, their
coroutine running on the process's event loop. Under any other server (``flask run``, waitress, plain
gunicorn, the test client) the same view waits for each future in place, and ``async def`` views run as
Flask runs them. Flask's request and app context, ``g`` and the session stay intact across a park.

Nothing that belongs to one thread may be held across a ``yield``: a database transaction or connection
checked out of a pool, a lock, a thread-local. See ``docs/wsgi-plus.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib.util
import inspect
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

from ._types import StartResponse, WSGIEnvironment
from ._wsgiplus_iter import ENVIRON_KEY, VERSION, forward, outcome
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from flask import Flask, Response
    from flask.ctx import RequestContext

__all__ = [
    "ENVIRON_KEY",
    "EVENT_LOOP_ENV",
    "VERSION",
    "event_loop_factory",
    "in_thread",
    "init_app",
    "is_wsgi_plus",
    "run_async",
    "shutdown",
    "suspendable",
]

log = logging.getLogger("flask_queue.wsgiplus")

P = ParamSpec("P")
R = TypeVar("R")

_EXTENSION_KEY: Final = "flask-queue.wsgiplus"
_LOOP_THREAD_NAME: Final = "flask-queue-wsgiplus-loop"


def is_wsgi_plus(environ: WSGIEnvironment) -> bool:
    """Whether the server of this request speaks WSGI+ (parks a response iterable that yields a Future)."""
    return ENVIRON_KEY in environ


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
        raise ConfigurationError(
            f"{EVENT_LOOP_ENV} must be one of {', '.join(_EVENT_LOOPS)}, got {raw!r} (unset it for auto)"
        )
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


def _call_later(seconds: float, callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback()`` on the event loop's thread after ``seconds``; returns a function that cancels it.

    A timer without a thread of its own and without a coroutine (the request queue's deadlines).
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


# -- suspendable views --------------------------------------------------------------------------------------

#: Set while Flask dispatches a request of a WSGI+ server to its view in an app set up by ``init_app``:
#: the view may then park instead of waiting in place.
_may_park: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flask_queue.wsgiplus.may_park", default=False
)


class _Suspension:
    """What a parking view returns to Flask: its generator and the pending Future it waits for."""

    __slots__ = ("future", "generator")

    def __init__(self, generator: Generator[Any, Any, Any], future: Future[Any]) -> None:
        self.generator = generator
        self.future = future


class _Returned:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _not_a_future(item: object) -> TypeError:
    hint = (
        " (wrap an asyncio future with run_async or asyncio.run_coroutine_threadsafe)"
        if (isinstance(item, asyncio.Future) or inspect.isawaitable(item))
        else ""
    )
    return TypeError(
        f"a suspendable view must yield concurrent.futures.Future objects, got {type(item).__name__}{hint}"
    )


def _advance(
    generator: Generator[Any, Any, Any], value: Any = None, error: BaseException | None = None
) -> _Suspension | _Returned:
    """Run the view's generator up to its next pending Future, or to its end.

    Futures that are done already are resumed at once, in this thread: that is not a park, and it cannot
    race with a callback.
    """
    while True:
        try:
            item = generator.throw(error) if error is not None else generator.send(value)
        except StopIteration as stop:
            return _Returned(stop.value)
        if not isinstance(item, Future):
            generator.close()
            raise _not_a_future(item)
        if not item.done():
            return _Suspension(generator, item)
        value, error = outcome(item)


def _wait_in_place(generator: Generator[Any, Any, Any]) -> Any:
    """Run the view's generator to its end, waiting for each Future in this thread (any other server)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = generator.throw(error) if error is not None else generator.send(value)
        except StopIteration as stop:
            return stop.value
        if not isinstance(item, Future):
            generator.close()
            raise _not_a_future(item)
        if not item.done():
            with contextlib.suppress(CancelledError):  # told by outcome() below
                item.exception()  # waits for the outcome; returns a failure rather than raise it
        value, error = outcome(item)


def _claim_park() -> bool:
    """Whether the view being called may park; true once per dispatch (a view called by a view waits)."""
    if not _may_park.get():
        return False
    _may_park.set(False)
    return True


def suspendable(view: Callable[P, Generator[Any, Any, R]]) -> Callable[P, R]:
    """Make a generator function a view that yields Futures and returns a response value.

    ``value = yield future`` gives the future's result; a failed future raises its exception at the
    ``yield``, a cancelled one ``concurrent.futures.CancelledError``. Under a WSGI+ server the request is
    parked at each ``yield`` of a pending future; elsewhere each future is waited for in place.

    :raises TypeError: at decoration, when ``view`` is not a generator function; at request time, when it
        yields something other than a ``concurrent.futures.Future``.
    """
    if not inspect.isgeneratorfunction(view):
        raise TypeError(
            f"@suspendable needs a generator function (a view that yields Futures), got {view!r}; "
            "a plain view needs no decorator"
        )

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        generator = view(*args, **kwargs)
        if _claim_park():
            step = _advance(generator)
            if isinstance(step, _Suspension):
                return step  # type: ignore[return-value]  # init_app's finalize_request parks it
            value: R = step.value
            return value
        _note_unparked_app()
        result: R = _wait_in_place(generator)
        return result

    return wrapper


def _note_unparked_app() -> None:
    """Under a WSGI+ server, set up the current Flask app for parking if nobody did (from its next request)."""
    try:
        from flask import current_app, request

        if not is_wsgi_plus(request.environ):
            return
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    except RuntimeError:  # called outside a request
        return
    if _EXTENSION_KEY not in app.extensions:
        log.warning(
            "a suspendable view of %r waited in place under a WSGI+ server; its app is set up now, so the "
            "next requests park (call flask_queue.wsgiplus.init_app(app) at start-up to park the first ones)",
            app.name,
        )
        init_app(app)


# -- Flask: park the dispatch -------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Let ``app``'s suspendable and ``async def`` views park under a WSGI+ server.

    The ``WSGIPlusWorker`` calls it for the Flask app it serves; call it yourself when the server loads
    something else (a middleware wrapping the app). Requests of any other server go through Flask exactly
    as before. It sets ``dispatch_request``, ``finalize_request`` and ``ensure_sync`` on the app object
    (Flask's documented override points; a subclass's own versions are called by them). Calling it twice
    does nothing.
    """
    if _EXTENSION_KEY in app.extensions:
        return
    from flask import Flask
    from flask.globals import _cv_request

    app.extensions[_EXTENSION_KEY] = True
    cls = type(app)
    own_ensure_sync = cls.ensure_sync is Flask.ensure_sync  # Flask's own returns a plain def as it is

    def dispatch_request() -> Any:
        # The request context's environ straight from its ContextVar: this runs for every request.
        if ENVIRON_KEY not in _cv_request.get().request.environ:
            return cls.dispatch_request(app)
        token = _may_park.set(True)
        try:
            return cls.dispatch_request(app)
        finally:
            _may_park.reset(token)

    def finalize_request(rv: Any, from_error_handler: bool = False) -> Response:
        if isinstance(rv, _Suspension):
            return _park(app, rv)
        return cls.finalize_request(app, rv, from_error_handler)

    def ensure_sync(func: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(func):
            return func if own_ensure_sync else cls.ensure_sync(app, func)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            if _claim_park():
                step = _advance(_awaiting(run_async(func(*args, **kwargs))))
                return step if isinstance(step, _Suspension) else step.value
            return _run_in_place(app, func, *args, **kwargs)

        return run

    app.dispatch_request = dispatch_request  # type: ignore[method-assign]
    app.finalize_request = finalize_request  # type: ignore[method-assign]
    app.ensure_sync = ensure_sync  # type: ignore[method-assign]


def _run_in_place(
    app: Flask, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kwargs: Any
) -> Any:
    """An ``async def`` view under any other server: as Flask runs it (asgiref), else on the process's loop.

    Without asgiref Flask would refuse async views; waiting on the process's event loop serves them instead.
    """
    if importlib.util.find_spec("asgiref") is not None:
        return app.async_to_sync(func)(*args, **kwargs)
    return run_async(func(*args, **kwargs)).result()


def _awaiting(future: Future[R]) -> Generator[Future[R], Any, R]:
    """The generator of an ``async def`` view under WSGI+: one park, for its coroutine on the event loop."""
    result: R = yield future
    return result


class _Parked:
    """What Flask's ``wsgi_app`` gets instead of a Response for a parked view: called, it resumes the view.

    ``wsgi_app`` only calls its response; nothing else of a Response is used, so none is built.
    """

    __slots__ = ("app", "ctx", "suspension")

    def __init__(self, app: Flask, ctx: RequestContext, suspension: _Suspension) -> None:
        self.app = app
        self.ctx = ctx
        self.suspension = suspension

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return _resume(self.app, self.ctx, self.suspension, environ, start_response)


def _park(app: Flask, suspension: _Suspension) -> Response:
    """The response Flask's ``wsgi_app`` gets for a parked view: its body resumes the view.

    The request context is pushed once more, so the ``pop`` in ``wsgi_app`` leaves it in place (the way
    ``stream_with_context`` keeps it); ``_resume`` pops it for good once the response is made.
    """
    from flask.globals import request_ctx

    ctx: RequestContext = request_ctx._get_current_object()  # type: ignore[attr-defined]
    # Without its URL adapter, push() does not match the URL again (the request is routed already).
    adapter, ctx.url_adapter = ctx.url_adapter, None
    try:
        ctx.push()
    finally:
        ctx.url_adapter = adapter
    return cast("Response", _Parked(app, ctx, suspension))


def _resume(
    app: Flask,
    ctx: RequestContext,
    suspension: _Suspension,
    environ: WSGIEnvironment,
    start_response: StartResponse,
) -> Generator[Any, Any, None]:
    """Yield the view's Futures to the server, then finish the request as Flask's ``wsgi_app`` would.

    The outcome of each Future is read from the Future itself, whatever the server (or a middleware that
    does not pass ``throw`` on) resumes this generator with. Mirrors ``Flask.full_dispatch_request`` (an
    error of the view goes to ``handle_user_exception``) and ``Flask.wsgi_app`` (anything else to
    ``handle_exception``; the request context popped with the error, before the body is sent).
    """
    error: BaseException | None = None
    generator = suspension.generator
    try:
        try:
            try:
                step: _Suspension | _Returned = suspension
                while isinstance(step, _Suspension):
                    future = step.future
                    while not future.done():  # resumed early: only a broken server does that
                        try:
                            yield future
                        except GeneratorExit:
                            raise
                        except BaseException:  # the future's own outcome is read below
                            continue
                    step = _advance(generator, *outcome(future))
                rv = step.value
            except Exception as e:
                rv = app.handle_user_exception(e)
            response = app.finalize_request(rv)
        except Exception as e:
            error = e
            response = app.handle_exception(e)
        except BaseException:
            error = sys.exc_info()[1]
            generator.close()
            raise
        body = response(environ, start_response)
    finally:
        if error is not None and app.should_ignore_error(error):
            error = None
        ctx.pop(error)
    try:
        yield from forward(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
