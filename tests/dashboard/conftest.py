"""An app with both queues and the dashboard, and helpers to drive the dashboard as a browser would."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_queue import Dashboard, RequestQueue, Task, TaskQueue


@dataclass
class Site:
    """The app under test, its task queue and its two tasks (``ok`` returns, ``boom`` raises its argument)."""

    app: Flask
    tasks: TaskQueue
    ok: Task[..., Any]
    boom: Task[..., Any]
    allowed: list[bool] = field(default_factory=lambda: [True])
    asked: int = 0

    def client(self) -> FlaskClient:
        return self.app.test_client()


MakeSite = Callable[..., Site]


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[MakeSite]:
    """``make_site(**dashboard_settings)``: a fresh app on its own SQLite file, no worker threads (tests run
    jobs with ``tasks.drain()``); ``authorize`` defaults to ``site.allowed[0]``, counting the calls."""
    queues: list[TaskQueue] = []

    def make(*, request_queue: bool = True, **settings: Any) -> Site:
        app = Flask(__name__)
        app.config["TESTING"] = True
        if request_queue:
            RequestQueue(app, concurrency=2, max_queue_size=3)
        tasks = TaskQueue(app, backend=f"sqlite:///{tmp_path / f'jobs-{len(queues)}.sqlite3'}", workers=0)
        queues.append(tasks)

        @tasks.task(name="site.ok")
        def ok(*args: Any, **kwargs: Any) -> str:
            return "done"

        @tasks.task(name="site.boom")
        def boom(message: str) -> None:
            raise ValueError(message)

        site = Site(app, tasks, ok, boom)

        def authorize() -> bool:
            site.asked += 1
            return site.allowed[0]

        settings.setdefault("authorize", authorize)
        Dashboard(app, **settings)
        return site

    yield make
    for tasks in queues:
        tasks.shutdown()
        tasks.backend().close()


@pytest.fixture
def site(make_site: MakeSite) -> Site:
    return make_site()


def csrf_token(client: FlaskClient, prefix: str = "/queue") -> str:
    """Load the overview as a browser does and return the token its forms carry (its cookie is now set)."""
    with client.get(prefix + "/") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert match, "the page names no CSRF token"
    return match[1]
