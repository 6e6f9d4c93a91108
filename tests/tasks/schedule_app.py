"""The app the scheduling process tests run in real processes (``flask queue worker`` and gunicorn): one
schedule ticking every ``FLASK_QUEUE_TEST_EVERY`` seconds on the backend ``FLASK_QUEUE_TEST_BACKEND``. Each run
of its job appends ``<tick> <pid>`` to ``FLASK_QUEUE_TEST_RUNS``."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from flask import Flask

from flask_queue import TaskQueue

app = Flask(__name__)
tasks = TaskQueue(app, backend=os.environ["FLASK_QUEUE_TEST_BACKEND"], workers=2)
RUNS = Path(os.environ["FLASK_QUEUE_TEST_RUNS"])


@tasks.periodic(every=float(os.environ.get("FLASK_QUEUE_TEST_EVERY", "0.3")), catch_up="all", name="beat")
def beat(tick: dt.datetime) -> None:
    # One write of one short line to a file opened for appending: lines of concurrent processes never mix.
    with RUNS.open("a") as file:
        file.write(f"{tick.timestamp()!r} {os.getpid()}\n")


@tasks.task
def sync(n: int) -> None: ...


@app.get("/health")
def health() -> str:
    return str(os.getpid())


@app.cli.command("race-key")
def race_key() -> None:
    """Enqueue one key 100 times; print the ids it got back, one per line."""
    ready = Path(os.environ["FLASK_QUEUE_TEST_GO"])
    while not ready.exists():  # start together with the other process
        pass
    ids = {sync.options(key="invoice:1").enqueue(n).id for n in range(100)}
    sys.stdout.write("\n".join(sorted(ids)) + "\n")
