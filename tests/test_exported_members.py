"""The public surface is deliberate: each package's ``__all__`` names exactly what its ``__init__`` exports."""

from __future__ import annotations
import __future__

import importlib
from types import ModuleType

import pytest

import flask_queue

PACKAGES = [
    "flask_queue",
    "flask_queue.request_queue",
    "flask_queue.tasks",
    "flask_queue.tasks.backends",
    "flask_queue.commit_hooks",
    "flask_queue.wsgiplus",
    "flask_queue.dashboard",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_the_public_names(name: str) -> None:
    package = importlib.import_module(name)
    for exported in package.__all__:  # resolve the lazy ones first
        getattr(package, exported)
    public = {n for n in dir(package) if not n.startswith("_") or n == "__version__"}
    incidental = {n for n in public if isinstance(getattr(package, n), (ModuleType, __future__._Feature))}
    assert set(package.__all__) == public - incidental


def test_every_exported_name_resolves() -> None:
    for name in flask_queue.__all__:
        assert getattr(flask_queue, name) is not None


def test_the_root_names_are_the_capabilities_own() -> None:
    from flask_queue.dashboard import Dashboard
    from flask_queue.request_queue import EXEMPT, RequestQueue, RequestQueueMiddleware
    from flask_queue.tasks import Job, JobStatus, Task, TaskQueue

    assert (flask_queue.Dashboard, flask_queue.RequestQueue, flask_queue.TaskQueue) == (
        Dashboard,
        RequestQueue,
        TaskQueue,
    )
    assert (flask_queue.RequestQueueMiddleware, flask_queue.EXEMPT) == (RequestQueueMiddleware, EXEMPT)
    assert (flask_queue.Job, flask_queue.JobStatus, flask_queue.Task) == (Job, JobStatus, Task)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        flask_queue.Nothing  # noqa: B018


def test_the_gunicorn_worker_keeps_the_path_users_type() -> None:
    from flask_queue.gunicorn import WSGIPlusWorker
    from flask_queue.wsgiplus.gunicorn import WSGIPlusWorker as worker

    assert WSGIPlusWorker is worker
