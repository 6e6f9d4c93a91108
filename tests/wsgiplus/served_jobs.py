"""A Flask app whose views wait for background jobs with ``yield job.future()`` (served by the WSGI+ tests)."""

from __future__ import annotations

import threading
from collections.abc import Generator
from concurrent.futures import Future
from typing import Any

from flask import Flask

from flask_queue import TaskQueue
from flask_queue.wsgiplus import suspendable

app = Flask(__name__)
tasks = TaskQueue(app, backend="memory://", workers=32)
release = threading.Event()
started = 0
started_lock = threading.Lock()


@tasks.task
def double(n: int) -> int:
    global started
    with started_lock:
        started += 1
    if not release.wait(60):
        raise TimeoutError("the test never released the jobs")
    return n * 2


@tasks.task
def broken() -> None:
    raise ValueError("the job failed")


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/double/<int:n>")
@suspendable
def wait_for_double(n: int) -> Generator[Future[Any], Any, Any]:
    result = yield double.enqueue(n).future()
    return {"n": n, "result": result}


@app.get("/broken")
@suspendable
def wait_for_broken() -> Generator[Future[Any], Any, Any]:
    try:
        yield broken.enqueue().future()
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}


@app.get("/started")
def how_many_started() -> dict[str, int]:
    return {"started": started}


@app.post("/release")
def release_jobs() -> str:
    release.set()
    return "released"
