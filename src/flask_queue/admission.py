"""Request queue: admission control in front of a WSGI application.

At most ``concurrency`` requests of a lane run at once in the process; up to ``max_queue_size`` more wait
for a slot, the more important priority classes first and in arrival order within a class; the rest, and
those that waited ``queue_timeout`` seconds, are answered at once with 503 (or 429) and a ``Retry-After``
header instead of piling up in front of busy threads. Time a request spent before the app saw it, from an
``X-Request-Start`` or ``X-Queue-Start`` header, counts as waiting.

Any WSGI application::

    from flask_queue import RequestQueueMiddleware

    app.wsgi_app = RequestQueueMiddleware(app.wsgi_app, concurrency=4, max_queue_size=10, queue_timeout=5.0)

A Flask application, with per-endpoint lanes (``REQUEST_QUEUE_*`` config keys override the arguments)::

    from flask_queue import RequestQueue

    queue = RequestQueue(app, concurrency=4, max_queue_size=10, queue_timeout=5.0)
    queue.lane("reports", concurrency=1, max_queue_size=5, queue_timeout=30.0)

    @app.get("/report")
    @queue.limit("reports")
    def report(): ...

    @app.get("/health")
    @queue.exempt
    def health(): ...

Limits are per process: with several server processes each has its own queue. The server must have more
threads than the lanes' concurrency for requests to wait here rather than in the server's own backlog; see
``docs/request-queue.md`` for sizing.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

from blinker import NamedSignal
from flask import Blueprint
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES, parse_accept_header
from werkzeug.routing import MapAdapter

from . import signals
from ._lane import ADMITTED, REJECTED, WAITING, Lane, Ticket
from ._request_start import upstream_wait
from ._types import OptExcInfo, StartResponse, WSGIApplication, WSGIEnvironment
from ._wsgiplus_iter import forward
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from flask import Flask
    from flask.typing import ResponseReturnValue

__all__ = ["DEFAULT_LANE", "EXEMPT", "Lane", "RequestQueue", "RequestQueueMiddleware"]

log = logging.getLogger("flask_queue.admission")

#: Name of the lane every request goes to unless told otherwise.
DEFAULT_LANE: Final = "default"


class _Exempt:
    def __repr__(self) -> str:
        return "EXEMPT"


class _Unset:
    """The lane limit was not given: take the default lane's."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Final = _Unset()


#: Returned by a ``select_lane`` function for a request that is never queued nor shed (health checks).
EXEMPT: Final = _Exempt()

#: ``select_lane(environ)`` names the request's lane; ``None`` means the default lane.
LaneSelector = Callable[[WSGIEnvironment], "str | _Exempt | None"]
#: ``classify(environ)`` gives the request's priority class; lower is served first, 0 is the default.
Classifier = Callable[[WSGIEnvironment], int]
#: ``reject_response(environ, reason, retry_after)`` returns the WSGI application that answers a rejection.
RejectResponse = Callable[[WSGIEnvironment, str, int], WSGIApplication]

T = TypeVar("T")  # what @limit and @exempt mark: a view function, an endpoint name or a Blueprint

_DEFAULTS: Final[dict[str, Any]] = {
    "concurrency": 4,
    "max_queue_size": 10,
    "queue_timeout": 5.0,
    "max_age": None,
    "status": 503,
}


_LANE_LIMITS: Final = frozenset({"concurrency", "max_queue_size", "queue_timeout", "max_age"})

C = TypeVar("C", bound=Callable[..., Any])


def _check_callable(name: str, func: C | None) -> C | None:
    if func is not None and not callable(func):
        raise ConfigurationError(f"{name} must be a callable or None, got {func!r}")
    return func


def _check_status(status: object) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ConfigurationError(f"status must be an HTTP error status from 400 to 599, got {status!r}")
    return status


