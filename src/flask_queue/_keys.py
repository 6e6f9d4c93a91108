"""The keys under which each capability keeps its per-app state in ``app.extensions``.

One module of strings, so that a capability that looks for another (the dashboard for the queues, the
metrics for the lanes) needs no import of it: ``app.extensions.get(TASKS)`` costs nothing when the task
queue is not in use.
"""

from __future__ import annotations

from typing import Final

#: A ``RequestQueueMiddleware``: the request queue set up by ``RequestQueue.init_app``.
REQUEST_QUEUE: Final = "flask-queue.request-queue"
#: A ``tasks.QueueState``: the task queue's settings, backend and workers for the app.
TASKS: Final = "flask-queue.tasks"
#: ``True`` once ``flask_queue.wsgiplus.init_app`` set the app up for parking.
WSGIPLUS: Final = "flask-queue.wsgiplus"
#: The dashboard's settings.
DASHBOARD: Final = "flask-queue.dashboard"
#: The ``/metrics`` endpoint's registry.
METRICS: Final = "flask-queue.metrics"
