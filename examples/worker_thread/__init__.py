"""The seed's worker-thread demo, made safe: ``flask --app examples.worker_thread run --debug``.

The seed started a worker thread before Flask and shared an in-memory queue with the request handlers. It
broke under the debug reloader and uWSGI, and lost the queue on every restart. Here the queue is a SQLite file
in the instance folder, worker threads start in the process that serves (never in the reloader's parent), and
the page shows how many jobs wait. Click "add work" a few times and watch the count grow, then reload the page
and watch it burn down; restart the server in between and nothing is lost.
"""

from __future__ import annotations

import time

from flask import Flask, redirect, url_for
from markupsafe import escape
from werkzeug.wrappers import Response

from flask_queue import TaskQueue

#: Seconds each pretend job works.
WORK_SECONDS = 2.0


def create_app(config: dict[str, object] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(TASK_QUEUE_WORKERS=1)
    app.config.update(config or {})
    tasks = TaskQueue(app)

    @tasks.task
    def pretend_work(seconds: float) -> str:
        time.sleep(seconds)
        return f"worked {seconds} s"

    @app.get("/")
    def index() -> str:
        counts = tasks.stats()["queues"].get("default", {})
        waiting, running, done = counts.get("queued", 0), counts.get("running", 0), counts.get("succeeded", 0)
        return (
            "<!doctype html><title>Worker thread demo</title>"
            f"<p>Work queue size: <b id=waiting>{waiting}</b> waiting, <span id=running>{running}</span> running,"
            f" <span id=done>{done}</span> done.</p>"
            f"<p><a href='{escape(url_for('add_work'))}'>add work</a> · <a href='/'>refresh</a></p>"
        )

    @app.get("/add")
    def add_work() -> Response:
        pretend_work.enqueue(app.config.get("WORK_SECONDS", WORK_SECONDS))
        return redirect(url_for("index"))

    return app
