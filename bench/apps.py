"""The applications the benchmarks serve, built by factories that gunicorn can call with literal arguments.

gunicorn loads them as ``bench.apps:hello_app(mode='middleware')``; the waitress launcher in
``bench._servers`` calls the same factories, so every server runs exactly the same code.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request

from flask_queue import EXEMPT, RequestQueue, RequestQueueMiddleware
from flask_queue._types import StartResponse, WSGIEnvironment

#: The header the priority benchmark sets on its important class.
PRIORITY_HEADER = "X-Priority"
PRIORITY_ENVIRON_KEY = "HTTP_X_PRIORITY"

#: ``mode`` values of ``hello_app``.
HELLO_MODES = ("plain", "middleware", "extension")


def trivial_wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The smallest useful WSGI application: the baseline of the in-process overhead figure."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def hello_app(mode: str = "plain") -> Any:
    """A Flask hello world; ``mode`` adds the request queue as bare middleware or as the Flask extension.

    The middleware is sized so it never rejects under a 4-thread server (``concurrency=4``, the default
    queue). The extension variant defines a lane used by one view, so lane routing runs on every request,
    including those to ``/``, which go to the default lane.
    """
    if mode not in HELLO_MODES:
        raise ValueError(f"mode must be one of {HELLO_MODES}, got {mode!r}")
    app = Flask("bench_hello")
    queue: RequestQueue | None = None
    if mode == "extension":
        queue = RequestQueue(app, concurrency=4)
        queue.lane("slow", concurrency=1)

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    def slow() -> str:
        return "slow"

    # The same route exists in every mode, so only the extension differs between the compared apps.
    app.get("/slow")(slow if queue is None else queue.limit("slow")(slow))

    if mode == "middleware":
        app.wsgi_app = RequestQueueMiddleware(app.wsgi_app, concurrency=4)  # type: ignore[method-assign]
    return app


def burn(loops: int) -> int:
    """Spend CPU in pure Python, holding the GIL as a real CPU-bound view does."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def calibrate(target_ms: float, repeats: int = 7) -> int:
    """How many ``burn`` loops take ``target_ms`` milliseconds here (median of ``repeats`` timings)."""
    probe = 200_000
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        burn(probe)
        timings.append(time.perf_counter() - started)
    timings.sort()
    per_loop = timings[len(timings) // 2] / probe
    return max(1, round(target_ms / 1000.0 / per_loop))


def _by_priority_header(environ: WSGIEnvironment) -> int:
    # The important class is 0 (served first); everything else is 1.
    return 0 if environ.get(PRIORITY_ENVIRON_KEY) == "high" else 1


def _stats_exempt(environ: WSGIEnvironment) -> Any:
    # The stats must be readable while every slot is taken; all else goes to the default lane.
    return EXEMPT if environ.get("PATH_INFO") == "/_bench/stats" else None


def cpu_app(
    loops: int,
    queue: bool = False,
    concurrency: int = 1,
    max_queue_size: int = 4,
    queue_timeout: float = 0.5,
    priority: bool = False,
    switch_interval: float | None = None,
) -> Any:
    """A Flask app whose ``/work`` view burns ``loops`` loops; ``queue`` puts the request queue in front.

    ``switch_interval`` sets the server process's ``sys.setswitchinterval`` (how long a thread may hold the
    GIL while another waits; Python's default is 5 ms).

    ``/ping`` is cheap (readiness checks). ``/_bench/stats`` returns the request queue's own figures, read
    after a run to show why requests were rejected; it is exempt from the queue. ``/_bench/hold`` sleeps
    ``seconds`` holding a slot, so that every other request is rejected (to measure what a rejection costs).
    """
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    app = Flask("bench_cpu")
    middleware: RequestQueueMiddleware | None = None

    @app.get("/work")
    def work() -> str:
        return str(burn(loops) & 0xFF)

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    @app.get("/_bench/stats")
    def stats() -> dict[str, Any]:
        return {} if middleware is None else middleware.stats()

    @app.get("/_bench/hold")
    def hold() -> str:
        time.sleep(float(request.args.get("seconds", "30")))
        return "held"

    if queue:
        classify: Callable[[WSGIEnvironment], int] | None = _by_priority_header if priority else None
        middleware = RequestQueueMiddleware(
            app.wsgi_app,
            concurrency=concurrency,
            max_queue_size=max_queue_size,
            queue_timeout=queue_timeout,
            classify=classify,
            select_lane=_stats_exempt,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
    return app
