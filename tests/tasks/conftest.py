from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_queue import TaskQueue
from flask_queue.tasks.backends.base import Backend
from flask_queue.tasks.backends.memory import MemoryBackend
from flask_queue.tasks.backends.sqlite import SQLiteBackend

BACKENDS = ("memory", "sqlite")


def make_backend(kind: str, tmp_path: Path) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        return SQLiteBackend(tmp_path / "jobs.sqlite3")
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = make_backend(request.param, tmp_path)
    yield backend
    backend.close()


def backend_url(kind: str, tmp_path: Path) -> str:
    return "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


MakeQueue = Callable[..., tuple[Flask, TaskQueue]]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_queue(tmp_path: Path, backend_kind: str) -> Iterator[MakeQueue]:
    """A factory of (app, TaskQueue) on the parametrized backend; their workers are stopped after the test."""
    made: list[tuple[Flask, TaskQueue]] = []

    def make(**settings: Any) -> tuple[Flask, TaskQueue]:
        app = Flask(f"tasks_test_{len(made)}", instance_path=str(tmp_path / "instance"))
        app.config["TESTING"] = True
        settings.setdefault("backend", backend_url(backend_kind, tmp_path))
        tasks = TaskQueue(app, **settings)
        made.append((app, tasks))
        return app, tasks

    yield make
    for app, tasks in made:
        tasks.shutdown(timeout=10, app=app)
        tasks.backend(app).close()
