"""The app ``test_metrics`` serves with gunicorn: a request lane, a SQLite task queue and ``/metrics``.

``FLASK_QUEUE_TEST_DB`` names the SQLite file. ``GET /work`` answers this process's id through lane "work";
``POST /enqueue/<n>`` enqueues ``n`` jobs (no worker runs them).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from flask_queue import RequestQueue, TaskQueue
from flask_queue.dashboard.metrics import ENDPOINT, Metrics

application = Flask(__name__)
queue = RequestQueue(application, concurrency=4, max_queue_size=8)
queue.lane("work", concurrency=4, max_queue_size=8)
tasks = TaskQueue(application, backend=f"sqlite:///{os.environ['FLASK_QUEUE_TEST_DB']}", workers=0)
Metrics(application)
queue.exempt(ENDPOINT)


@tasks.task(name="metrics_app.noop")
def noop() -> None:
    """Never runs: the test counts waiting jobs."""


@application.get("/health")
@queue.exempt
def health() -> ResponseReturnValue:
    return jsonify(status="ok")


@application.get("/work")
@queue.limit("work")
def work() -> ResponseReturnValue:
    return jsonify(pid=os.getpid())


@application.post("/enqueue/<int:count>")
@queue.exempt
def enqueue(count: int) -> ResponseReturnValue:
    noop.enqueue_many([((), {})] * count)
    return jsonify(enqueued=count)
