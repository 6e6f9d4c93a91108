"""``flask_queue.tasks.testing``: eager tasks, draining, and the capture_on_commit re-export."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

import flask_queue.commit_hooks
from flask_queue import JobStatus, TaskQueue
from flask_queue.tasks.testing import capture_on_commit, drain_tasks, eager_tasks


def test_eager_tasks_runs_jobs_inline_within_the_block(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend="memory://", workers=0)

    @tasks.task
    def double(n: int) -> int:
        return n * 2

    with app.app_context():
        with eager_tasks(app):
            inline = double.enqueue(2)
        later = double.enqueue(3)
        assert inline.status is JobStatus.SUCCEEDED
        assert later.status is JobStatus.QUEUED
        assert drain_tasks(app) == 1
        assert later.result(timeout=0) == 6


def test_helpers_name_the_fix_without_a_task_queue() -> None:
    with pytest.raises(RuntimeError, match=r"tasks.init_app\(app\)"):
        drain_tasks(Flask(__name__))


def test_capture_on_commit_is_the_sqlalchemy_one() -> None:
    assert capture_on_commit is flask_queue.commit_hooks.capture_on_commit
