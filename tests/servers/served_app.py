"""The application the live-server tests run under gunicorn and waitress, in a separate process.

It is loaded by the server as ``served_app:application`` with this folder on ``PYTHONPATH``, never
imported by the tests themselves. ``FLASK_QUEUE_TEST_GATE_DIR`` names a folder of *gates*: a view told to
wait on gate ``G`` blocks until the file ``G`` exists there, which the test creates when it wants the view
to go on. A file works across server processes (gunicorn with two workers) and needs no endpoint of its
own, so releasing never depends on the server having a thread free.

``/`` is a Flask app behind ``RequestQueue``, one lane per behaviour so that tests do not share limits;
``/raw`` is a plain WSGI app behind ``RequestQueueMiddleware`` configured with ``status=429``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, Response, jsonify, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_queue import RequestQueue, RequestQueueMiddleware

if TYPE_CHECKING:
    from flask_queue._types import StartResponse, WSGIApplication, WSGIEnvironment

GATE_DIR = Path(os.environ["FLASK_QUEUE_TEST_GATE_DIR"])
#: A view gives up waiting on its gate after this long, so a test that forgot to release cannot hang a
#: server thread forever; it answers 504 then, which fails the test loudly.
GATE_LIMIT = 30.0
#: Pause between two chunks of the endless stream, and between two looks at a gate's file.
TICK = 0.005

# gate name -> tags of the requests that entered a view waiting on it, in the order they entered.
_entered: dict[str, list[str]] = {}
_entered_lock = threading.Lock()


def _gate_path(gate: str) -> Path:
    if not gate.isalnum():
        raise ValueError(f"bad gate name {gate!r}")
    return GATE_DIR / gate


def gate_open(gate: str) -> bool:
    return _gate_path(gate).exists()


def wait_gate(gate: str) -> bool:
    """Block until the test opens ``gate``; ``False`` when it stayed shut for ``GATE_LIMIT`` seconds."""
    deadline = time.monotonic() + GATE_LIMIT
    while not gate_open(gate):
        if time.monotonic() > deadline:
            return False
        time.sleep(TICK)
    return True


def record(gate: str, tag: str) -> None:
    with _entered_lock:
        _entered.setdefault(gate, []).append(tag)


def held(gate: str) -> Response:
    """Record the request as admitted, wait on its gate, and answer with its tag."""
    tag = request.args.get("tag", "")
    record(gate, tag)
    if not wait_gate(gate):
        return Response(f"gate {gate} never opened\n", status=504)
    return Response(f"{tag}\n", mimetype="text/plain")


def crash_below_the_queue(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Raise out of the WSGI call for ``/crash``: the exception crosses the request queue to the server."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/crash":
            raise RuntimeError("crash below the request queue (expected by the test)")
        return wsgi_app(environ, start_response)

    return app


app = Flask(__name__)
app.wsgi_app = crash_below_the_queue(app.wsgi_app)  # type: ignore[method-assign,assignment]

queue = RequestQueue(app, concurrency=2, max_queue_size=2, queue_timeout=30.0)
queue.lane("reports", concurrency=1, max_queue_size=1)
queue.lane("prio", concurrency=1, max_queue_size=2)
queue.lane("short", concurrency=1, max_queue_size=2, queue_timeout=0.3)
queue.lane("aged", concurrency=1, max_queue_size=1, max_age=2.0)
queue.lane("stream", concurrency=1, max_queue_size=0)
queue.lane("crash", concurrency=1, max_queue_size=0)
queue.lane("gone", concurrency=1, max_queue_size=1)


@queue.classify
def classify(environ: WSGIEnvironment) -> int:
    return int(environ.get("HTTP_X_PRIORITY", "0"))


@app.get("/health")
@queue.exempt
def health() -> str:
    return "ok\n"


@app.get("/stats")
@queue.exempt
def stats() -> Response:
    return jsonify(
        pid=os.getpid(),
        lanes=queue.stats()["lanes"],
        raw=raw.stats()["lanes"],
    )


@app.get("/order/<gate>")
@queue.exempt
def order(gate: str) -> Response:
    with _entered_lock:
        return jsonify(_entered.get(gate, []))


@app.get("/block/<gate>")
def block(gate: str) -> Response:
    return held(gate)


@app.get("/fast")
def fast() -> str:
    return "fast\n"


@app.get("/report/<gate>")
@queue.limit("reports")
def report(gate: str) -> Response:
    return held(gate)


@app.get("/prio/<gate>")
@queue.limit("prio")
def prio(gate: str) -> Response:
    return held(gate)


@app.get("/short/<gate>")
@queue.limit("short")
def short(gate: str) -> Response:
    return held(gate)


@app.get("/gone/<gate>")
@queue.limit("gone")
def gone(gate: str) -> Response:
    return held(gate)


@app.get("/aged")
@queue.limit("aged")
def aged() -> str:
    return "fresh\n"


@app.get("/stream/<gate>")
@queue.limit("stream")
def stream(gate: str) -> Response:
    """Send a first chunk, wait on the gate, send the last chunk."""

    def generate() -> Iterator[bytes]:
        yield b"first\n"
        if wait_gate(gate):
            yield b"last\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/endless/<gate>")
@queue.limit("stream")
def endless(gate: str) -> Response:
    """Stream until the gate opens (or the client goes away); record "closed" when the server closes it."""

    def generate() -> Iterator[bytes]:
        deadline = time.monotonic() + GATE_LIMIT
        try:
            yield b"first\n"
            while not gate_open(gate) and time.monotonic() < deadline:
                time.sleep(TICK)
                yield b"." * 1024
        finally:
            record(gate, "closed")

    return Response(generate(), mimetype="text/plain")


@app.get("/boom")
@queue.limit("crash")
def boom() -> str:
    raise RuntimeError("the view failed (expected by the test)")


@app.get("/crash")
@queue.limit("crash")
def crash() -> str:  # never called: crash_below_the_queue raises first
    return "unreachable\n"


@app.get("/broken-stream")
@queue.limit("crash")
def broken_stream() -> Response:
    def generate() -> Iterator[bytes]:
        yield b"first\n"
        raise RuntimeError("the stream failed (expected by the test)")

    return Response(generate(), mimetype="text/plain")


def raw_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI app: ``/block/<gate>`` waits on the gate, anything else answers at once."""
    path: str = environ.get("PATH_INFO", "")
    if path.startswith("/block/"):
        wait_gate(path.removeprefix("/block/"))
    body = b"raw\n"
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]


raw = RequestQueueMiddleware(raw_app, concurrency=1, max_queue_size=0, status=429)

application = DispatcherMiddleware(app, {"/raw": raw})
