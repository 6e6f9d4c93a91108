"""The app the process-level tests run in real processes: ``flask --app tests.tasks.procs_app ...`` and
gunicorn. The queue file comes from ``FLASK_QUEUE_TEST_DB``; every run of a task is appended to
``FLASK_QUEUE_TEST_RUNS`` as ``job-id pid`` so that a test can count the runs of each job."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import Flask, request

from flask_queue import TaskQueue

app = Flask(__name__)
tasks = TaskQueue(
    app,
    backend=f"sqlite:///{os.environ['FLASK_QUEUE_TEST_DB']}",
    workers=int(os.environ.get("FLASK_QUEUE_TEST_WORKERS", "2")),
    lease=float(os.environ.get("FLASK_QUEUE_TEST_LEASE", "30")),
)
RUNS = Path(os.environ["FLASK_QUEUE_TEST_RUNS"])


def _record_run(tag: str) -> None:
    with RUNS.open("a") as runs:
        runs.write(f"{tag} {os.getpid()}\n")


@tasks.task
def note(tag: str) -> int:
    _record_run(tag)
    return os.getpid()


@tasks.task
def hang_once(tag: str) -> int:
    """Hangs on its first run (the test kills that worker) and returns on the next."""
    first = not RUNS.exists() or f"{tag} " not in RUNS.read_text()
    _record_run(tag)
    if first:
        time.sleep(3600)
    return os.getpid()


@app.get("/enqueue")
def enqueue() -> dict[str, object]:
    count = int(request.args.get("n", "1"))
    prefix = request.args.get("tag", "web")
    jobs = [note.enqueue(f"{prefix}-{n}") for n in range(count)]
    return {"pid": os.getpid(), "jobs": [job.id for job in jobs]}


@app.get("/health")
def health() -> str:
    return "ok"


if os.environ.get("FLASK_QUEUE_TEST_IMPORT_JOB"):
    # An enqueue at import time, as some apps do: under the reloader both processes import the app.
    note.enqueue(f"import-{os.getpid()}")
