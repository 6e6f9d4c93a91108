"""The WSGI+ protocol: what a server, a view and a middleware agree on.

A WSGI+ server puts ``wsgi_plus.version`` in the environ. The response iterable may yield a
``concurrent.futures.Future``; the server parks the request until the future is done, then resumes the
iterable with ``resume``: ``send(result)`` when it succeeded, ``throw(error)`` when it failed or was
cancelled, ``next()`` for an iterator that has neither. A wrapper between the server and the application
must pass both on, which a plain ``for`` loop does not: ``forward`` does, without closing the wrapped
iterable (its owner closes it, once, as PEP 3333 says).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any, Final

from .._types import WSGIEnvironment

__all__ = ["ENVIRON_KEY", "VERSION", "forward", "is_wsgi_plus", "outcome", "resume"]

#: The WSGI+ version a server puts in ``environ["wsgi_plus.version"]``.
VERSION: Final = (1, 0)
#: The environ key that tells an application its server speaks WSGI+.
ENVIRON_KEY: Final = "wsgi_plus.version"


def is_wsgi_plus(environ: WSGIEnvironment) -> bool:
    """Whether the server of this request speaks WSGI+ (parks a response iterable that yields a Future)."""
    return ENVIRON_KEY in environ


def resume(iterator: Iterator[Any], value: Any = None, error: BaseException | None = None) -> Any:
    """Resume a response iterable after a park; return what it yields next (``StopIteration`` at its end).

    ``error`` is thrown in, else ``value`` sent in, else the iterator is advanced; an iterator without
    ``throw`` (or ``send``) is simply advanced, and reads the outcome from the Future it yielded. This is the
    one resume step of the server, the views and the request queue.
    """
    if error is not None:
        throw = getattr(iterator, "throw", None)
        if throw is not None:
            return throw(error)
    elif value is not None:
        send = getattr(iterator, "send", None)
        if send is not None:
            return send(value)
    return next(iterator)


def outcome(future: Future[Any]) -> tuple[Any, BaseException | None]:
    """``(result, None)`` for a future that succeeded, ``(None, error)`` for one that failed or was cancelled.

    The future must be done. A cancelled future gives a ``concurrent.futures.CancelledError``.
    """
    try:
        return future.result(timeout=0), None  # one look under the future's lock, in the common case
    except CancelledError:
        return None, CancelledError()
    except BaseException as error:
        return None, error


def forward(iterable: Iterable[Any]) -> Generator[Any, Any, None]:
    """Yield what ``iterable`` yields, handing on what the server sends or throws in; never close it.

    Like ``yield from``, except that closing this generator leaves ``iterable`` open, so the wrapper that
    owns it closes it exactly once. An exception thrown in goes to an inner generator's ``throw``; an inner
    iterator without one is simply advanced (a WSGI+ application that is not a generator reads the outcome
    from the Future it yielded).
    """
    iterator = iter(iterable)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            item = resume(iterator, value, error)
        except StopIteration:
            return
        value = error = None
        try:
            value = yield item
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
