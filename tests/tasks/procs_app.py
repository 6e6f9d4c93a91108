"""The app the process-level tests run in real processes: ``flask --app tests.tasks.procs_app ...`` and
gunicorn. The backend is ``FLASK_QUEUE_TEST_BACKEND``, or else the SQLite file ``FLASK_QUEUE_TEST_DB``; every
run of a task is appended to ``FLASK_QUEUE_TEST_RUNS`` as ``tag pid`` when it starts, so that a test can count
the runs of each job (``work`` also appends it to ``<runs>.done`` when it ends)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flask import Flask, request

from flask_queue import TaskQueue

app = Flask(__name__)
tasks = TaskQueue(
    app,
    backend=os.environ.get("FLASK_QUEUE_TEST_BACKEND") or f"sqlite:///{os.environ['FLASK_QUEUE_TEST_DB']}",
    workers=int(os.environ.get("FLASK_QUEUE_TEST_WORKERS", "2")),
    lease=float(os.environ.get("FLASK_QUEUE_TEST_LEASE", "30")),
)
RUNS = Path(os.environ["FLASK_QUEUE_TEST_RUNS"])
DONE = RUNS.with_name(RUNS.name + ".done")
#: ``gather`` jobs return once this file exists.
RELEASE = RUNS.with_name("release")


def _record_run(tag: str, runs: Path = RUNS) -> None:
    # One write of one short line to a file opened for appending: lines of concurrent processes never mix.
    with runs.open("a") as file:
        file.write(f"{tag} {os.getpid()}\n")


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


@tasks.task
def work(tag: str, seconds: float) -> int:
    """A job that takes a while: long enough to be in flight when its worker is killed."""
    _record_run(tag)
    time.sleep(seconds)
    _record_run(tag, DONE)
    return os.getpid()


@tasks.task
def gather(tag: str, count: int) -> int:
    """Returns once ``count`` runs have started (so that they run at the same time) and ``RELEASE`` exists."""
    _record_run(tag)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if RELEASE.exists() and len(RUNS.read_text().splitlines()) >= count:
            break
        time.sleep(0.02)
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


@app.cli.command("enqueue-note")
def enqueue_note() -> None:
    """A command of the app's own that enqueues a job (it runs no worker: one must say so)."""
    print(note.enqueue("command").id)


if os.environ.get("FLASK_QUEUE_TEST_EXIT_AT_FORK"):
    # A worker process that dies as it starts (``flask queue worker --processes N`` forks them from here).
    code = int(os.environ["FLASK_QUEUE_TEST_EXIT_AT_FORK"])
    os.register_at_fork(after_in_child=lambda: os._exit(code))

if os.environ.get("FLASK_QUEUE_TEST_IMPORT_JOB"):
    # An enqueue at import time, as some apps do: under the reloader both processes import the app.
    note.enqueue(f"import-{os.getpid()}")
