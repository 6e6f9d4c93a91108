"""WSGI+: Flask views that wait on a Future without holding a thread.

A view decorated with ``@suspendable`` is a generator: it yields a ``concurrent.futures.Future`` and gets its
result back (``value = yield future``; a failed or cancelled future raises there, so ``try``/``except``
around the ``yield`` works), and its ``return`` value is the response, as from any view::

    from flask_queue.wsgiplus import in_thread, run_async, suspendable

    @app.get("/weather")
    @suspendable
    def weather():
        reply = yield run_async(client.get(URL))  # a coroutine on this process's event loop
        rows = yield in_thread(slow_query)  # a function on this process's thread pool
        return {"temp": reply.json()["temp"], "rows": len(rows)}

Under a WSGI+ server (``gunicorn -k flask_queue.gunicorn.WSGIPlusWorker``) the request is parked while the
future runs, and its thread serves other requests; ``async def`` views are parked the same way, their
coroutine running on the process's event loop. Under any other server (``flask run``, waitress, plain
gunicorn, the test client) the same view waits for each future in place, and ``async def`` views run as
Flask runs them. Flask's request and app context, ``g`` and the session stay intact across a park.

Nothing that belongs to one thread may be held across a ``yield``: a database transaction or connection
checked out of a pool, a lock, a thread-local. See ``docs/wsgi-plus.md``.
"""

from __future__ import annotations

from .protocol import ENVIRON_KEY, VERSION, forward, is_wsgi_plus, outcome, resume
from .runtime import EVENT_LOOP_ENV, call_later, event_loop_factory, in_thread, run_async, shutdown
from .views import init_app, suspendable

__all__ = [
    "ENVIRON_KEY",
    "EVENT_LOOP_ENV",
    "VERSION",
    "call_later",
    "event_loop_factory",
    "forward",
    "in_thread",
    "init_app",
    "is_wsgi_plus",
    "outcome",
    "resume",
    "run_async",
    "shutdown",
    "suspendable",
]
