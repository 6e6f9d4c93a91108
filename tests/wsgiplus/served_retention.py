"""The app of tests/wsgiplus/test_retention.py: what of a request stays in memory after it ends.

An outermost middleware puts a token in every request's environ and in a ContextVar of the request's
context (as a logging or tracing middleware binds its request there); ``_tokens`` holds them weakly, so
``len(_tokens)`` after a collection counts the requests something still keeps.

A monitor thread answers that count without a request: the test writes ``<dir>/probe`` and reads
``<dir>/count`` (``RETENTION_PROBE_DIR``), so that what the request threads keep between two requests is not
disturbed by a request that asks.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import threading
import time
import weakref
from collections.abc import Generator, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from flask import Flask, request

from flask_queue import RequestQueue
from flask_queue._types import StartResponse, WSGIApplication, WSGIEnvironment
from flask_queue.wsgiplus import in_thread, run_async, suspendable


class _Token:
    """Alive as long as something of the served request is kept."""


_tokens: weakref.WeakSet[_Token] = weakref.WeakSet()
_current: contextvars.ContextVar[_Token | None] = contextvars.ContextVar("retention_token", default=None)
_gates: dict[str, Future[Any]] = {}
_gates_lock = threading.Lock()


def gate(name: str) -> Future[Any]:
    with _gates_lock:
        return _gates.setdefault(name, Future())


def count() -> int:
    gc.collect()
    return len(_tokens)


class Track:
    """Outermost: a token per request, in its environ and in a ContextVar of its context."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/tracked/"):
            token = environ["retention.token"] = _Token()
            _tokens.add(token)
            _current.set(token)
            del token
        return self.app(environ, start_response)


def _monitor(directory: Path) -> None:
    probe, out = directory / "probe", directory / "count"
    while True:
        if probe.exists():
            probe.unlink()
            tmp = directory / "count.tmp"
            tmp.write_text(str(count()))
            tmp.replace(out)
        time.sleep(0.05)


if os.environ.get("RETENTION_PROBE_DIR"):
    threading.Thread(
        target=_monitor,
        args=(Path(os.environ["RETENTION_PROBE_DIR"]),),
        name="retention-monitor",
        daemon=True,
    ).start()


app = Flask(__name__)
queue = RequestQueue(app, concurrency=1000, max_queue_size=1000)
queue.lane("one", concurrency=1, max_queue_size=50, queue_timeout=30.0)


def _fail() -> None:
    raise ValueError("upstream failed")


@app.get("/health")
@queue.exempt
def health() -> Any:
    return {"ok": True, "pid": os.getpid()}


async def _arm(seconds: float) -> None:
    # A timer of the app's own on the process's event loop, in no request's context (a connection pool's
    # clean-up timer, say): it sits at the head of the loop's heap of timers until it is due.
    asyncio.get_running_loop().call_later(seconds, lambda: None, context=contextvars.Context())


@app.post("/arm-timer")
@queue.exempt
def arm_timer() -> Any:
    run_async(_arm(float(request.args.get("s", "20")))).result(5)
    return {"ok": True}


@app.post("/gate/<name>/open")
@queue.exempt
def gate_open(name: str) -> Any:
    gate(name).set_result("opened")
    return {"ok": True}


@app.get("/tracked/failed")
@queue.exempt
@suspendable
def tracked_failed() -> Generator[Future[Any], Any, Any]:
    """An upstream call that fails, handled by the view (a common pattern)."""
    try:
        yield in_thread(_fail)
    except ValueError:
        return "handled"
    return "unreachable"


@app.get("/tracked/queued/<name>")
@queue.limit("one")
@suspendable
def tracked_queued(name: str) -> Generator[Future[Any], Any, Any]:
    value = yield gate(name)
    return {"gate": name, "value": value}


app.wsgi_app = Track(app.wsgi_app)  # type: ignore[method-assign]