class _Release:
    """The response iterable, handing the lane slot back when the server closes it (PEP 3333)."""

    __slots__ = ("_iterable", "_lane", "_ticket")

    def __init__(self, iterable: Iterable[bytes], lane: Lane, ticket: Ticket) -> None:
        self._iterable = iterable
        self._lane = lane
        self._ticket = ticket

    def __iter__(self) -> Iterator[bytes]:
        # A generator, not iter(inner): it keeps this object alive for a caller that holds only the
        # iterator, so the finaliser below cannot free the slot while the body is still being sent. Not
        # `yield from` the body: finalising a suspended one would close the inner body a second time;
        # `forward` never closes it, and passes a WSGI+ server's send/throw on, which a for loop drops.
        yield from forward(self._iterable)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._lane.release(self._ticket)

    def __del__(self) -> None:
        # PEP 3333 servers call close(); Werkzeug's test client leaves it to the caller, and a buggy server
        # may forget. Dropping the response must not leak the slot. (Never block here: see the method.)
        if self._ticket.state == ADMITTED:
            self._lane.release_from_finalizer(self._ticket)


class _SizedRelease(_Release):
    """A ``_Release`` of a body with a length: servers read ``len(body) == 1`` to set Content-Length."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._iterable)  # type: ignore[arg-type]


class _ListRelease(_SizedRelease):
    """A ``_SizedRelease`` of a list: its content is computed already, so the body's plain iterator will do.

    (The generator of ``_Release.__iter__`` is there for bodies still being produced; a list needs no slot
    once built, so a caller dropping this object mid-iteration frees nothing that is still in use.)
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)


def _released_on_close(
    iterable: Iterable[bytes], environ: WSGIEnvironment, lane: Lane, ticket: Ticket
) -> Iterable[bytes]:
    """Wrap the body so that closing it releases the slot, keeping what servers look for in it.

    A body made by the server's own ``wsgi.file_wrapper`` is returned as it is, its ``close`` extended, so
    gunicorn still sends it with ``sendfile()`` and waitress still knows its length. Anything else goes in a
    ``_Release`` (sized when the body has a length).
    """
    file_wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(file_wrapper, type) and isinstance(iterable, file_wrapper):
        inner_close = getattr(iterable, "close", None)

        def close() -> None:
            try:
                if inner_close is not None:
                    inner_close()
            finally:
                lane.release(ticket)

        try:
            iterable.close = close  # type: ignore[attr-defined]
        except AttributeError:  # a wrapper with __slots__: wrap it after all
            pass
        else:
            return iterable
    if hasattr(iterable, "__len__"):
        return _SizedRelease(iterable, lane, ticket)
    return _Release(iterable, lane, ticket)


