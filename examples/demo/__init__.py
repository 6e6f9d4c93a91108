"""The Flask-Queue demo: the request queue and the task queue at work, on one page, and the dashboard.

``make demo`` (or ``python -m examples.demo``) serves it with waitress on http://127.0.0.1:5000/.

The seed's "add work": each click of **Add work** enqueues a few jobs of about a second into the task queue
(the embedded default, a SQLite file in the instance folder), and two worker threads in the server process
burn them down; the page shows the waiting count grow and fall. **Add a failing job** enqueues one that
raises, to retry from the dashboard at ``/queue/`` (served to clients on this machine only). ``/metrics``
has the same figures for Prometheus.

The page also fires bursts of requests at two endpoints and shows, live, what the request queue does with
them:

- ``/slow`` (1 s of work) is in the default lane: 4 run at once, 10 wait, the rest are answered 503 at
  once, and a request that waited 2.5 s is answered 503 too. Each 503 carries ``Retry-After``.
- ``/report`` (2 s of work) is in the ``reports`` lane: one at a time, 5 waiting, up to 9 s of waiting.
  A burst of reports leaves ``/slow`` alone: each lane has its own slots and line.
- A request sent with ``X-Priority: high`` (or ``?priority=high``) is served before the others, and when the
  line is full it takes the place of the newest ordinary waiter, which is answered 503 ``shed``.
- ``/health``, ``/api/stats`` (``queue.stats()`` as JSON), ``/api/tasks``, the page, its static files,
  the dashboard and ``/metrics`` are exempt: they answer at once even while every lane is full.

``create_app()`` takes the limits and durations as arguments, so tests can make them small, and ``work``, a
function called with the endpoint's name in place of the sleep, so tests can hold requests in a view. The
task queue's backend URL, its worker threads and a job's duration are arguments too.
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections.abc import Callable
from typing import Any, Final

from flask import Flask, Response, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from flask_queue import Dashboard, JobStatus, RequestQueue, TaskQueue
from flask_queue.dashboard.metrics import ENDPOINT as METRICS_ENDPOINT
from flask_queue.dashboard.metrics import Metrics

from ._bursts import MAX_BURST, BurstRefused, Bursts

__all__ = ["SELF_URL_KEY", "TARGETS", "WORK_BATCH", "bursts_of", "classify", "create_app", "on_this_machine"]

#: What the page can fire bursts at: name -> (path, lane).
TARGETS: Final = {"slow": ("/slow", "default"), "report": ("/report", "reports")}

#: ``app.config`` key of the base URL bursts are sent to (the server's own address; set by ``__main__``).
#: Unset, bursts go to the URL the page was loaded from.
SELF_URL_KEY: Final = "DEMO_SELF_URL"
_BURSTS_KEY: Final = "flask-queue-demo.bursts"

_PRIORITIES: Final = {"high": 0, "normal": 1, "low": 2}

#: Jobs one click of "Add work" enqueues.
WORK_BATCH: Final = 5


def on_this_machine() -> bool:
    """The dashboard's ``authorize``: a client on this machine (the demo listens on 127.0.0.1 by default).

    A real app asks its login instead, e.g. ``lambda: current_user.is_authenticated and current_user.is_admin``.
    """
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def classify(environ: dict[str, Any]) -> int:
    """Priority class from ``X-Priority`` or ``?priority=``: high 0, normal 1 (the default), low 2.

    A real app would trust only what it sets itself (a plan, an authenticated role), never a client's word.
    """
    value = environ.get("HTTP_X_PRIORITY")
    if value is None:
        for pair in environ.get("QUERY_STRING", "").split("&"):
            key, _, found = pair.partition("=")
            if key == "priority":
                value = found
                break
    return _PRIORITIES.get((value or "").strip().lower(), _PRIORITIES["normal"])


def create_app(
    *,
    concurrency: int = 4,
    max_queue_size: int = 10,
    queue_timeout: float = 2.5,
    report_concurrency: int = 1,
    report_max_queue_size: int = 5,
    report_queue_timeout: float = 9.0,
    slow_seconds: float = 1.0,
    report_seconds: float = 2.0,
    work: Callable[[str], object] | None = None,
    task_backend: str | None = None,
    task_workers: int = 2,
    task_seconds: float = 1.0,
    task_work: Callable[[int], object] | None = None,
) -> Flask:
    """The demo app. The first three arguments are the default lane's limits, the next three the reports lane's.

    :param slow_seconds: how long ``/slow`` works (sleeps).
    :param report_seconds: how long ``/report`` works.
    :param work: called as ``work("slow")`` or ``work("report")`` instead of sleeping.
    :param task_backend: the task queue's URL (default: SQLite in the instance folder).
    :param task_workers: worker threads in the server process.
    :param task_seconds: how long a job of "Add work" works (sleeps).
    :param task_work: called with the job's number instead of sleeping.
    """
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    tasks = TaskQueue(app, backend=task_backend, workers=task_workers)

    @tasks.task(name="demo.work")
    def background_work(number: int) -> str:
        if task_work is None:
            time.sleep(task_seconds)
        else:
            task_work(number)
        return f"job {number} done"

    @tasks.task(name="demo.fail")
    def failing_work(note: str) -> None:
        # The note carries markup on purpose: the dashboard shows it as text.
        raise ValueError(f"this job always fails ({note})")

    queue = RequestQueue(
        app,
        concurrency=concurrency,
        max_queue_size=max_queue_size,
        queue_timeout=queue_timeout,
        classify=classify,
    )
    queue.lane(
        "reports",
        concurrency=report_concurrency,
        max_queue_size=report_max_queue_size,
        queue_timeout=report_queue_timeout,
    )
    durations = {"slow": slow_seconds, "report": report_seconds}
    do_work = work if work is not None else (lambda endpoint: time.sleep(durations[endpoint]))
    bursts = Bursts()
    app.extensions[_BURSTS_KEY] = bursts

    def done(endpoint: str, lane: str) -> Response:
        started = time.monotonic()
        do_work(endpoint)
        return jsonify(
            lane=lane,
            priority=classify(request.environ),
            worked_ms=round((time.monotonic() - started) * 1000.0),
        )

    @app.get("/slow")
    def slow() -> Response:
        return done("slow", "default")

    @app.get("/report")
    @queue.limit("reports")
    def report() -> Response:
        return done("report", "reports")

    @app.get("/health")
    @queue.exempt
    def health() -> Response:
        return jsonify(status="ok")

    @app.get("/api/stats")
    @queue.exempt
    def stats() -> Response:
        return _no_store(jsonify(queue.stats()))

    @app.get("/api/bursts")
    @queue.exempt
    def recent_bursts() -> Response:
        return _no_store(jsonify(bursts=bursts.recent()))

    @app.post("/api/bursts")
    @queue.exempt
    def start_burst() -> ResponseReturnValue:
        # Only JSON: a cross-site form cannot send it without a CORS preflight, which this app never allows.
        if not request.is_json:
            return jsonify(error='send JSON: {"target": ..., "size": ...}'), 415
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify(error="the body must be a JSON object"), 400
        target, size, important = (
            data.get("target"),
            data.get("size"),
            data.get("important", False),
        )
        if target not in TARGETS:
            return jsonify(error=f"target must be one of {', '.join(TARGETS)}"), 400
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BURST:
            return jsonify(error=f"size must be a whole number from 1 to {MAX_BURST}"), 400
        if not isinstance(important, bool):
            return jsonify(error="important must be true or false"), 400
        base_url = app.config.get(SELF_URL_KEY) or request.host_url
        try:
            burst = bursts.start(base_url, target, TARGETS[target][0], size, important)
        except BurstRefused as refused:
            return jsonify(error=str(refused)), 409
        return jsonify(burst.as_dict()), 202

    numbers = itertools.count(1)

    @app.post("/api/work")
    @queue.exempt
    def add_work() -> ResponseReturnValue:
        # JSON only, as for bursts: a cross-site form cannot post it.
        if not request.is_json:
            return jsonify(error='send JSON: {"fail": false}'), 415
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("fail", False), bool):
            return jsonify(error='the body must be {"fail": true} or {"fail": false}'), 400
        if data.get("fail"):
            jobs = [failing_work.enqueue("<b>not bold</b>")]
        else:
            jobs = background_work.enqueue_many([((next(numbers),), {}) for _ in range(WORK_BATCH)])
        return jsonify(jobs=[job.id for job in jobs]), 202

    @app.get("/api/tasks")
    @queue.exempt
    def task_counts() -> Response:
        totals = dict.fromkeys(map(str, JobStatus), 0)
        for counts in tasks.stats()["queues"].values():
            for status, count in counts.items():
                totals[status] += count
        return _no_store(jsonify(totals))

    dashboard = Dashboard(app, url_prefix="/queue", authorize=on_this_machine, refresh=1.0)
    queue.exempt(dashboard.blueprint)
    Metrics(app, path="/metrics")
    queue.exempt(METRICS_ENDPOINT)

    @app.get("/")
    @queue.exempt
    def index() -> str:
        lanes = queue.stats()["lanes"]
        return render_template(
            "index.html",
            targets=[
                {
                    "name": name,
                    "path": path,
                    "lane": lane,
                    "seconds": durations[name],
                    "limits": lanes[lane]["limits"],
                }
                for name, (path, lane) in TARGETS.items()
            ],
            sizes=(5, 20, 50),
            work_batch=WORK_BATCH,
            task_seconds=task_seconds,
            task_workers=task_workers,
        )

    queue.exempt("static")  # Flask's own static view, by endpoint: the page's CSS and JS load during a burst

    @app.after_request
    def headers(response: Response) -> Response:
        # The page uses no inline script or style and nothing from elsewhere.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return app


def bursts_of(app: Flask) -> Bursts:
    """The demo's burst registry (tests wait on bursts through it)."""
    bursts: Bursts = app.extensions[_BURSTS_KEY]
    return bursts


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
