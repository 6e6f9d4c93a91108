"""``/metrics``: the request queue and the task queues in Prometheus's text format, through ``prometheus_client``.

::

    from flask_queue.dashboard.metrics import Metrics

    Metrics(app, path="/metrics")       # QUEUE_METRICS_PATH; needs the extra: pip install flask-queue[metrics]

What it exports, and where each number comes from:

- ``flask_queue_requests_admitted_total{lane}``, ``flask_queue_requests_rejected_total{lane,reason}``,
  ``flask_queue_request_wait_seconds{lane}`` (a histogram of the time admitted requests waited) and the
  gauges ``flask_queue_requests_waiting{lane}`` and ``flask_queue_requests_running{lane}``: counted as they
  happen, from the request queue's signals. Each server process has its own lanes, so these are summed over
  the processes (see below).
- ``flask_queue_jobs{queue,status}``, ``flask_queue_workers``, ``flask_queue_worker_threads`` and
  ``flask_queue_worker_jobs_running``: read from the task backend at scrape time. Every process shares the
  backend, so whichever process answers the scrape gives the same, current numbers. The worker figures are
  the sums of the workers' last heartbeats (one every few seconds); ``flask_queue_jobs{status="running"}`` is
  the backend's count now.
- ``flask_queue_backend_up``: 1 when this scrape read the task backend, 0 when it could not (unreachable,
  failing). Then the families above are left out of the scrape, rather than reported as zeros, and the
  request figures are served as usual: alert on ``flask_queue_backend_up == 0``.

Several processes (gunicorn ``--workers N``): a scrape reaches one of them, so the request figures must be
added up across all. Set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before the server starts (for
example ``PROMETHEUS_MULTIPROC_DIR=/run/app-metrics gunicorn ...``) and ``prometheus_client``'s multiprocess
mode does it: every process writes its counts to files there and the scrape reads them all. Tell it when a
worker exits, in the gunicorn config, so that its gauges stop counting::

    from prometheus_client import multiprocess

    def child_exit(server, worker):
        multiprocess.mark_process_dead(worker.pid)

Keep the endpoint out of the request queue so that it answers under overload: ``queue.exempt(ENDPOINT)``.
Anyone who can reach it sees the queues' names and sizes; serve it on an internal address or protect it
as you would any metrics endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from flask import Response, current_app, request

from .. import _checks, _keys, signals
from ..exceptions import BackendError
from ..tasks import JobStatus
from ._data import log_outage

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "flask_queue.dashboard.metrics needs prometheus_client: pip install flask-queue[metrics]"
    ) from error

if TYPE_CHECKING:
    from flask import Flask

    from ..tasks.backends import Backend

__all__ = ["ENDPOINT", "Metrics"]

#: The endpoint name of the metrics view: ``queue.exempt(ENDPOINT)`` keeps it out of the request queue.
ENDPOINT: Final = "flask_queue_metrics"
DEFAULT_PATH: Final = "/metrics"

#: Seconds; from a request admitted at once to one that waited as long as any default allows.
WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# What a request's environ carries between the signals of its life: the lane it waits in, the lane it runs in.
_WAITING_KEY: Final = "flask_queue.metrics.waiting"
_RUNNING_KEY: Final = "flask_queue.metrics.running"


class Metrics:
    """Serve the queues' figures at ``path`` (``QUEUE_METRICS_PATH``, default ``/metrics``) for Prometheus.

    Raises ``RuntimeError`` if set up twice on one app, ``ConfigurationError`` for a bad path, ``TypeError`` if
    ``app`` is no Flask app. See the module docstring for what it exports.
    """

    def __init__(self, app: Flask | None = None, *, path: str = DEFAULT_PATH) -> None:
        self.path = path
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        _checks.flask_app("Metrics", app)
        _checks.unknown_settings(app, "QUEUE_METRICS_", ["path"])
        if _keys.METRICS in app.extensions:
            raise RuntimeError(f"Metrics are already set up on app {app.name!r}; init_app runs once per app")
        path = _checks.url_path(
            "QUEUE_METRICS_PATH", app.config.setdefault("QUEUE_METRICS_PATH", self.path), example="/metrics"
        )
        recorder = _Recorder(multiprocess=bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")))
        recorder.connect(app)
        app.extensions[_keys.METRICS] = recorder
        app.add_url_rule(path, endpoint=ENDPOINT, view_func=_metrics_view, methods=["GET"])


class _Recorder:
    """One app's request-queue metrics, fed by the signals whose sender is that app."""

    def __init__(self, *, multiprocess: bool) -> None:
        self.multiprocess = multiprocess
        # Not in prometheus_client's global registry: each app has its own, and tests make many apps. In
        # multiprocess mode the values go to this process's files whatever the registry.
        self.admitted = Counter(
            "flask_queue_requests_admitted", "Requests given a slot in their lane.", ["lane"], registry=None
        )
        self.rejected = Counter(
            "flask_queue_requests_rejected",
            "Requests answered with a rejection, by reason.",
            ["lane", "reason"],
            registry=None,
        )
        self.wait = Histogram(
            "flask_queue_request_wait_seconds",
            "Time admitted requests waited in their lane.",
            ["lane"],
            buckets=WAIT_BUCKETS,
            registry=None,
        )
        self.waiting = Gauge(
            "flask_queue_requests_waiting",
            "Requests waiting for a slot.",
            ["lane"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.running = Gauge(
            "flask_queue_requests_running",
            "Requests holding a slot.",
            ["lane"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.registry = CollectorRegistry()
        if multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            for metric in (self.admitted, self.rejected, self.wait, self.waiting, self.running):
                self.registry.register(metric)

    def connect(self, app: Flask) -> None:
        # Strong references (weak=False): the recorder lives as long as the app, whose death disconnects them.
        signals.request_queued.connect(self._queued, sender=app, weak=False)
        signals.request_admitted.connect(self._admitted, sender=app, weak=False)
        signals.request_rejected.connect(self._rejected, sender=app, weak=False)
        app.teardown_request(self._finished)

    def _queued(self, sender: object, *, lane: str, environ: dict[str, Any], **extra: Any) -> None:
        environ[_WAITING_KEY] = lane
        self.waiting.labels(lane).inc()

    def _admitted(
        self, sender: object, *, lane: str, wait: float, environ: dict[str, Any], **extra: Any
    ) -> None:
        if environ.pop(_WAITING_KEY, None) is not None:
            self.waiting.labels(lane).dec()
        self.admitted.labels(lane).inc()
        self.wait.labels(lane).observe(wait)
        environ[_RUNNING_KEY] = lane
        self.running.labels(lane).inc()

    def _rejected(
        self, sender: object, *, lane: str, reason: str, environ: dict[str, Any], **extra: Any
    ) -> None:
        if environ.pop(_WAITING_KEY, None) is not None:
            self.waiting.labels(lane).dec()
        self.rejected.labels(lane, reason).inc()

    def _finished(self, error: BaseException | None) -> None:
        # The view is done: its slot is handed back as the response closes (a streamed body keeps it a while
        # longer; the gauge counts requests in the app).
        lane = request.environ.pop(_RUNNING_KEY, None)
        if lane is not None:
            self.running.labels(lane).dec()


class _Exposition(Collector):
    """The collector of one scrape: the request metrics, then the task backend read now."""

    def __init__(self, recorder: _Recorder, backend: Backend | None) -> None:
        self._recorder = recorder
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        yield from self._recorder.registry.collect()
        if self._backend is None:
            return
        try:
            # Read it all before yielding any: a backend that fails halfway leaves out every task family.
            families = self._task_families(self._backend)
        except BackendError as error:
            log_outage("/metrics", self._backend.url, error)
            families = []
        yield GaugeMetricFamily(
            "flask_queue_backend_up",
            "1 if this scrape read the task backend, 0 if it could not (its families are then left out).",
            value=1 if families else 0,
        )
        yield from families

    @staticmethod
    def _task_families(backend: Backend) -> list[Metric]:
        jobs = GaugeMetricFamily(
            "flask_queue_jobs", "Jobs in the task backend, by queue and status.", labels=["queue", "status"]
        )
        for queue, counts in sorted(backend.counts().items()):
            for status in JobStatus:
                jobs.add_metric([queue, str(status)], counts.get(str(status), 0))
        workers = backend.workers()
        return [
            jobs,
            GaugeMetricFamily(
                "flask_queue_workers", "Task workers alive (a heartbeat within its ttl).", value=len(workers)
            ),
            GaugeMetricFamily(
                "flask_queue_worker_threads",
                "Threads of the task workers alive.",
                value=sum(worker.threads for worker in workers),
            ),
            GaugeMetricFamily(
                "flask_queue_worker_jobs_running",
                "Jobs the task workers alive are running, as of their last heartbeats.",
                value=sum(worker.running for worker in workers),
            ),
        ]


def _metrics_view() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    recorder: _Recorder = app.extensions[_keys.METRICS]
    state = app.extensions.get(_keys.TASKS)
    # Through the extension, not ``state.backend``: it reopens the backend in a child after a fork.
    backend = None if state is None else state.extension.backend(app)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exposition(recorder, backend))
    response = Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response
