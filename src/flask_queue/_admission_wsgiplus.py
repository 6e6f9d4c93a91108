"""The request queue under a WSGI+ server: a request waiting for its slot holds no thread.

``RequestQueueMiddleware`` hands a request that has to wait here when the environ carries
``wsgi_plus.version``. Instead of blocking on the lane, the response yields a Future that resolves when the
lane decides (the slot is handed over, or the request is shed) or when its ``queue_timeout`` (or ``max_age``)
runs out, whichever comes first; the server parks the request meanwhile. A waiter whose client leaves is
closed by the server while parked, and is withdrawn from the line, counted as ``disconnected``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

from . import signals
from ._lane import ADMITTED, REJECTED, WAITING, Lane, Ticket
from ._types import StartResponse, WSGIEnvironment
from ._wsgiplus_iter import forward

if TYPE_CHECKING:
    from .admission import RequestQueueMiddleware


def wait_for_slot(
    middleware: RequestQueueMiddleware,
    environ: WSGIEnvironment,
    start_response: StartResponse,
    lane: Lane,
    ticket: Ticket,
    priority: int,
) -> Generator[Any, Any, None]:
    """The response of a WAITING ticket under WSGI+: park until admitted or rejected, then respond."""
    from . import wsgiplus
    from .admission import _client_gone

    decided: Future[None] = Future()

    def decide() -> None:
        # The server may have cancelled the future (client gone, suspend timeout): nothing to resolve then.
        with contextlib.suppress(InvalidStateError):
            decided.set_result(None)

    cancel_timer: Callable[[], None] | None = None
    try:
        if signals.request_queued.receivers:
            middleware._send(signals.request_queued, lane=lane.name, priority=priority, environ=environ)
        lane.call_when_decided(ticket, decide)
        if not decided.done():
            seconds, reason = lane.time_left(ticket)

            def expire() -> None:
                if lane.abandon(ticket, reason):
                    decide()

            # The deadline is a timer on the process's event loop: no thread per waiter there either.
            cancel_timer = wsgiplus._call_later(max(0.0, seconds), expire)
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
        yield from _respond(middleware._reject(environ, start_response, lane, ticket))
        return
    try:
        iterable = middleware._call_admitted(environ, start_response, lane, ticket)
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


def _respond(body: Iterable[bytes]) -> Generator[Any, Any, None]:
    try:
        yield from forward(body)
    finally:
        _close(body)


def _close(iterable: Iterable[Any]) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
