"""Background tasks: ``TaskQueue``, ``@tasks.task``, jobs and their statuses. See ``docs/tasks.md``."""

from __future__ import annotations

from .job import Job, JobStatus
from .queue import BoundTask, Task, TaskQueue
from .worker import StopReport, Worker

__all__ = ["BoundTask", "Job", "JobStatus", "StopReport", "Task", "TaskQueue", "Worker"]
