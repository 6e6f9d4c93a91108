"""The task queue: ``TaskQueue``, ``@tasks.task``, jobs and their statuses. See ``docs/tasks.md``.

``TaskQueue`` is the Flask extension; ``@tasks.task`` makes a function a ``Task``, whose ``enqueue`` returns
a ``Job`` handle at once. Backends live in ``flask_queue.tasks.backends``, the ``flask queue`` commands in
``flask_queue.tasks.cli`` and the helpers for an app's tests in ``flask_queue.tasks.testing``.
"""

from __future__ import annotations

from .job import Job
from .queue import DEFAULTS, QueueState, TaskQueue
from .records import FINISHED, JobRecord, JobStatus, ScheduleState, WorkerInfo
from .serializer import JSONSerializer, Serializer
from .task import DEFAULT_QUEUE, BoundTask, Task
from .worker import StopReport, Worker

__all__ = [
    "DEFAULTS",
    "DEFAULT_QUEUE",
    "FINISHED",
    "BoundTask",
    "JSONSerializer",
    "Job",
    "JobRecord",
    "JobStatus",
    "QueueState",
    "ScheduleState",
    "Serializer",
    "StopReport",
    "Task",
    "TaskQueue",
    "Worker",
    "WorkerInfo",
]