class RequestQueueMiddleware:
    """Admission control for any WSGI application; see the module docstring for an example.

    :param app: the WSGI application to protect.
    :param concurrency: requests of the default lane that run at once (default 4).
    :param max_queue_size: requests of the default lane that may wait for a slot (default 10).
    :param queue_timeout: seconds a request may wait, upstream time included, before a rejection (default 5).
    :param max_age: seconds after which a request is rejected without running; ``None`` (default) is off.
    :param status: the rejection status, 503 (default) or e.g. 429.
    :param classify: ``classify(environ) -> int``, the request's priority class (lower first; default 0).
        One that raises or returns a non-integer puts the request in class 0 and is logged once.
    :param lanes: more lanes, ``{name: {"concurrency": 1, ...}}``; unset limits are the default lane's.
    :param select_lane: ``select_lane(environ)`` names the lane of a request: a lane name, ``None`` for
        the default lane, or ``EXEMPT`` to pass the request through untouched.
    :param reject_response: ``reject_response(environ, reason, retry_after)`` returns a WSGI application that
        answers a rejected request; a ``Retry-After`` header is added when it sets none.
    :param signal_sender: the sender of the ``flask_queue.signals`` this sends (default: the middleware).
    :raises ConfigurationError: (a ``ValueError``) naming the first invalid setting.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        concurrency: int = _DEFAULTS["concurrency"],
        max_queue_size: int = _DEFAULTS["max_queue_size"],
        queue_timeout: float = _DEFAULTS["queue_timeout"],
        max_age: float | None = _DEFAULTS["max_age"],
        status: int = _DEFAULTS["status"],
        classify: Classifier | None = None,
        lanes: dict[str, dict[str, Any]] | None = None,
        select_lane: LaneSelector | None = None,
        reject_response: RejectResponse | None = None,
        signal_sender: object = None,
    ) -> None:
        self.app = app
        self.status = _check_status(status)
        self._status_line = f"{status} {HTTP_STATUS_CODES.get(status, 'Rejected')}"
        self.classify = _check_callable("classify", classify)
        self.select_lane = _check_callable("select_lane", select_lane)
        self.reject_response = reject_response
        self.signal_sender = self if signal_sender is None else signal_sender
        default = Lane(
            DEFAULT_LANE,
            concurrency=concurrency,
            max_queue_size=max_queue_size,
            queue_timeout=queue_timeout,
            max_age=max_age,
        )
        self.lanes: dict[str, Lane] = {DEFAULT_LANE: default}
        self._failed_callbacks: set[str] = set()
        for name, limits in (lanes or {}).items():
            unknown = set(limits) - _LANE_LIMITS
            if unknown:
                raise ConfigurationError(
                    f"lane {name!r}: unknown limit {sorted(unknown)[0]!r} (limits: {', '.join(sorted(_LANE_LIMITS))})"
                )
            self.add_lane(name, **limits)

    def add_lane(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        max_queue_size: int | None = None,
        queue_timeout: float | None = None,
        max_age: float | _Unset | None = _UNSET,
    ) -> Lane:
        """Add a lane with its own limits; a limit left out is the default lane's.

        :raises ConfigurationError: for an invalid limit, or a name already in use.
        """
        if name in self.lanes:
            raise ConfigurationError(f"lane {name!r} is already defined")
        default = self.lanes[DEFAULT_LANE]
        try:
            lane = Lane(
                name,
                concurrency=default.concurrency if concurrency is None else concurrency,
                max_queue_size=default.max_queue_size if max_queue_size is None else max_queue_size,
                queue_timeout=default.queue_timeout if queue_timeout is None else queue_timeout,
                max_age=default.max_age if isinstance(max_age, _Unset) else max_age,
            )
        except ConfigurationError as error:
            raise ConfigurationError(f"lane {name!r}: {error}") from None
        self.lanes[name] = lane
        return lane

    def stats(self) -> dict[str, Any]:
        """Figures for every lane, as plain data::

            {"lanes": {"default": {"running": 0, "waiting": 0, "admitted": 0,
                                   "rejected": {"full": 0, "timeout": 0, "too_old": 0, "shed": 0,
                                                "disconnected": 0},
                                   "wait_ms": {"p50": ..., "p95": ..., "p99": ...},
                                   "service_ms": {...}, "upstream_ms": {...}, "limits": {...}}}}

        Percentiles cover the most recent 2,048 requests of the lane and are ``None`` before the first.
        ``wait_ms`` is the time spent waiting in the lane, ``upstream_ms`` the time before the app saw the
        request (from ``X-Request-Start``), ``service_ms`` the time from admission to the response's close.
        """
        return {"lanes": {name: lane.stats() for name, lane in self.lanes.items()}}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        lane = self.lanes[DEFAULT_LANE] if self.select_lane is None else self._lane(environ)
        if lane is None:
            return self.app(environ, start_response)
        priority = 0 if self.classify is None else self._priority(environ)
        upstream = (
            upstream_wait(environ)
            if "HTTP_X_REQUEST_START" in environ or "HTTP_X_QUEUE_START" in environ
            else 0.0
        )

        ticket = lane.arrive(priority, upstream)
        if ticket.state == REJECTED:
            return self._reject(environ, start_response, lane, ticket)
        # From here until the body is handed to the server, anything that raises (a signal receiver's
        # BaseException, KeyboardInterrupt while waiting, the app itself) must give the ticket up.
        try:
            if ticket.state == WAITING:
                if "wsgi_plus.version" in environ:  # a WSGI+ server: wait parked, holding no thread
                    from ._admission_wsgiplus import wait_for_slot

                    return wait_for_slot(self, environ, start_response, lane, ticket, priority)
                if signals.request_queued.receivers:
                    self._send(signals.request_queued, lane=lane.name, priority=priority, environ=environ)
                lane.wait(ticket)
                if ticket.state == ADMITTED and _client_gone(environ):
                    lane.withdraw(ticket, "disconnected")
                if ticket.state == REJECTED:
                    return self._reject(environ, start_response, lane, ticket)
            iterable = self._call_admitted(environ, start_response, lane, ticket)
        except BaseException:
            lane.cancel(ticket)
            raise
        if type(iterable) is list:  # the common case, inlined: a computed body the server cannot wrap
            return _ListRelease(iterable, lane, ticket)
        return _released_on_close(iterable, environ, lane, ticket)

    def _lane(self, environ: WSGIEnvironment) -> Lane | None:
        """The request's lane by ``select_lane``; ``None`` when exempt. Never raises: see ``_callback_failed``."""
        assert self.select_lane is not None
        try:
            name = self.select_lane(environ)
            if name is EXEMPT:
                return None
            return self.lanes[DEFAULT_LANE if name is None else name]  # type: ignore[index]
        except Exception:
            self._callback_failed("select_lane", "requests it fails on go to the default lane")
            return self.lanes[DEFAULT_LANE]

    def _send(self, signal: NamedSignal, **extra: Any) -> None:
        # A receiver runs between a request's admission and its release: one that raises must not leave a
        # ticket in line or a slot taken, nor fail the request. It is logged (once per signal) instead.
        try:
            signal.send(self.signal_sender, **extra)
        except Exception:
            self._callback_failed(f"a receiver of {signal.name}", "requests go on as if it had not")

    def _callback_failed(self, callback: str, consequence: str) -> None:
        # A broken callback must not turn requests into 500s, nor flood the log under load: log it once.
        if callback not in self._failed_callbacks:
            self._failed_callbacks.add(callback)
            log.exception("%s failed (logged once; %s)", callback, consequence)

    def _priority(self, environ: WSGIEnvironment) -> int:
        assert self.classify is not None
        try:
            priority = self.classify(environ)
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise TypeError(f"classify must return an int, got {priority!r}")
        except Exception:
            self._callback_failed("classify", "requests it fails on go to the default class 0")
            return 0
        return priority

    def _call_admitted(
        self, environ: WSGIEnvironment, start_response: StartResponse, lane: Lane, ticket: Ticket
    ) -> Iterable[bytes]:
        """Tell ``request_admitted`` and call the app for a request given its slot (the caller releases the
        slot if this raises)."""
        if signals.request_admitted.receivers:
            wait = ticket.admitted_at - ticket.arrived
            self._send(signals.request_admitted, lane=lane.name, wait=wait, environ=environ)
        return self.app(environ, start_response)

    def _reject(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        lane: Lane,
        ticket: Ticket,
    ) -> Iterable[bytes]:
        reason = ticket.reason
        assert reason is not None
        retry_after = lane.retry_after()
        log.info(
            "rejected %s %s in lane %r: %s (Retry-After: %d)",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            lane.name,
            reason,
            retry_after,
        )
        if signals.request_rejected.receivers:
            self._send(
                signals.request_rejected,
                lane=lane.name,
                reason=reason,
                retry_after=retry_after,
                environ=environ,
            )
        if self.reject_response is None:
            return self._default_rejection(environ, start_response, reason, retry_after)
        started = False

        def with_retry_after(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            nonlocal started
            started = True
            if not any(key.lower() == "retry-after" for key, _ in headers):
                headers = [*headers, ("Retry-After", str(retry_after))]
            return start_response(status, headers, exc_info)

        try:
            respond = self.reject_response(environ, reason, retry_after)
            return respond(environ, with_retry_after)
        except Exception:
            # A broken hook must not turn a cheap rejection into a 500: answer with the default one.
            self._callback_failed("reject_response", "its rejections get the default response")
            exc_info = sys.exc_info() if started else None  # replace headers it may have started
            return self._default_rejection(environ, start_response, reason, retry_after, exc_info)

    def _default_rejection(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        reason: str,
        retry_after: int,
        exc_info: OptExcInfo | None = None,
    ) -> Iterable[bytes]:
        message = "Too many requests" if self.status == 429 else "The server is busy"
        if _wants_json(environ.get("HTTP_ACCEPT")):
            body = json.dumps({"error": message, "reason": reason, "retry_after": retry_after}).encode()
            content_type = "application/json"
        else:
            body = f"{message} ({reason}); retry in {retry_after} s.\n".encode()
            content_type = "text/plain; charset=utf-8"
        start_response(
            self._status_line,
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Retry-After", str(retry_after)),
                ("Cache-Control", "no-store"),
            ],
            exc_info,
        )
        return [body]


