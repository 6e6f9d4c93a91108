"""Flask-Queue in ``bench.backends``: a Flask app whose ``TaskQueue`` uses the benchmark's URL.

The app has no in-process workers (``workers=0``), as a web app served next to separate workers would:
the producer enqueues with ``noop_task.enqueue(i)`` (or ``enqueue_many``) inside the app context, and the
workers are one ``flask queue worker --threads N`` process, the command a user deploys.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from flask_queue import TaskQueue
from flask_queue.tasks import JobStatus

from ._backends_probe import noop, url
from ._backends_system import System, python

app = Flask("bench_backends")
tasks = TaskQueue(app, backend=url(), workers=0)
noop_task = tasks.task(name="bench.noop")(noop)

#: The statuses of a job that will still run.
_PENDING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING)


class FlaskQueue(System):
    """``TaskQueue(app, backend=URL, workers=0)``, and ``flask queue worker --threads N``."""

    bulk_call = "task.enqueue_many"

    def concurrency(self) -> str:
        return f"1 process x {self.threads} threads (flask queue worker)"

    def workers(self) -> list[list[str]]:
        return [
            python("flask", "--app", f"{__name__}:app", "queue", "worker", "--threads", str(self.threads))
        ]

    def open(self) -> None:
        self._context: Any = app.app_context()
        self._context.push()

    def enqueue(self, n: int) -> None:
        enqueue = noop_task.enqueue
        for i in range(n):
            enqueue(i)

    def enqueue_bulk(self, n: int, batch: int) -> None:
        enqueue_many = noop_task.enqueue_many
        for start in range(0, n, batch):
            enqueue_many([((i,), {}) for i in range(start, min(start + batch, n))])

    def left(self) -> int:
        counts = tasks.backend(app).counts()
        return sum(by_status[status.value] for by_status in counts.values() for status in _PENDING)

    def close(self) -> None:
        self._context.pop()
        tasks.backend(app).close()
