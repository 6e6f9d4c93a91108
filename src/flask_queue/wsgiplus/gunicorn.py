"""A gunicorn worker that speaks WSGI+: a request whose response yields a Future is parked, not waited for.

Run an application with it::

    gunicorn -k flask_queue.gunicorn.WSGIPlusWorker --threads 4 app:app

It is gunicorn's gthread worker, with one difference: when the response iterable yields a
``concurrent.futures.Future`` that is not done yet, the thread gives the request up and serves others;
when the future completes, the next step of the request runs on a pool thread, its result sent into the
application (its exception thrown in). Every step of a request runs in one ``contextvars.Context`` made for
that request, so context variables (Flask's request and app context among them) follow it across threads.
``environ["wsgi_plus.version"]`` is ``(1, 0)``. The Flask app it loads is set up with
``flask_queue.wsgiplus.init_app``, so its ``@suspendable`` and ``async def`` views park too.

A park ends exactly once, claimed by whichever comes first: the future completing (the next step goes
straight to the thread pool), or the worker's main loop (the thread that accepts connections and beats the
heartbeat) giving up on it. The main loop times parks out, watches parked sockets for clients that leave and
waits for parks at shutdown; everything that touches its poller happens on it. So:

- a future that is already done is resumed at once, in the same thread, without a park;
- a failed or cancelled future is thrown into the application; an error it does not handle is a 500
  (or, once the headers are out, the connection is closed), as for any WSGI application;
- a request parked longer than the suspend timeout is answered ``504`` and its future cancelled;
- a client that closes its connection while its request is parked has its future cancelled;
- graceful shutdown waits for parked requests, up to gunicorn's ``--graceful-timeout``;
- keep-alive connections stay open across a park.

What a request costs is mostly hand-overs between threads, each a GIL hand-over and a wake-up: the pool
thread, the event loop and the main loop each take part in a parked request. So the worker hands over as
little as it can: its pool makes no Future per call, the main loop is woken once per turn however many
steps finished meanwhile (``run_async`` wakes the event loop the same way), a response's head goes out with
its first body chunk, a body read to its end is not drained again, and the heartbeat file is touched at
most twice a second rather than on every turn of the main loop. Resuming a request on the event loop's
thread would save one more hand-over, but code after a ``yield`` may block (a database query), and on the
loop it would stall every coroutine of the process, or deadlock waiting on one; so it resumes on the pool.

Settings, read from the environment, where gunicorn's ``--env WSGI_PLUS_SUSPEND_TIMEOUT=30`` (``raw_env`` in
a config file) also puts them: ``WSGI_PLUS_SUSPEND_TIMEOUT`` (seconds, default 60) and
``WSGI_PLUS_EVENT_LOOP`` (see ``flask_queue.wsgiplus.event_loop_factory``). An invalid value stops gunicorn at
start with an error naming the setting. HTTP/2 connections are served as by gthread, without
WSGI+.

Needs gunicorn 27 or later (``GUNICORN_REQUIREMENT``). The worker builds on gthread's internals, not on a
public contract, and earlier releases break it: on 24.0 the request after a parked one on a keep-alive
connection is answered 500, on 26.1 every parked request logs an ``AttributeError``, on 26.2 every
keep-alive request does. So the worker refuses an older gunicorn at start, naming the range (and cannot
be imported from one older than 24, which lacks gthread's ``PollableMethodQueue``).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import inspect
import math
import os
import queue
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from datetime import datetime
from functools import partial
from typing import Any, Final

import gunicorn
from gunicorn import http, util
from gunicorn.http import body, wsgi
from gunicorn.workers import gthread

from .. import _checks
from .protocol import ENVIRON_KEY, VERSION, outcome, resume
from .runtime import event_loop_factory, shutdown
from .views import init_app

__all__ = [
    "DEFAULT_SUSPEND_TIMEOUT",
    "GUNICORN_REQUIREMENT",
    "SUSPEND_TIMEOUT_ENV",
    "WSGIPlusWorker",
    "suspend_timeout",
]

#: The gunicorn releases the worker runs on (the ``gunicorn`` extra asks for the same).
GUNICORN_REQUIREMENT: Final = "gunicorn>=27"
_GUNICORN_FLOOR: Final = (27,)

#: The environment variable that sets how long a request may stay parked, in seconds.
SUSPEND_TIMEOUT_ENV: Final = "WSGI_PLUS_SUSPEND_TIMEOUT"
DEFAULT_SUSPEND_TIMEOUT: Final = 60.0
#: Seconds a request stays parked before the worker watches its socket for a client that leaves.
WATCH_AFTER: Final = 0.5
#: Seconds between two heartbeats at most (less when gunicorn's ``--timeout`` asks for it).
HEARTBEAT_EVERY: Final = 0.5


def _unsupported_gunicorn() -> str | None:
    """Why the installed gunicorn cannot run the worker (``None`` when it can)."""
    if tuple(gunicorn.version_info) >= _GUNICORN_FLOOR:
        return None
    return (
        f"flask_queue.gunicorn.WSGIPlusWorker needs {GUNICORN_REQUIREMENT}, not gunicorn"
        f" {gunicorn.__version__}: pip install -U '{GUNICORN_REQUIREMENT}'"
    )


if not hasattr(gthread, "PollableMethodQueue"):  # pragma: no cover - depends on the installed gunicorn
    raise ImportError(_unsupported_gunicorn() or "gunicorn's gthread has no PollableMethodQueue")


def suspend_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """The suspend timeout in seconds from ``WSGI_PLUS_SUSPEND_TIMEOUT`` (60 when unset or empty).

    :raises ConfigurationError: naming the setting when the value is not a positive, finite number.
    """
    raw = environ.get(SUSPEND_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_SUSPEND_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if value > 0 and math.isfinite(value):
        return value
    # Refused as the text it is, so the message shows what was written.
    _checks.number(
        SUSPEND_TIMEOUT_ENV,
        raw,
        strict=True,
        hint=f" (unset it for the default, {DEFAULT_SUSPEND_TIMEOUT:g})",
    )
    raise AssertionError("unreachable: a string is never a number")


class _Request:
    """One request being served: all a step needs to go on with it on whichever thread runs the step."""

    __slots__ = (
        "conn",
        "context",
        "environ",
        "future",
        "iterable",
        "iterator",
        "req",
        "resp",
        "started",
        "watched",
    )

    def __init__(self, conn: Any, req: Any, resp: Any, environ: dict[str, Any]) -> None:
        self.conn = conn
        self.req = req
        self.resp = resp
        self.environ = environ
        self.started = datetime.now()
        # A fresh context per request: each step runs in it (never two at once), so a ContextVar set in
        # one step is there in the next, on any thread, and a token taken in one can be reset in another.
        self.context = contextvars.Context()
        self.iterable: Iterable[Any] | None = None
        self.iterator: Iterator[Any] | None = None
        self.future: Future[Any] | None = None
        # The socket is registered with the poller to notice a client that leaves (main thread only). Kept
        # per request, not per park: whichever of its steps reaches the main loop first unregisters it.
        self.watched = False

    def describe(self) -> str:
        return f"{self.environ.get('REQUEST_METHOD', '?')} {self.environ.get('RAW_URI', self.environ.get('PATH_INFO', '?'))}"


class _Done:
    """A finished step's result, in the shape gthread's ``finish_request`` reads from a pool future."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def cancelled(self) -> bool:
        return False

    def result(self) -> Any:
        return self.value


