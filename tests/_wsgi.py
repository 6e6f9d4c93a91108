"""Drive a WSGI application by hand, as a server does, holding responses open as long as a test needs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

from flask_queue import RequestQueueMiddleware, signals
from flask_queue._types import StartResponse, WSGIApplication, WSGIEnvironment


class Call:
    """One request through a WSGI app, its response held open until ``close``."""

    def __init__(
        self,
        app: WSGIApplication,
        path: str = "/",
        extra_environ: dict[str, Any] | None = None,
        **builder: Any,
    ) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self.environ = EnvironBuilder(path=path, **builder).get_environ()
        self.environ.update(extra_environ or {})
        self.iterable = app(self.environ, self._start_response)

    def _start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = status
        self.headers = dict(headers)
        return self._chunks.append

    @property
    def code(self) -> int:
        self.body  # a generator app calls start_response on its first iteration  # noqa: B018
        return int(self.status.split()[0])

    @property
    def body(self) -> bytes:
        if not hasattr(self, "_body"):
            self._body = b"".join([*self._chunks, *self.iterable])
        return self._body

    def json(self) -> Any:
        return json.loads(self.body)

    def close(self) -> None:
        close = getattr(self.iterable, "close", None)
        if close is not None:
            close()


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def stats_of(middleware: RequestQueueMiddleware, lane: str = "default") -> dict[str, Any]:
    lane_stats: dict[str, Any] = middleware.stats()["lanes"][lane]
    return lane_stats


def hold(app: Flask, path: str) -> Call:
    """Start a request through the app's whole WSGI stack and keep its response open."""
    call = Call(app.wsgi_app, path)
    assert call.code == 200, call.body
    return call


def gated_stream(gate: threading.Event) -> WSGIApplication:
    """A streaming app: sends ``first``, waits for ``gate`` (5 s at most), then sends ``last``."""

    def stream(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        gate.wait(5)
        yield b"last"

    return stream


def call_after_waiting(
    middleware: RequestQueueMiddleware, extra_environ: dict[str, Any] | None = None
) -> Call:
    """A request that waits in line for the slot a held request frees, then is let in; ``Call`` of it."""
    held = Call(middleware, "/held")
    queued = threading.Event()
    result: list[Call] = []
    with signals.request_queued.connected_to(lambda sender, **kw: queued.set(), sender=middleware):
        thread = threading.Thread(target=lambda: result.append(Call(middleware, "/waited", extra_environ)))
        thread.start()
        assert queued.wait(5), "the request never queued"
    held.close()
    thread.join(5)
    return result[0]
