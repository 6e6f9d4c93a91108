from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_queue import TaskQueue
from flask_queue.tasks.backends import backend_from_url
from flask_queue.tasks.backends.base import Backend
from tests._services import postgres_namespace, redis_namespace

#: Every backend; the networked ones need their service (see ``tests/_services.py``).
BACKENDS = ("memory", "sqlite", "redis", "postgres")


@pytest.fixture
def backend_url_of(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Gives the URL of a fresh, empty store of a backend kind; Redis keys and PostgreSQL schemas made this
    way are deleted after the test."""
    drops: list[Callable[[], None]] = []
    urls: dict[str, str] = {}

    def url_of(kind: str) -> str:
        if kind not in urls:
            if kind == "memory":
                urls[kind] = "memory://"
            elif kind == "sqlite":
                urls[kind] = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
            elif kind in ("redis", "postgres"):
                url, drop = redis_namespace() if kind == "redis" else postgres_namespace()
                drops.append(drop)
                urls[kind] = url
            else:
                raise ValueError(kind)
        return urls[kind]

    yield url_of
    for drop in drops:
        drop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, backend_url_of: Callable[[str], str]) -> Iterator[Backend]:
    backend = backend_from_url(backend_url_of(request.param))
    yield backend
    backend.close()


MakeQueue = Callable[..., tuple[Flask, TaskQueue]]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_queue(
    tmp_path: Path, backend_kind: str, backend_url_of: Callable[[str], str]
) -> Iterator[MakeQueue]:
    """A factory of (app, TaskQueue) on the parametrized backend; their workers are stopped after the test."""
    made: list[tuple[Flask, TaskQueue]] = []

    def make(**settings: Any) -> tuple[Flask, TaskQueue]:
        app = Flask(f"tasks_test_{len(made)}", instance_path=str(tmp_path / "instance"))
        app.config["TESTING"] = True
        settings.setdefault("backend", backend_url_of(backend_kind))
        tasks = TaskQueue(app, **settings)
        made.append((app, tasks))
        return app, tasks

    yield make
    for app, tasks in made:
        tasks.shutdown(timeout=10, app=app)
        tasks.backend(app).close()


def in_process_threads(tasks: TaskQueue) -> int:
    """The worker threads this process runs for the queue's only app (0 before they start)."""
    worker = tasks.state().worker
    return 0 if worker is None else worker.threads