class _Park:
    """One park of a request on one Future; see ``WSGIPlusWorker._claim``.

    It is its future's done-callback itself, rather than a closure made for each park. Once over, it holds
    neither (``release``): it may stay queued a while (see ``WSGIPlusWorker._expire_parked``).
    """

    __slots__ = ("_future", "_request", "deadline", "worker")

    def __init__(
        self, worker: WSGIPlusWorker, request: _Request, future: Future[Any], deadline: float
    ) -> None:
        self.worker = worker
        self._request: _Request | None = request
        self._future: Future[Any] | None = future
        self.deadline = deadline

    def __call__(self, future: Future[Any]) -> None:
        worker = self.worker
        if worker._claim(self):
            worker._submit(self, worker._resume, *outcome(future))

    @property
    def request(self) -> _Request:
        request = self._request
        assert request is not None, "the park is over"
        return request

    @property
    def future(self) -> Future[Any]:
        future = self._future
        assert future is not None, "the park is over"
        return future

    @property
    def over(self) -> bool:
        return self._request is None

    def release(self) -> None:
        """Let go of the request and the future: the park is over (main thread)."""
        self._request = self._future = None


class _Pool:
    """The worker's request threads: a queue of calls, and nothing made per call.

    gthread's ``ThreadPoolExecutor`` makes a Future (with its condition variable) and a work item for every
    submit, and a parked request is submitted twice; nothing reads those futures here, since each step
    reports to the main loop itself. This pool gives gthread what it uses of its pool, ``submit`` and
    ``shutdown``. A call that raises is logged and its thread goes on serving.
    """

    def __init__(self, threads: int, log: Any) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None]
        self._calls = queue.SimpleQueue()
        self._log = log
        self._closed = False
        # Not daemons: at exit the interpreter lets a running step finish, as with gthread's executor.
        self._threads = [
            threading.Thread(target=self._serve, name=f"wsgiplus-request-{number}")
            for number in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on a pool thread. :raises RuntimeError: after ``shutdown``."""
        if self._closed:
            raise RuntimeError("the request threads are shut down")
        self._calls.put((fn, args))

    def shutdown(self, wait: bool = True) -> None:
        """Let the threads end once the calls queued so far are done; ``wait`` for that. Idempotent."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        get = self._calls.get
        while (call := get()) is not None:
            fn, args = call
            del call
            try:
                fn(*args)
            except BaseException:
                self._log.exception("Error in a request thread")
            # An idle thread keeps nothing of its last call: a resumed step's value or error (whose traceback
            # reaches the request's frames) would stay in memory for as long as the thread waits.
            del fn, args


class _MethodQueue(gthread.PollableMethodQueue):  # type: ignore[misc]
    """gthread's queue of calls for the main loop, with one wake-up byte per turn of the loop, not per call.

    Every finished request and every finished park is such a call. A call that finds a byte already on its
    way adds itself to the queue only; the main loop clears the flag before it drains, so a call queued
    after that flag was cleared either is drained now or has written a byte of its own.
    """

    _read_closed = True  # until init opens the pipe

    def init(self) -> None:
        super().init()
        self._signalled = False
        self._read_closed = False

    def defer(self, callback: Callable[..., object], *args: Any) -> None:
        self._queue.put((callback, args))
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(OSError):  # the pipe is full: a byte is there already
                os.write(self._write_fd, b"\0")

    def close(self) -> None:
        # The read end only. Request threads may still finish a step and defer its end after the main loop
        # closed this queue (the worker is exiting): with the write end closed, its descriptor number could
        # be a new file's by then, and the wake-up byte would land there. An open write end with no reader
        # fails the write instead (EPIPE, ignored), and goes with the process.
        if not self._read_closed:
            self._read_closed = True
            with contextlib.suppress(OSError):
                os.close(self._read_fd)

    def run_callbacks(self, _fileobj: object) -> None:
        with contextlib.suppress(OSError):
            os.read(self._read_fd, 4096)
        self._signalled = False
        calls = self._queue
        # What is queued now, not what arrives meanwhile: a call queued from here on has its own byte.
        for _ in range(calls.qsize()):
            callback, args = calls.get_nowait()
            callback(*args)


_GONE: Final = object()


def _not_bytes(item: object, headers_sent: bool) -> TypeError:
    when = "after" if headers_sent else "before"
    return TypeError(
        f"the WSGI+ application yielded a {type(item).__name__} {when} its headers were sent: a response "
        "iterable may yield only bytes or a concurrent.futures.Future (to park the request until it is done)"
    )


class _HeadCapture:
    """Stands in for the socket while gunicorn's ``send_headers`` writes the head: keeps it instead."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head = b""

    def sendall(self, data: bytes) -> None:
        self.head += data


class _Response(wsgi.Response):  # type: ignore[misc]
    """gunicorn's HTTP/1 response, sending its head and first body chunk in one system call, not two.

    Every write that leaves the socket releases the GIL, and under load another thread takes it: fewer
    writes, fewer hand-overs (and one wake-up of the client, not two). When no body goes out with the
    head (a HEAD request, an empty or cut-off chunk), the head is written on its own before ``write``
    returns, so what is on the wire after a write is what gunicorn would have put there.
    """

    sock: Any
    _holding = False
    _head: bytes | None = None

    def write(self, arg: bytes) -> None:
        if self.headers_sent or self.chunked:
            super().write(arg)
            return
        self._holding = True
        try:
            super().write(arg)
        finally:
            self._holding = False
            head, self._head = self._head, None
            if head is not None:
                util.write(self.sock, head)

    def send_headers(self) -> None:
        if not self._holding or self.headers_sent:
            super().send_headers()
            return
        sock = self.sock
        capture = self.sock = _HeadCapture()
        try:
            super().send_headers()
        finally:
            self.sock = sock
        self._head = capture.head

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, None
        super()._emit_body(data if head is None else head + data)


# gunicorn 25 and later let a worker choose its response class; with an older one the head goes apart.
_create = (
    partial(wsgi.create, response_class=_Response)
    if "response_class" in inspect.signature(wsgi.create).parameters
    else wsgi.create
)


def _forget_read_body(conn: Any) -> bool:
    """Whether the request just served left nothing of its body on the socket (no body, or all of it read).

    If so, the parser forgets the request, so that reading the next one does not drain its body again.
    Either drain would set and reset a socket timeout to read nothing: system calls that each hand the
    GIL over under load.
    """
    parser = conn.parser
    message = parser.mesg
    reader = getattr(getattr(message, "body", None), "reader", None)
    if isinstance(reader, body.LengthReader) and reader.length == 0 and not message.body.failed:
        parser.mesg = None
        return True
    return False


class WSGIPlusWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker that parks requests on Futures (WSGI+); see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.method_queue = _MethodQueue()
        self._next_heartbeat = 0.0
        self.suspend_timeout = DEFAULT_SUSPEND_TIMEOUT
        # Parked requests (a dict as an atomic set: see _claim), and their deadlines in order (lazily cleaned).
        self._parked: dict[_Park, None] = {}
        self._deadlines: deque[_Park] = deque()
        self._unwatched: deque[_Park] = deque()  # parks whose socket the main loop has not looked at yet

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Fail at start, in gunicorn's master, on a gunicorn older than ``GUNICORN_REQUIREMENT`` (a
        ``RuntimeError``, which gunicorn prints as its one line of error) or when a WSGI+ setting is invalid
        (``--env`` counts)."""
        unsupported = _unsupported_gunicorn()
        if unsupported is not None:
            raise RuntimeError(unsupported)
        super().check_config(cfg, log)
        environ = {**os.environ, **(cfg.env or {})}
        suspend_timeout(environ)
        event_loop_factory(environ)

    # -- process lifecycle ------------------------------------------------------------------------------

    def load_wsgi(self) -> None:
        # gunicorn has put --env into os.environ by now (init_process), and nothing here runs before fork.
        self.suspend_timeout = suspend_timeout()
        super().load_wsgi()
        try:
            from flask import Flask
        except ImportError:  # pragma: no cover - flask is a dependency
            return
        if isinstance(self.wsgi, Flask):
            init_app(self.wsgi)

    def notify(self) -> None:
        # gthread beats on every turn of its main loop, which turns for every finished request: a file's
        # mtime set (a system call) that often tells the arbiter nothing more than one every half second.
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + min(HEARTBEAT_EVERY, self.timeout / 4)
            super().notify()

    def get_thread_pool(self) -> _Pool:
        return _Pool(self.cfg.threads, self.log)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.tpool.shutdown(wait=False)  # gthread's run does it too, unless it raised
            self._drop_parked()
            shutdown(timeout=5.0)

    def _drop_parked(self) -> None:
        """At exit, after the graceful timeout: requests still parked get no answer; say so, free them."""
        if not self._parked:
            return
        self.log.warning(
            "%d parked request(s) still waiting at the end of the graceful timeout: closed unanswered",
            len(self._parked),
        )
        for park in list(self._parked):
            if self._claim(park):
                park.future.cancel()
                self._close_iterable(park.request)
                park.request.conn.close()

    # -- a request's steps (pool threads) ---------------------------------------------------------------

    def handle_request(self, req: Any, conn: Any) -> bool | _Park:
        """Serve a request up to its end (keep-alive or not) or to its first pending Future (parked)."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            resp, environ = _create(req, conn.sock, conn.client, conn.server, self.cfg)
        except BaseException:
            self._post_request(req, environ, resp)
            raise
        environ["wsgi.multithread"] = True
        environ[ENVIRON_KEY] = VERSION
        self.nr += 1
        if self.nr >= self.max_requests:
            if self.alive:  # type: ignore[has-type]
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            resp.force_close()
        if not self.alive or not self.cfg.keepalive or len(self.keepalived_conns) >= self.max_keepalived:
            resp.force_close()
        return self._serve(_Request(conn, req, resp, environ), first=True)

    def _serve(
        self, request: _Request, value: Any = None, error: BaseException | None = None, *, first: bool = False
    ) -> bool | _Park:
        """One step: run the application until its body ends or it waits for a pending Future.

        Errors follow gthread's ``handle_request``: before the headers are out they propagate (the caller
        answers 500); after, the connection is closed.
        """
        resp = request.resp
        parked = False
        try:
            try:
                if first:
                    iterable = request.context.run(self.wsgi, request.environ, resp.start_response)
                    request.iterable = iterable
                    if isinstance(iterable, request.environ["wsgi.file_wrapper"]):
                        resp.write_file(iterable)
                    else:
                        parked = request.context.run(self._iterate, request, None, None, iterable)
                else:
                    parked = request.context.run(self._iterate, request, value, error)
                if parked:
                    return self._register(request)
                resp.close()
            finally:
                if not parked:
                    self.log.access(resp, request.req, request.environ, datetime.now() - request.started)
                    self._close_iterable(request)
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp.headers_sent:
                self.log.exception("Error handling request")
                util.close_graceful(request.conn.sock)
                raise StopIteration() from None
            raise
        finally:
            if not parked:
                self._post_request(request.req, request.environ, resp)
        return True

    def _iterate(
        self,
        request: _Request,
        value: Any = None,
        error: BaseException | None = None,
        iterable: Iterable[Any] | None = None,
    ) -> bool:
        """Write the body until it ends (``False``) or yields a pending Future (``True``: park it).

        Runs inside the request's context (``_serve`` enters it once for the whole step).
        """
        if iterable is not None:
            request.iterator = iter(iterable)
        iterator = request.iterator
        assert iterator is not None
        write = request.resp.write
        while True:
            try:
                item = resume(iterator, value, error)
            except StopIteration:
                return False
            value = error = None
            if type(item) is bytes:
                write(item)
            elif isinstance(item, Future):
                if not item.done():
                    request.future = item
                    return True
                # Done already: resume here and now. (A done-callback would run inline, in this very thread,
                # while the generator is still executing: the proof of concept's race.)
                value, error = outcome(item)
            elif isinstance(item, bytes):
                write(item)
            else:
                raise _not_bytes(item, request.resp.headers_sent)

    def _resume(self, request: _Request, value: Any, error: BaseException | None) -> Any:
        """The step after a park, with the same error handling as gthread's ``handle``."""
        return self._guarded(
            request, lambda: self._keepalive_after(request.conn, self._serve(request, value, error))
        )

    def _expire(self, request: _Request) -> bool:
        """Answer a request parked past the suspend timeout with 504 and close its response iterable."""
        self.log.warning(
            "%s was parked longer than %s (%g s): answered 504 and its future cancelled",
            request.describe(),
            SUSPEND_TIMEOUT_ENV,
            self.suspend_timeout,
        )
        self._close_iterable(request)
        resp = request.resp
        if not resp.headers_sent:
            message = f"The upstream did not answer within {self.suspend_timeout:g} s."
            try:
                util.write_error(request.conn.sock, 504, "Gateway Timeout", message)
                resp.status = "504 Gateway Timeout"
                resp.response_length = len(message)
                self.log.access(resp, request.req, request.environ, datetime.now() - request.started)
            except OSError:
                self.log.debug("could not send the 504 of %s", request.describe())
        self._post_request(request.req, request.environ, resp)
        return False

    def _abandon(self, request: _Request) -> bool:
        """Close the response iterable of a parked request whose client left; the connection goes too."""
        self.log.debug("client of %s left while it was parked", request.describe())
        self._close_iterable(request)
        self._post_request(request.req, request.environ, request.resp)
        return False

    def _guarded(self, request: _Request, step: Any) -> Any:
        try:
            return step()
        except http.errors.NoMoreData as e:
            self.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            self.log.debug("Closing connection. %s", e)
        except ssl.SSLError as e:
            self.log.debug("SSL error after a park: %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as e:
            self.handle_error(request.req, request.conn.sock, request.conn.client, e)
        return False

    def _close_iterable(self, request: _Request) -> None:
        close = getattr(request.iterable, "close", None)
        request.iterable = request.iterator = None
        if close is not None:
            try:
                request.context.run(close)
            except Exception:
                self.log.exception("Error closing the response of %s", request.describe())

    def _post_request(self, req: Any, environ: dict[str, Any], resp: Any) -> None:
        try:
            self.cfg.post_request(self, req, environ, resp)
        except Exception:
            self.log.exception("Exception in post_request hook")

    def _keepalive_after(self, conn: Any, keepalive: Any) -> Any:
        if isinstance(keepalive, _Park):
            return keepalive  # parked: the body is not read yet, and the main loop owns the connection now
        if keepalive and _forget_read_body(conn):
            return True
        return super()._keepalive_after(conn, keepalive)

    # -- parking ---------------------------------------------------------------------------------------------
    #
    # A park is claimed exactly once, by whichever comes first: its future completing (any thread: resume),
    # the client leaving or the suspend timeout (main thread: answer). Claiming is one atomic dict.pop, so
    # the future's callback can hand the next step straight to the pool, without a detour through the main
    # loop (measured: fewer GIL hand-overs per request). Everything that touches the poller stays on the
    # main thread, in the order the method queue delivers it.

    def _register(self, request: _Request) -> _Park:
        """Record a park (pool thread, the last thing its step does) and watch its future."""
        future = request.future
        assert future is not None
        park = _Park(self, request, future, time.monotonic() + self.suspend_timeout)
        self._parked[park] = None
        self._deadlines.append(park)
        self._unwatched.append(park)
        # Runs inline, in this thread, if the future is done by now: the generator is not executing any more,
        # and this step touches the request no further, so the resume may start on another thread at once.
        future.add_done_callback(park)
        return park

    def enqueue_req(self, conn: Any) -> None:
        self.tpool.submit(self._first_step, conn)

    def _first_step(self, conn: Any) -> None:
        """gthread's ``handle``, then its ``finish_request`` on the main loop, unless the request parked.

        A park needs no word to the main loop now (see ``_watch_due``). The result goes to the main loop as
        it is: the pool makes no future to carry it.
        """
        try:
            result = self.handle(conn)
        except BaseException:
            self.method_queue.defer(self.finish_request, conn, _Done(False))  # closes it, as gthread would
            raise
        if not isinstance(result, _Park):
            self.method_queue.defer(self.finish_request, conn, _Done(result))

    def _claim(self, park: _Park) -> bool:
        return self._parked.pop(park, _GONE) is not _GONE

    def _submit(self, park: _Park, step: Any, *args: Any) -> None:
        try:
            self.tpool.submit(self._next_step, park, step, *args)
        except RuntimeError:  # the pool is shut down: the worker is exiting after its graceful timeout
            self.log.debug("%s not resumed: the worker is exiting", park.request.describe())

    def _next_step(self, park: _Park, step: Any, *args: Any) -> None:
        try:
            result = step(park.request, *args)
        except BaseException:
            self.method_queue.defer(self._finish_park, park, False)
            raise
        self.method_queue.defer(self._finish_park, park, result)

    def _finish_park(self, park: _Park, result: Any) -> None:
        self._unwatch(park)
        if not isinstance(result, _Park):  # parked again (streaming with waits): _watch_due watches it
            self.finish_request(park.request.conn, _Done(result))
        # The park may stay queued in _deadlines behind a longer one: let it hold nothing of the request.
        park.release()

    def _watch_due(self) -> None:
        """Watch the sockets of requests parked for ``WATCH_AFTER`` seconds (main thread).

        Most parks are short: watching each socket at once would cost the main loop a wake-up and two
        ``epoll_ctl`` per request; a client that leaves is noticed ``WATCH_AFTER`` seconds later at worst.
        """
        unwatched = self._unwatched
        limit = time.monotonic() + self.suspend_timeout - WATCH_AFTER  # parked at or before now - WATCH_AFTER
        while unwatched and unwatched[0].deadline <= limit:
            self._watch(unwatched.popleft())

    def _watch(self, park: _Park) -> None:
        """Watch a parked request's socket: readable means its client left (or pipelines its next request)."""
        if park in self._parked and not park.request.watched:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.poller.register(
                    park.request.conn.sock, selectors.EVENT_READ, partial(self._on_readable, park)
                )
                park.request.watched = True

    def _unwatch(self, park: _Park) -> None:
        if not park.over and park.request.watched:
            park.request.watched = False
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.poller.unregister(park.request.conn.sock)

    def _on_readable(self, park: _Park, sock: socket.socket) -> None:
        if park.over:
            # Over already: its step finished earlier in this turn of the loop, in the same batch of events
            # (a client that hangs up as soon as it has its response), and unregistered the socket then.
            return
        try:
            gone = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            gone = True
        if not gone or park not in self._parked:
            # Resumed meanwhile, or the next request of a pipelining client (read after this response: a
            # disconnect is then noticed when the response is written).
            self._unwatch(park)
            return
        if self._claim(park):
            self._unwatch(park)
            park.future.cancel()
            self._submit(park, self._abandon)

    def _expire_parked(self) -> None:
        now = time.monotonic()
        deadlines, parked = self._deadlines, self._parked
        # Every park has the same timeout, so the queue is in deadline order; parks resumed meanwhile leave
        # it here, from its head, rather than staying for the whole suspend timeout (a minute of requests).
        while deadlines and (deadlines[0] not in parked or deadlines[0].deadline <= now):
            park = deadlines.popleft()
            if park.deadline <= now and self._claim(park):
                self._unwatch(park)
                park.future.cancel()
                self._submit(park, self._expire)
        if len(deadlines) > 2 * len(parked) + 64:
            # Ended parks queued behind one still parked (a long poll): drop them now and then, keeping the
            # order (amortised O(1) a park). Pool threads only append at the right, so the first n are ours.
            queued = [deadlines.popleft() for _ in range(len(deadlines))]
            deadlines.extendleft(reversed([park for park in queued if park in parked]))

    def murder_pending(self) -> None:
        # Runs on every turn of gthread's main loop, and of its graceful-shutdown loop: the place for deadlines.
        super().murder_pending()
        self._expire_parked()
        self._watch_due()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        now = time.monotonic()
        if self._deadlines:
            timeout = min(timeout, self._deadlines[0].deadline - now)
        if self._unwatched:
            timeout = min(timeout, self._unwatched[0].deadline - self.suspend_timeout + WATCH_AFTER - now)
        timeout = max(0.0, timeout)
        super().wait_for_and_dispatch_events(timeout)
