"""The seed's worker-thread demo (``examples/worker_thread``) through the test client."""

from __future__ import annotations

import re
from pathlib import Path

from flask.testing import FlaskClient

from examples.worker_thread import create_app


def _count(client: FlaskClient, name: str) -> int:
    match = re.search(rf"id={name}>(\d+)<", client.get("/").get_data(as_text=True))
    assert match is not None
    return int(match.group(1))


def test_add_work_grows_the_queue_and_the_worker_burns_it_down(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    app = create_app({"TASK_QUEUE_BACKEND": f"sqlite:///{db}", "TASK_QUEUE_WORKERS": 0, "WORK_SECONDS": 0})
    client = app.test_client()
    for _ in range(3):
        assert client.get("/add").status_code == 302
    assert _count(client, "waiting") == 3
    tasks = app.extensions["flask-queue.tasks"].extension
    # The seed's queue died with its process: here a restarted app (a new one on the same file) still has it.
    restarted = create_app(
        {"TASK_QUEUE_BACKEND": f"sqlite:///{db}", "TASK_QUEUE_WORKERS": 1, "WORK_SECONDS": 0}
    )
    restarted_client = restarted.test_client()
    restarted_client.get("/")  # the first request starts the worker thread
    restarted_tasks = restarted.extensions["flask-queue.tasks"].extension
    try:
        with restarted.app_context():
            for record in restarted_tasks.backend().jobs():
                restarted_tasks.get_job(record.id).result(timeout=30)
        assert _count(restarted_client, "waiting") == 0
        assert _count(restarted_client, "done") == 3
    finally:
        restarted_tasks.shutdown(app=restarted)
        restarted_tasks.backend(restarted).close()
        tasks.backend(app).close()
