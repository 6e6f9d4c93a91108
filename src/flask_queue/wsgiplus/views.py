"""WSGI+ for Flask: ``@suspendable`` views and ``async def`` views that park instead of holding a thread.

This is the one module that touches Flask's dispatch internals: the request context's ContextVar
(``flask.globals._cv_request``), read on every request of a WSGI+ server because ``flask.request`` costs a
proxy lookup more. It exists in Flask 3.0 and 3.1; Flask 3.2 merges the request context into the app
context, and ``init_app`` refuses it with an error naming the supported range (checked at import, raised at
the server's start), rather than failing at request time. Everything else of Flask-Queue uses Flask's public
API. See ``flask_queue.wsgiplus`` for the usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Coroutine, Generator, Iterable
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

from .. import _keys
from .._types import StartResponse, WSGIEnvironment
from .protocol import ENVIRON_KEY, forward, is_wsgi_plus, outcome, resume
from .runtime import run_async

if TYPE_CHECKING:
    from contextvars import ContextVar

    from flask import Flask, Response
    from flask.ctx import RequestContext

try:
    from flask.globals import _cv_request as _found_cv_request
except ImportError:  # Flask 3.2 and later: see the module's docstring
    _found_cv_request = None  # type: ignore[assignment]
_cv_request: ContextVar[RequestContext] | None = _found_cv_request

#: The Flask versions whose dispatch ``init_app`` knows how to park.
SUPPORTED_FLASK: Final = "Flask >= 3.0, < 3.2"

__all__ = ["SUPPORTED_FLASK", "init_app", "suspendable"]

log = logging.getLogger("flask_queue.wsgiplus")

P = ParamSpec("P")
R = TypeVar("R")


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
            item = resume(generator, value, error)
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
            item = resume(generator, value, error)
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

    # Told by init_app's check when Flask calls the undecorated view: @suspendable above the route decorator.
    view._flask_queue_suspendable = True  # type: ignore[attr-defined]

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
    if _keys.WSGIPLUS not in app.extensions:
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
    if _keys.WSGIPLUS in app.extensions:
        return
    if _cv_request is None:
        from importlib.metadata import version

        raise RuntimeError(
            f"flask_queue.wsgiplus parks the views of {SUPPORTED_FLASK}, and this is Flask {version('flask')}:"
            " install a supported Flask (pip install 'flask<3.2'), or serve the app without WSGI+ (its"
            " @suspendable views then wait in place)"
        )
    from flask import Flask

    cv_request = _cv_request
    app.extensions[_keys.WSGIPLUS] = True
    cls = type(app)
    own_ensure_sync = cls.ensure_sync is Flask.ensure_sync  # Flask's own returns a plain def as it is

    def dispatch_request() -> Any:
        # The request context's environ straight from its ContextVar: this runs for every request.
        if ENVIRON_KEY not in cv_request.get().request.environ:
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
        if inspect.isgeneratorfunction(func):  # a streamed body, or a view missing its @suspendable
            return _refusing_futures(func if own_ensure_sync else cls.ensure_sync(app, func), func)
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


def _refusing_futures(call: Callable[..., Any], view: Callable[..., Any]) -> Callable[..., Any]:
    """A generator view as Flask calls it, whose body raises ``TypeError`` if it yields a Future.

    Flask streams what a generator view yields; a Future among it is a view that needed ``@suspendable``
    (missing, or placed above the route decorator so that Flask registered the undecorated function). A
    WSGI+ server would park on it and send its result into the stream, answering 200 with the wrong body.
    """

    @functools.wraps(call)
    def run(*args: Any, **kwargs: Any) -> Any:
        return _no_futures(call(*args, **kwargs), view)

    return run


def _no_futures(body: Iterable[Any], view: Callable[..., Any]) -> Generator[Any, None, None]:
    for item in body:
        if isinstance(item, Future):
            close = getattr(body, "close", None)
            if close is not None:
                close()
            name = getattr(view, "__qualname__", repr(view))
            where = (
                "@suspendable is above the route decorator, so Flask registered the undecorated view: put"
                " @suspendable below @app.route (or @app.get, ...)"
                if getattr(view, "_flask_queue_suspendable", False)
                else "a view that yields Futures needs @suspendable (from flask_queue.wsgiplus), below the route"
                " decorator"
            )
            raise TypeError(f"the view {name} yielded a concurrent.futures.Future: {where}")
        yield item


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
