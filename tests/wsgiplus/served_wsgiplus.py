"""The application the WSGI+ tests serve: raw WSGI+ apps under ``/raw/``, Flask views everywhere else.

Futures come from three places: ``run_async(asyncio.sleep(...))`` on the process's event loop (timed waits),
``in_thread``, and *gates*: a future per name, kept in this process, that the test resolves, fails or cancels
with a request (``/gate/<name>/open``), and whose fate it can read (``/gate/<name>/state``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import CancelledError, Future
from typing import Any

from flask import Flask, g, jsonify, request

from flask_queue import RequestQueue
from flask_queue._types import StartResponse, WSGIApplication, WSGIEnvironment
from flask_queue.wsgiplus import in_thread, is_wsgi_plus, run_async, suspendable

_gates: dict[str, Future[Any]] = {}
_gates_lock = threading.Lock()
_events: list[str] = []
_sleeping = 0


class _Token:
    """Put in a request's environ: alive as long as something of the served request is kept."""


_tokens: weakref.WeakSet[_Token] = weakref.WeakSet()


def gate(name: str) -> Future[Any]:
    """The future named ``name`` (made on first use)."""
    with _gates_lock:
        return _gates.setdefault(name, Future())


async def _sleep(seconds: float, value: Any) -> Any:
    await asyncio.sleep(seconds)
    return value


def later(seconds: float, value: Any = None) -> Future[Any]:
    """A future that resolves to ``value`` after ``seconds``, on the process's event loop."""
    return run_async(_sleep(seconds, value))


async def _fail_later(seconds: float) -> None:
    await asyncio.sleep(seconds)
    raise ValueError("upstream failed")


def _seconds(environ: WSGIEnvironment, default: float = 0.3) -> float:
    query = environ.get("QUERY_STRING", "")
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "s":
            return float(value)
    return default


# -- raw WSGI+ applications (no Flask) -----------------------------------------------------------------------


def rfc_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """The seed RFC's example, waiting ``?s=`` seconds: yield a Future, then ``start_response``."""
    waited = yield later(_seconds(environ), "waited")
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield f"Hi! {waited} {environ.get('REMOTE_PORT')} {environ.get('wsgi_plus.version')}\n".encode()


def raising_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """A future that fails: handled with try/except around the yield (``?handle=1``), or not (500)."""
    try:
        yield run_async(_fail_later(0.1))
    except ValueError as error:
        if "handle=1" not in environ.get("QUERY_STRING", ""):
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield f"handled: {error}".encode()


def cancelled_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """A future cancelled while parked: ``CancelledError`` is thrown in; unhandled unless ``?handle=1``."""
    future = gate(environ["QUERY_STRING"].split("name=")[1].split("&")[0])
    try:
        yield future
    except CancelledError:
        if "handle=1" not in environ.get("QUERY_STRING", ""):
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"cancelled"


def done_app(environ: WSGIEnvironment, start_response: StartResponse) -> Generator[Any, Any, None]:
    """A future that is done before it is yielded, many times over: resumed at once, never racing."""
    total = 0
    for n in range(100):
        future: Future[int] = Future()
        future.set_result(n)
        total += yield future
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield str(total).encode()


def stream_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """Streaming with waits: Futures yielded after the headers are out park the request too."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"a"
    yield later(0.2)
    yield b"b"
    yield later(0.2)
    yield b"c"


def bad_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """Yields neither bytes nor a Future before ``start_response``: a 500 and a clear log line."""
    yield 42


def gate_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """Parks on the gate named in the path until the test resolves it (or the suspend timeout)."""
    name = environ["PATH_INFO"].rsplit("/", 1)[1]
    try:
        value = yield gate(name)
    finally:
        _events.append(f"closed {name}")
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield f"gate {name}: {value}".encode()


def long_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """A first chunk longer than the Content-Length it announced (after a park): the server cuts it."""
    yield later(0.05)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    yield b"abcdef"


def empty_first_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """An empty first chunk, a park, then the body: the headers go out before the park."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    yield b""
    yield gate(environ["QUERY_STRING"].split("name=")[1])
    yield b"xyz"


