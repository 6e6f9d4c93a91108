"""Regression tests of the request queue's rejections: JSON or text, custom hooks that fail, teardowns. Each failed before its fix."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, g

from flask_queue import RequestQueue, RequestQueueMiddleware
from tests._wsgi import Call, hello, hold

# -- rejections --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        ("application/json, text/plain, */*", True),  # axios
        ("application/problem+json", True),
        ("application/json;q=0.5, text/plain", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("*/*", False),
        ("", False),
        ("application/json;q=0", False),
    ],
)
def test_json_rejections_go_to_clients_that_name_json(accept: str, json: bool) -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    held = Call(middleware)
    rejected = Call(middleware, headers={"Accept": accept})
    assert (rejected.headers["Content-Type"] == "application/json") is json
    held.close()


def test_a_reject_hook_that_raises_falls_back_to_the_default_rejection(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    app.add_url_rule("/", "index", lambda: "index")

    @queue.reject_response
    def busy(reason: str, retry_after: int) -> Any:
        raise RuntimeError("template missing")

    held = hold(app, "/")
    rejected = Call(app.wsgi_app, "/")
    assert rejected.code == 503
    assert b"full" in rejected.body
    held.close()


def test_a_teardown_that_expects_before_request_does_not_break_rejections(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    app.add_url_rule("/", "index", lambda: "index")
    app.before_request(lambda: setattr(g, "db", object()))

    @app.teardown_request
    def close_db(exc: BaseException | None) -> None:
        g.db  # noqa: B018  # the usual pattern: teardown closes what before_request opened

    @queue.reject_response
    def busy(reason: str, retry_after: int) -> Any:
        return "busy", 503

    held = hold(app, "/")
    rejected = Call(app.wsgi_app, "/")
    assert rejected.code == 503
    held.close()
