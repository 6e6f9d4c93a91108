"""An app with both queues and the dashboard, and helpers to drive the dashboard as a browser would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_queue import Dashboard, RequestQueue, Task, TaskQueue
from tests._services import postgres_namespace, redis_namespace
from tests.servers._live import free_port, wait_for

#: Every task backend; the networked ones need their service (see ``tests/_services.py``).
BACKENDS = ("memory", "sqlite", "redis", "postgres")


@dataclass
class Site:
    """The app under test, its task queue and its tasks: ``ok`` returns, ``boom`` raises its argument,
    ``fails`` raises an error of its own whatever its arguments."""

    app: Flask
    tasks: TaskQueue
    ok: Task[..., Any]
    boom: Task[..., Any]
    fails: Task[..., Any]
    allowed: list[bool] = field(default_factory=lambda: [True])
    asked: int = 0

    def client(self) -> FlaskClient:
        return self.app.test_client()


MakeSite = Callable[..., Site]


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[MakeSite]:
    """``make_site(backend="sqlite", **dashboard_settings)``: a fresh app with no worker threads (tests run jobs
    with ``tasks.drain()``) on a fresh store of ``backend``, one of ``BACKENDS`` or a URL; ``authorize``
    defaults to ``site.allowed[0]``, counting the calls. Redis keys and PostgreSQL schemas are dropped after
    the test."""
    queues: list[TaskQueue] = []
    drops: list[Callable[[], None]] = []

    def url_of(backend: str) -> str:
        if backend == "memory":
            return "memory://"
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'jobs-{len(queues)}.sqlite3'}"
        if backend in ("redis", "postgres"):
            url, drop = redis_namespace() if backend == "redis" else postgres_namespace()
            drops.append(drop)
            return url
        return backend

    def make(*, request_queue: bool = True, backend: str = "sqlite", **settings: Any) -> Site:
        app = Flask(__name__)
        app.config["TESTING"] = True
        if request_queue:
            RequestQueue(app, concurrency=2, max_queue_size=3)
        tasks = TaskQueue(app, backend=url_of(backend), workers=0)
        queues.append(tasks)

        @tasks.task(name="site.ok")
        def ok(*args: Any, **kwargs: Any) -> str:
            return "done"

        @tasks.task(name="site.boom")
        def boom(message: str) -> None:
            raise ValueError(message)

        @tasks.task(name="site.fails")
        def fails(*args: Any, **kwargs: Any) -> None:
            raise ValueError("it failed")

        site = Site(app, tasks, ok, boom, fails)

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
    for drop in drops:
        drop()


@pytest.fixture
def site(make_site: MakeSite) -> Site:
    return make_site()


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def csrf_token(client: FlaskClient, prefix: str = "/queue") -> str:
    """Load the overview as a browser does and return the token its forms carry (its cookie is now set)."""
    with client.get(prefix + "/") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert match, "the page names no CSRF token"
    return match[1]


# -- a Redis server of the test's own, to stop while the app uses it -----------------------------------------


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` on a free loopback port, stopped with ``.stop()`` (or after the test)."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed, so the test cannot start a Redis of its own and stop it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = None
    for _ in range(3):  # the free port may be taken meanwhile: try another
        server = _start_redis(binary, tmp_path)
        if server is not None:
            break
    assert server is not None, "redis-server did not start on a free port in 3 tries"
    try:
        yield server
    finally:
        server.stop()


def _start_redis(binary: str, folder: Path) -> RedisServer | None:
    """A ``redis-server`` on a port that was free; ``None`` if it exited instead (the port was taken)."""
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(process, port)
    answers, _exited = wait_for(
        "redis-server to answer or exit",
        lambda: (server.answers(), server.process.poll() is not None),
        any,
    )
    if answers:
        return server
    server.stop()
    return None