def exit_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[Any]:
    """Raises ``SystemExit`` in a request thread: the connection closes unanswered, the thread serves on."""
    raise SystemExit(3)


RAW: dict[str, Callable[[WSGIEnvironment, StartResponse], Iterable[Any]]] = {
    "/raw/long": long_app,
    "/raw/empty-first": empty_first_app,
    "/raw/exit": exit_app,
    "/raw/rfc": rfc_app,
    "/raw/raise": raising_app,
    "/raw/cancelled": cancelled_app,
    "/raw/done": done_app,
    "/raw/stream": stream_app,
    "/raw/bad": bad_app,
}


class RawRoutes:
    """Sends ``/raw/...`` to the raw apps above and everything else to Flask (a middleware in between)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/raw/gate/"):
            return gate_app(environ, start_response)
        raw = RAW.get(path)
        if raw is not None:
            return raw(environ, start_response)
        return self.app(environ, start_response)


# -- the Flask application ------------------------------------------------------------------------------------

app = Flask(__name__)
app.secret_key = "test"
queue = RequestQueue(app, concurrency=1000, max_queue_size=1000)
queue.lane("one", concurrency=1, max_queue_size=50, queue_timeout=30.0)
queue.lane("short", concurrency=1, max_queue_size=5, queue_timeout=0.5)
app.wsgi_app = RawRoutes(app.wsgi_app)  # type: ignore[method-assign]


@app.before_request
def mark() -> None:
    g.marked = request.path


@app.after_request
def after(response: Any) -> Any:
    # Runs once the view has returned (after the park), with the request's own g.
    response.headers["X-After"] = f"{g.get('marked')} {g.get('resumed', '-')}"
    return response


@app.teardown_request
def teardown(error: BaseException | None) -> None:
    _events.append(f"teardown {request.path}")


@app.get("/health")
@queue.exempt
def health() -> Any:
    return {"ok": True, "pid": os.getpid(), "wsgi_plus": is_wsgi_plus(request.environ)}


async def _loop_class() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


@app.get("/flask/loop")
@queue.exempt
async def loop_view() -> Any:
    """The class of the event loop that async views and ``run_async`` run on."""
    return {"view": await _loop_class(), "run_async": await asyncio.wrap_future(run_async(_loop_class()))}


@app.get("/stats")
@queue.exempt
def stats() -> Any:
    return queue.stats()


@app.get("/events")
@queue.exempt
def events() -> Any:
    return jsonify(_events)


@app.post("/gate/<name>/<action>")
@queue.exempt
def gate_action(name: str, action: str) -> Any:
    future = gate(name)
    if action == "open":
        future.set_result(request.args.get("value", "opened"))
    elif action == "fail":
        future.set_exception(ValueError(f"gate {name} failed"))
    elif action == "cancel":
        future.cancel()
    return {"ok": True}


@app.get("/gates")
@queue.exempt
def gates() -> Any:
    with _gates_lock:
        return jsonify(sorted(_gates))


@app.get("/sleeping")
@queue.exempt
def sleeping() -> Any:
    return {"sleeping": _sleeping}


@app.get("/gate/<name>/state")
@queue.exempt
def gate_state(name: str) -> Any:
    future = gate(name)
    return {"done": future.done(), "cancelled": future.cancelled()}


@app.post("/flask/read")
@queue.exempt
def read_body() -> Any:
    return f"read {len(request.get_data())}"


@app.get("/flask/undecorated")  # type: ignore[type-var]  # the mistake under test
@queue.exempt
def undecorated() -> Generator[Future[Any], Any, Any]:
    """Yields a Future without @suspendable: a mistake, which must not answer 200."""
    value = yield later(0.05, "value")
    return value


# @suspendable above the route decorator, a mistake: Flask registered the undecorated function.
@suspendable  # type: ignore[type-var]
@app.get("/flask/decorator-above")
@queue.exempt
def decorator_above() -> Generator[Future[Any], Any, Any]:
    value = yield later(0.05, "value")
    return value


@app.post("/flask/unread")
@queue.exempt
@suspendable
def unread_body() -> Generator[Future[Any], Any, Any]:
    """Parks, then answers without reading the request's body (the server drains it)."""
    yield later(0.05)
    return "unread"


