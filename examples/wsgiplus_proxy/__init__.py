"""A WSGI+ proxy: a Flask view that awaits an upstream API with an async client, holding no thread meanwhile.

The seed's common use case ("an application making http requests ... some kind of proxy"), served by
gunicorn with the WSGIPlusWorker::

    PROXY_UPSTREAM=https://api.example.com gunicorn -k flask_queue.gunicorn.WSGIPlusWorker --threads 4 \\
        examples.wsgiplus_proxy:app

or ``python -m examples.wsgiplus_proxy`` (which starts that command). Each ``GET /<path>`` is fetched from
``PROXY_UPSTREAM/<path>`` with aiohttp on the process's event loop; while it is in flight the request is
parked and the worker's 4 threads serve other requests, so hundreds of slow upstream calls proceed at once.
Under any other server (``flask --app examples.wsgiplus_proxy run``, waitress, the test client) the same view
waits for the upstream in place, as an ordinary view would.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from concurrent.futures import Future
from typing import Any

from flask import Flask, Response, request

from flask_queue.wsgiplus import run_async, suspendable

#: Where requests are sent; the environment variable ``PROXY_UPSTREAM`` sets it.
DEFAULT_UPSTREAM = "http://127.0.0.1:8001"
#: Seconds the upstream gets before the proxy answers 504 itself.
UPSTREAM_TIMEOUT = 10.0
#: Request headers passed on to the upstream (hop-by-hop headers never are).
FORWARDED_HEADERS = ("Accept", "Accept-Language", "Authorization", "User-Agent")

Reply = tuple[int, bytes, str]


async def fetch(url: str, headers: dict[str, str]) -> Reply:
    """GET ``url`` with aiohttp: (status, body, content type). Runs on the worker process's event loop.

    One session per call keeps the example short and leaves nothing open at exit; a busy proxy would keep
    one ``aiohttp.ClientSession`` per process for its connection pool.
    """
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers, allow_redirects=False) as reply,
    ):
        body = await reply.read()
        return reply.status, body, reply.headers.get("Content-Type", "application/octet-stream")


def create_app(upstream: str | None = None) -> Flask:
    """The proxy app; ``upstream`` defaults to ``$PROXY_UPSTREAM``, else ``http://127.0.0.1:8001``."""
    app = Flask(__name__)
    app.config["PROXY_UPSTREAM"] = (upstream or os.environ.get("PROXY_UPSTREAM") or DEFAULT_UPSTREAM).rstrip(
        "/"
    )

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    @suspendable
    def proxy(path: str) -> Generator[Future[Reply], Reply, Any]:
        url = f"{app.config['PROXY_UPSTREAM']}/{path}"
        if request.query_string:
            url += "?" + request.query_string.decode("latin-1")
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        try:
            status, body, content_type = yield run_async(fetch(url, headers))
        except TimeoutError:
            return {"error": f"the upstream did not answer within {UPSTREAM_TIMEOUT:g} s"}, 504
        except OSError as error:  # aiohttp's connection errors are OSErrors
            return {"error": f"the upstream could not be reached: {error}"}, 502
        return Response(body, status=status, content_type=content_type)

    return app


app = create_app()
