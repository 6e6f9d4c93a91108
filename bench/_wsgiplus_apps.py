"""The Flask app of the WSGI+ benchmark: a view that calls a slow upstream, one that does not wait, /health.

``create(upstream=PORT, client="async")`` awaits the upstream with ``aiohttp`` on the process's
event loop through ``@suspendable`` + ``run_async`` (for the WSGIPlusWorker); ``client="blocking"`` calls
it with ``http.client`` on a keep-alive connection per thread (gthread; gevent, whose worker patches the
socket module so that the same code yields to other greenlets). Both keep their upstream connections alive.
"""

from __future__ import annotations

import asyncio
import http.client
import resource
import threading
from collections.abc import Generator
from concurrent.futures import Future
from typing import Any

from flask import Flask

_local = threading.local()
_async_clients: dict[int, Any] = {}


def _blocking_get(port: int) -> int:
    """GET the upstream on this thread's (or greenlet's) keep-alive connection; its status."""
    for attempt in range(2):
        connection = getattr(_local, "connection", None)
        if connection is None:
            connection = _local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            _local.connection = None
            if attempt:
                raise
    raise AssertionError("unreachable")


async def _async_get(port: int) -> int:
    """GET the upstream with the process's shared ``aiohttp.ClientSession`` (made on the loop at first use).

    aiohttp rather than httpx: ``httpx.AsyncClient`` serves about 60 requests a second at 200 concurrent
    200 ms requests on this machine, aiohttp about 900 (encode/httpx#3215).
    """
    import aiohttp

    session = _async_clients.get(port)
    if session is None:
        connector = aiohttp.TCPConnector(limit=0)  # no cap: as many connections as requests in flight
        session = _async_clients[port] = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        )
    async with session.get(f"http://127.0.0.1:{port}/") as response:
        await response.read()
        return response.status


class _StreamsPool:
    """Keep-alive connections to the upstream over plain asyncio streams: the stdlib's async counterpart of
    ``http.client`` (which the blocking servers use), so that both sides pay for a client of the same weight.
    Used on the event loop's thread only.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def get(self) -> int:
        for attempt in range(2):
            if self.idle:
                reader, writer = self.idle.pop()
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                if attempt:
                    raise
                continue
            self.idle.append((reader, writer))
            return int(head[9:12])
        raise AssertionError("unreachable")


_pools: dict[int, _StreamsPool] = {}


async def _streams_get(port: int) -> int:
    pool = _pools.get(port)
    if pool is None:
        pool = _pools[port] = _StreamsPool(port)
    return await pool.get()


def create(upstream: int, client: str = "blocking") -> Flask:
    """The benchmark app, calling the upstream on ``upstream`` with the ``async`` or ``blocking`` client."""
    from flask_queue.wsgiplus import run_async, suspendable

    # Up to a thousand client connections and as many to the upstream.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = Flask("wsgiplus_bench")

    if client in ("aiohttp", "streams"):
        get = _async_get if client == "aiohttp" else _streams_get

        @app.get("/wait")
        @suspendable
        def wait() -> Generator[Future[int], int, tuple[str, int]]:
            status = yield run_async(get(upstream))
            return f"upstream answered {status}", 200

    elif client == "blocking":

        @app.get("/wait")
        def wait() -> tuple[str, int]:
            return f"upstream answered {_blocking_get(upstream)}", 200

    else:
        raise ValueError(f"client must be 'aiohttp', 'streams' or 'blocking', got {client!r}")

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.get("/nowait")
    def nowait() -> str:
        return "ok"

    return app