@app.get("/flask/context")
@queue.exempt
@suspendable
def context_view() -> Generator[Future[Any], Any, Any]:
    g.before = request.args.get("tag")
    before = threading.get_ident()
    first = yield later(0.2, "first")
    second = yield in_thread(lambda: f"second for {request.args.get('tag')}")
    g.resumed = "yes"
    return {
        "tag": request.args.get("tag"),
        "g": g.before,
        "marked": g.marked,
        "values": [first, second],
        "path": request.path,
        "same_thread": before == threading.get_ident(),
    }


@app.get("/flask/done")
@queue.exempt
@suspendable
def done_view() -> Generator[Future[Any], Any, Any]:
    future: Future[str] = Future()
    future.set_result("ready")
    value = yield future
    return {"value": value}


@app.get("/flask/raise")
@queue.exempt
@suspendable
def raise_view() -> Generator[Future[Any], Any, Any]:
    try:
        yield run_async(_fail_later(0.1))
    except ValueError as error:
        if request.args.get("handle"):
            return {"handled": str(error)}
        raise
    return {"unreachable": True}


@app.get("/flask/cancelled/<name>")
@queue.exempt
@suspendable
def cancelled_view(name: str) -> Generator[Future[Any], Any, Any]:
    try:
        yield gate(name)
    except CancelledError:
        return {"cancelled": True}
    return {"cancelled": False}


@app.get("/flask/gate/<name>")
@queue.exempt
@suspendable
def gate_view(name: str) -> Generator[Future[Any], Any, Any]:
    value = yield gate(name)
    return {"gate": name, "value": value}


@app.get("/flask/sleep")
@queue.exempt
@suspendable
def sleep_view() -> Generator[Future[Any], Any, Any]:
    global _sleeping
    future = later(float(request.args.get("s", "1")))
    with _gates_lock:
        _sleeping += 1
    try:
        yield future
    finally:
        with _gates_lock:
            _sleeping -= 1
    return {"slept": True}


@app.get("/flask/tracked")
@queue.exempt
@suspendable
def tracked_view() -> Generator[Future[Any], Any, Any]:
    token = request.environ["tests.token"] = _Token()
    _tokens.add(token)
    del token
    yield later(0.05)
    return "tracked"


@app.get("/kept")
@queue.exempt
def kept() -> Any:
    """How many tracked requests are still in memory after a collection, and how many parks the worker's
    queues (deques) still hold. (A gate's future keeps its park among its callbacks: that is the app's.)
    """
    from flask_queue.wsgiplus.gunicorn import _Park

    gc.collect()
    parks = [thing for thing in gc.get_objects() if type(thing) is _Park]
    queued = sum(1 for park in parks if any(type(holder) is deque for holder in gc.get_referrers(park)))
    return {"requests": len(_tokens), "parks": queued}


@app.get("/flask/async")
@queue.exempt
async def async_view() -> Any:
    await asyncio.sleep(float(request.args.get("s", "0.2")))
    return {"async": True, "tag": request.args.get("tag"), "marked": g.marked}


@app.get("/queued/<name>")
@queue.limit("one")
@suspendable
def queued_view(name: str) -> Generator[Future[Any], Any, Any]:
    value = yield gate(name)
    return {"gate": name, "value": value}


@app.get("/short/<name>")
@queue.limit("short")
@suspendable
def short_view(name: str) -> Generator[Future[Any], Any, Any]:
    value = yield gate(name)
    return {"gate": name, "value": value}
