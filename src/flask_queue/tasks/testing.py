"""Helpers for the tests of an app that uses Flask-Queue.

::

    from flask_queue.tasks.testing import capture_on_commit, drain_tasks, eager_tasks

    def test_signup_sends_mail(app, client):
        with eager_tasks(app):                      # jobs run inline, at enqueue
            client.post("/signup", data={...})

    def test_nightly_report(app):
        report.enqueue()
        assert drain_tasks(app) == 1                 # run what is queued, here and now

``capture_on_commit`` is ``flask_queue.commit_hooks.capture_on_commit`` (it needs the ``sqlalchemy`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .. import _keys

if TYPE_CHECKING:
    from flask import Flask

    from ..commit_hooks import capture_on_commit
    from .queue import QueueState

__all__ = ["capture_on_commit", "drain_tasks", "eager_tasks"]


def _state(app: Flask) -> QueueState:
    state: QueueState | None = app.extensions.get(_keys.TASKS)
    if state is None:
        raise RuntimeError(f"no TaskQueue is set up on app {app.name!r}: did you forget tasks.init_app(app)?")
    return state


@contextmanager
def eager_tasks(app: Flask) -> Iterator[None]:
    """Within the block, every job enqueued on ``app``'s task queue runs inline at enqueue (as with
    ``TASK_QUEUE_EAGER``); the setting is restored afterwards."""
    state = _state(app)
    before = state.settings["eager"]
    state.settings["eager"] = True
    try:
        yield
    finally:
        state.settings["eager"] = before


def drain_tasks(app: Flask, queue: str | None = None) -> int:
    """Run every job ready now on ``app``'s task queue in the calling thread; return how many ran."""
    return _state(app).extension.drain(app, queue=queue)


def __getattr__(name: str) -> Any:
    if name == "capture_on_commit":
        from ..commit_hooks import capture_on_commit

        return capture_on_commit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
