"""Blinker signals for the queues' lifecycle events.

Connect a receiver as with Flask's own signals::

    from flask_queue import signals

    @signals.request_rejected.connect
    def on_reject(sender, lane, reason, environ, **extra):
        log.warning("shed %s from lane %s: %s", environ["PATH_INFO"], lane, reason)

The sender is the Flask application when the queue was set up with the Flask extension, otherwise the
``RequestQueueMiddleware`` instance. Receivers run in the thread that handles the request, so keep them
small. A request-queue receiver that raises is logged (once per signal) and does not affect the request:
admission control must not break because a metrics hook did.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A request had to wait for a slot. Keyword arguments: ``lane``, ``priority``, ``environ``.
request_queued = _signals.signal("request-queued")
#: A request was given a slot and is about to run. Keyword arguments: ``lane``, ``wait`` (seconds spent
#: waiting in the lane), ``environ``.
request_admitted = _signals.signal("request-admitted")
#: A request was answered with a rejection and never ran. Keyword arguments: ``lane``, ``reason``
#: (``"full"``, ``"timeout"``, ``"too_old"``, ``"shed"``, or ``"disconnected"`` for a request whose client
#: left while it waited), ``retry_after`` (seconds), ``environ``.
request_rejected = _signals.signal("request-rejected")

# Task-queue signals, sent by flask_queue.tasks once it exists; declared here so receivers can connect early.
task_enqueued = _signals.signal("task-enqueued")
task_started = _signals.signal("task-started")
task_succeeded = _signals.signal("task-succeeded")
task_failed = _signals.signal("task-failed")
task_retried = _signals.signal("task-retried")
