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

# The task queue's signals. The sender is the Flask app; every one has the ``job`` keyword argument (a
# ``Job``). A receiver runs in the thread that enqueues or runs the job. One of ``task_enqueued`` that
# raises, raises in the caller of ``enqueue`` (the job is stored already); one of the worker's signals that
# raises is logged and changes nothing for the job.

#: A job was stored (after the commit, for jobs enqueued inside a transaction with ``options(session=...)``).
task_enqueued = _signals.signal("task-enqueued")
#: A worker is about to run an attempt of the job.
task_started = _signals.signal("task-started")
#: The job succeeded. Keyword arguments: ``job``, ``result`` (the task's return value).
task_succeeded = _signals.signal("task-succeeded")
#: The job failed for good. Keyword arguments: ``job``, ``exception`` (``None`` when it could not run at all).
task_failed = _signals.signal("task-failed")
#: An attempt failed and the job will run again. Keyword arguments: ``job``, ``exception``, ``delay``
#: (seconds until the retry).
task_retried = _signals.signal("task-retried")
