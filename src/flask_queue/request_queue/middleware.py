"""``RequestQueueMiddleware``: admission control in front of any WSGI application.

At most ``concurrency`` requests of a lane run at once in the process; up to ``max_queue_size`` more wait
for a slot, the more important priority classes first and in arrival order within a class; the rest, and
those that waited ``queue_timeout`` seconds, are answered at once with 503 (or 429) and a ``Retry-After``
header instead of piling up in front of busy threads. Time a request spent before the app saw it, from an
``X-Request-Start`` or ``X-Queue-Start`` header, counts as waiting::

    from flask_queue.request_queue import RequestQueueMiddleware

    app.wsgi_app = RequestQueueMiddleware(app.wsgi_app, concurrency=4, max_queue_size=10, queue_timeout=5.0)

Under a WSGI+ server (the environ carries ``wsgi_plus.version``) a request that has to wait holds no thread:
its response yields a Future that resolves when the lane decides (the slot is handed over, or the request is
shed) or its deadline passes, and the server parks it meanwhile. Elsewhere it waits on the lane's lock.

Limits are per process: with several server processes each has its own queue. The server must have more
threads than the lanes' concurrency for requests to wait here rather than in the server's own backlog; see
``docs/request-queue.md`` for sizing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any, Final

from blinker import NamedSignal
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import HTTP_STATUS_CODES, parse_accept_header

from .. import _checks, signals
from .._types import OptExcInfo, StartResponse, WSGIApplication, WSGIEnvironment
from ..exceptions import ConfigurationError
from ..wsgiplus import call_later, forward, is_wsgi_plus
from .lane import ADMITTED, REJECTED, WAITING, Lane, Ticket
from .request_start import upstream_wait

__all__ = ["DEFAULTS", "DEFAULT_LANE", "EXEMPT", "RequestQueueMiddleware"]

log = logging.getLogger("flask_queue.request_queue")

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

#: The default of every setting of the queue (and of its default lane).
DEFAULTS: Final[dict[str, Any]] = {
    "concurrency": 4,
    "max_queue_size": 10,
    "queue_timeout": 5.0,
    "max_age": None,
    "status": 503,
}


_LANE_LIMITS: Final = frozenset({"concurrency", "max_queue_size", "queue_timeout", "max_age"})


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
        concurrency: int = DEFAULTS["concurrency"],
        max_queue_size: int = DEFAULTS["max_queue_size"],
        queue_timeout: float = DEFAULTS["queue_timeout"],
        max_age: float | None = DEFAULTS["max_age"],
        status: int = DEFAULTS["status"],
        classify: Classifier | None = None,
        lanes: dict[str, dict[str, Any]] | None = None,
        select_lane: LaneSelector | None = None,
        reject_response: RejectResponse | None = None,
        signal_sender: object = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"RequestQueueMiddleware wraps a WSGI application (a callable), not {app!r}")
        self.app = app
        self.status = _checks.integer(
            "status", status, minimum=400, maximum=599, hint=" (an HTTP error status)"
        )
        self._status_line = f"{status} {HTTP_STATUS_CODES.get(status, 'Rejected')}"
        self.classify = _checks.function("classify", classify)
        self.select_lane = _checks.function("select_lane", select_lane)
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
                if is_wsgi_plus(environ):  # a WSGI+ server: wait parked, holding no thread
                    return self._wait_parked(environ, start_response, lane, ticket, priority)
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

    def _wait_parked(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        lane: Lane,
        ticket: Ticket,
        priority: int,
    ) -> Generator[Any, Any, None]:
        """The response of a WAITING ticket under WSGI+: park until admitted or rejected, then respond.

        The deadline is a timer on the process's event loop, so no thread waits for it either. A waiter whose
        client leaves is closed by the server while parked, and is withdrawn, counted as ``disconnected``.
        """
        decided: Future[None] = Future()

        def decide() -> None:
            # The server may have cancelled the future (client gone, suspend timeout): nothing to resolve then.
            with contextlib.suppress(InvalidStateError):
                decided.set_result(None)

        cancel_timer: Callable[[], None] | None = None
        try:
            if signals.request_queued.receivers:
                self._send(signals.request_queued, lane=lane.name, priority=priority, environ=environ)
            lane.call_when_decided(ticket, decide)
            if not decided.done():
                seconds, reason = lane.time_left(ticket)

                def expire() -> None:
                    if lane.abandon(ticket, reason):
                        decide()

                cancel_timer = call_later(max(0.0, seconds), expire)
                yield decided
            if ticket.state == ADMITTED and _client_gone(environ):
                lane.withdraw(ticket, "disconnected")
        except GeneratorExit:
            # Closed while parked: the client left, or the server gave up on the request.
            if not lane.abandon(ticket, "disconnected"):
                lane.withdraw(ticket, "disconnected")
            raise
        except BaseException:
            lane.cancel(ticket)
            raise
        finally:
            if cancel_timer is not None:
                cancel_timer()
        assert ticket.state != WAITING
        if ticket.state == REJECTED:
            body = self._reject(environ, start_response, lane, ticket)
            try:
                yield from forward(body)
            finally:
                _close(body)
            return
        try:
            iterable = self._call_admitted(environ, start_response, lane, ticket)
        except BaseException:
            lane.cancel(ticket)
            raise
        try:
            yield from forward(iterable)
        finally:
            try:
                _close(iterable)
            finally:
                lane.release(ticket)

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


def _close(iterable: Iterable[Any]) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
