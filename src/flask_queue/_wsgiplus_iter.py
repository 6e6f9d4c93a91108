"""Small pieces of the WSGI+ protocol shared by the server, the Flask views and the request queue.

A WSGI+ server resumes a parked response iterable with ``send(result)`` when the Future it yielded
succeeded and ``throw(error)`` when it failed or was cancelled (``next()`` for an iterator that has neither).
A wrapper between the server and the application must pass both on, which a plain ``for`` loop does not:
``forward`` does, without closing the wrapped iterable (its owner closes it, once, as PEP 3333 says).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from concurrent.futures import CancelledError, Future
from typing import Any, Final

#: The WSGI+ version a server puts in ``environ["wsgi_plus.version"]``.
VERSION: Final = (1, 0)
#: The environ key that tells an application its server speaks WSGI+.
ENVIRON_KEY: Final = "wsgi_plus.version"


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
    send = getattr(iterator, "send", None)
    throw = getattr(iterator, "throw", None)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is not None and throw is not None:
                thrown, error = error, None
                item = throw(thrown)
            elif value is not None and send is not None:
                item = send(value)
            else:
                item = next(iterator)
        except StopIteration:
            return
        value = error = None
        try:
            value = yield item
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