def _wants_json(accept_header: str | None) -> bool:
    """Whether the client names JSON (``application/json`` or ``*/*+json``) at least as high as text.

    Only an explicit JSON type counts: ``*/*`` alone gets text. axios's ``application/json, text/plain, */*``
    and ``application/problem+json`` get JSON; a browser's ``text/html,...,*/*;q=0.8`` gets text.
    """
    if not accept_header or "json" not in accept_header:  # browsers and */*: no parsing (about 30 us)
        return False
    accept = parse_accept_header(accept_header, MIMEAccept)
    json_quality = max(
        (q for value, q in accept if value == "application/json" or value.endswith("+json")), default=0
    )
    text_quality = max((q for value, q in accept if value in ("text/plain", "text/html")), default=0)
    return json_quality > 0 and json_quality >= text_quality


EXTENSION_KEY: Final = "flask-queue.request-queue"
_LANE_ATTR: Final = "_flask_queue_lane"
_ROUTE_CACHE_SIZE: Final = 4096
_ADAPTER_CACHE_SIZE: Final = 256


class RequestQueue:
    """Admission control for a Flask application, with per-endpoint lanes and priority classes.

    Constructor arguments are the defaults; the ``REQUEST_QUEUE_CONCURRENCY``, ``..._MAX_QUEUE_SIZE``,
    ``..._QUEUE_TIMEOUT``, ``..._MAX_AGE``, ``..._STATUS`` and ``..._CLASSIFY`` config keys override them,
    read once in ``init_app``. ``init_app`` wraps ``app.wsgi_app`` in a ``RequestQueueMiddleware``, so the
    queue sits in front of Flask's routing and request context: a rejection costs almost nothing.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        concurrency: int = _DEFAULTS["concurrency"],
        max_queue_size: int = _DEFAULTS["max_queue_size"],
        queue_timeout: float = _DEFAULTS["queue_timeout"],
        max_age: float | None = _DEFAULTS["max_age"],
        status: int = _DEFAULTS["status"],
        classify: Classifier | None = None,
    ) -> None:
        self._defaults: dict[str, Any] = {
            "concurrency": concurrency,
            "max_queue_size": max_queue_size,
            "queue_timeout": queue_timeout,
            "max_age": max_age,
            "status": status,
            "classify": classify,
        }
        # Checks the settings and lanes now, not at the first init_app, with the middleware's own checks.
        self._checks = RequestQueueMiddleware(_no_app, **self._defaults)
        self._lanes: dict[str, dict[str, Any]] = {}
        self._reject_response: Callable[[str, int], ResponseReturnValue] | None = None
        self._marks = 0  # how many times a view, endpoint or blueprint was given a lane or made exempt
        self._endpoint_lanes: dict[str, str | _Exempt] = {}
        self._blueprint_lanes: dict[object, str | _Exempt] = {}  # Blueprint -> lane
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()  # set up by init_app; never kept alive here
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Put the request queue in front of ``app``; raises ``RuntimeError`` if it already has one."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "This app already has a RequestQueue; a second one would queue every request twice."
            )
        settings = {}
        for name, default in self._defaults.items():
            settings[name] = app.config.setdefault(f"REQUEST_QUEUE_{name.upper()}", default)
        try:
            middleware = RequestQueueMiddleware(
                app.wsgi_app,
                select_lane=self._lane_selector(app),
                reject_response=None
                if self._reject_response is None
                else _flask_rejection(app, self._reject_response),
                signal_sender=app,
                **settings,
            )
        except ConfigurationError as error:
            raise ConfigurationError(f"{error} (from REQUEST_QUEUE_* config or RequestQueue())") from None
        for name, limits in self._lanes.items():
            middleware.add_lane(name, **limits)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = middleware
        self._apps.add(app)

    def lane(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        max_queue_size: int | None = None,
        queue_timeout: float | None = None,
        max_age: float | _Unset | None = _UNSET,
    ) -> None:
        """Define a lane with its own limits; a limit left out is the default lane's (per app).

        Define a lane before naming it in ``@limit``. ``max_age=None`` turns the age limit off for the lane.

        :raises ConfigurationError: for an invalid limit, the name ``"default"`` or a name in use.
        """
        if name == DEFAULT_LANE:
            raise ConfigurationError(
                "the default lane is set by RequestQueue(...) and the REQUEST_QUEUE_* config keys, not lane()"
            )
        limits: dict[str, Any] = {
            "concurrency": concurrency,
            "max_queue_size": max_queue_size,
            "queue_timeout": queue_timeout,
            "max_age": max_age,
        }
        self._checks.add_lane(name, **limits)  # raises for an invalid limit, naming the lane
        self._lanes[name] = limits
        for app in self._apps:
            self.middleware(app).add_lane(name, **limits)

    def limit(self, lane: str) -> Callable[[T], T]:
        """Admit the requests of a view through ``lane``: a decorator, also for an endpoint or a blueprint.

        ``@queue.limit("reports")`` on a view (above or below the route decorator);
        ``queue.limit("reports")("export_csv")`` for an endpoint by name; ``queue.limit("api")(bp)`` for every
        view of a blueprint (and of the blueprints nested in it). A view's own mark wins over its blueprint's.

        :raises ConfigurationError: (a ``ValueError``) when ``lane`` was not defined with ``lane()``.
        """
        if lane != DEFAULT_LANE and lane not in self._lanes:
            known = ", ".join(repr(name) for name in [DEFAULT_LANE, *self._lanes])
            raise ConfigurationError(
                f"unknown lane {lane!r}: define it with queue.lane({lane!r}, ...) before @limit (lanes: {known})"
            )
        return lambda target: self._mark(target, lane)

    def exempt(self, target: T) -> T:
        """Never queue nor reject the requests of a view, an endpoint or a blueprint (health checks, metrics).

        ``@queue.exempt`` on a view; ``queue.exempt("static")`` for an endpoint by name, such as Flask's own
        static files; ``queue.exempt(bp)`` for every view of a blueprint.
        """
        return self._mark(target, EXEMPT)

    def _mark(self, target: T, lane: str | _Exempt) -> T:
        if isinstance(target, str):
            self._endpoint_lanes[target] = lane
        elif isinstance(target, Blueprint):
            self._blueprint_lanes[target] = lane  # by object: its endpoints' prefix depends on registration
        elif callable(target):
            setattr(target, _LANE_ATTR, lane)
        else:
            raise TypeError(f"expected a view function, an endpoint name or a Blueprint, got {target!r}")
        self._marks += 1
        return target

    def classify(self, func: Classifier) -> Classifier:
        """Decorate ``func(environ) -> int``, the priority class of each request (lower is served first).

        It runs before routing, for every queued request, so keep it cheap (read a header or a path prefix).
        Applies to apps set up from now on unless ``REQUEST_QUEUE_CLASSIFY`` says otherwise, and to those
        already set up.
        """
        self._defaults["classify"] = func
        for app in self._apps:
            self.middleware(app).classify = func
        return func

    def reject_response(
        self, func: Callable[[str, int], ResponseReturnValue]
    ) -> Callable[[str, int], ResponseReturnValue]:
        """Decorate ``func(reason, retry_after)`` that builds the response for a rejected request.

        It runs inside a request context, so ``request`` and ``jsonify`` work, and returns anything a view
        may return. The status stays what ``func`` returns; ``Retry-After`` is added when it sets none.
        """
        self._reject_response = func
        for app in self._apps:
            self.middleware(app).reject_response = _flask_rejection(app, func)
        return func

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """The request queue's figures for ``app`` (default: the current app); see ``RequestQueueMiddleware.stats``."""
        return self.middleware(app).stats()

    @staticmethod
    def middleware(app: Flask | None = None) -> RequestQueueMiddleware:
        """The middleware installed for ``app`` (default: the current app)."""
        if app is None:
            from flask import current_app

            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            middleware: RequestQueueMiddleware = app.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError(
                "This app has no RequestQueue. Did you forget to call queue.init_app(app)?"
            ) from None
        return middleware

    def _endpoint_lane(self, app: Flask, endpoint: str | None) -> str | _Exempt | None:
        """The lane marked for an endpoint: by name, on its view (or view class), or on its blueprints."""
        if endpoint is None:
            return None
        if endpoint in self._endpoint_lanes:
            return self._endpoint_lanes[endpoint]
        view = app.view_functions.get(endpoint)
        lane: str | _Exempt | None = getattr(view, _LANE_ATTR, None)
        if lane is None:  # a class-based view: the mark is on the class that as_view() was made from
            lane = getattr(getattr(view, "view_class", None), _LANE_ATTR, None)
        # "parent.child.view": the innermost marked blueprint, found by its registered (dotted) name.
        prefix = endpoint.rpartition(".")[0]
        while lane is None and prefix:
            blueprint = app.blueprints.get(prefix)
            if blueprint is not None:
                lane = self._blueprint_lanes.get(blueprint)
            prefix = prefix.rpartition(".")[0]
        return lane

    def _lane_selector(self, app: Flask) -> LaneSelector:
        """Map a request to its view's lane through the app's URL map, with two caches.

        One URL adapter per site (scheme, host, server name and port, script name), made by Flask's own
        ``create_url_adapter`` so that host and subdomain matching agree with Flask's on every version; and
        the lane per site, method and path.
        """
        adapters: dict[tuple[str, ...], MapAdapter | None] = {}
        lanes: dict[tuple[tuple[str, ...], str, str], str | _Exempt | None] = {}
        cached_marks = 0

        def select(environ: WSGIEnvironment) -> str | _Exempt | None:
            nonlocal cached_marks
            if not self._marks:
                return None
            if cached_marks != self._marks:  # a view was marked since: what is cached may be stale
                lanes.clear()
                cached_marks = self._marks
            site = (
                environ.get("wsgi.url_scheme", ""),
                environ.get("HTTP_HOST", ""),
                environ.get("SERVER_NAME", ""),
                environ.get("SERVER_PORT", ""),
                environ.get("SCRIPT_NAME", ""),
            )
            key = (site, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
            try:
                return lanes[key]
            except KeyError:
                pass
            try:
                adapter = adapters[site]
            except KeyError:
                adapter = _url_adapter(app, environ)
                if len(adapters) >= _ADAPTER_CACHE_SIZE:
                    adapters.clear()
                adapters[site] = adapter
            lane = None if adapter is None else self._endpoint_lane(app, _match_endpoint(adapter, environ))
            if len(lanes) >= _ROUTE_CACHE_SIZE:
                lanes.clear()
            lanes[key] = lane
            return lane

        return select


def _no_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    raise AssertionError("RequestQueue._checks only validates settings; it never serves a request")


def _flask_rejection(app: Flask, func: Callable[[str, int], ResponseReturnValue]) -> RejectResponse:
    """Adapt a ``@queue.reject_response`` function to the middleware's hook, inside a request context."""

    def respond(environ: WSGIEnvironment, reason: str, retry_after: int) -> WSGIApplication:
        with app.request_context(environ):
            return app.make_response(func(reason, retry_after))

    return respond


def _client_gone(environ: WSGIEnvironment) -> bool:
    """Whether the client closed its connection, where the server lets us tell; ``False`` when unsure.

    Checked only for requests that waited, so that the slot goes to a client that is still there (HAProxy's
    ``abortonclose``). A client that half-closes its side after sending the request reads as gone, as there.
    """
    disconnected = environ.get("waitress.client_disconnected")
    if disconnected is not None:
        try:
            return bool(disconnected())
        except Exception:
            return False
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # nothing to read: the connection is open and idle
    except ConnectionError:
        return True
    except (
        OSError,
        ValueError,
    ):  # TLS sockets refuse flags; anything odd: assume the client is there
        return False


def _url_adapter(app: Flask, environ: WSGIEnvironment) -> MapAdapter | None:
    """Flask's URL adapter for the request's site; ``None`` when Flask would refuse it (untrusted host)."""
    try:
        return app.create_url_adapter(app.request_class(environ))
    except Exception:
        log.debug(
            "no URL adapter for %r; the default lane admits it", environ.get("HTTP_HOST"), exc_info=True
        )
        return None


def _match_endpoint(adapter: MapAdapter, environ: WSGIEnvironment) -> str | None:
    """The endpoint Flask will dispatch the request to; ``None`` when no view of the app will run it."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    # PATH_INFO is a WSGI "bytes as latin-1" string; Werkzeug's routing wants the decoded path.
    path = environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
    try:
        rule, _ = adapter.match(path, method, return_rule=True)
    except HTTPException:  # 404, 405, redirects: Flask answers them; the default lane admits them
        return None
    except Exception:  # a malformed request must not become a 500 here; Flask will judge it
        log.debug("could not route %r for lane selection", path, exc_info=True)
        return None
    if method == "OPTIONS" and getattr(rule, "provide_automatic_options", False):
        return None  # Flask answers it without calling the view: it must not wait in the view's lane
    endpoint: str = rule.endpoint
    return endpoint
