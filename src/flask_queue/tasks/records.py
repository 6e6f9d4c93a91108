"""The data of the backend contract: a job's status and record, and a worker's heartbeat.

Plain data, shared by the backends, the worker, the ``TaskQueue``, the CLI and the dashboard; nothing here
talks to a backend.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass

__all__ = ["FINISHED", "JobRecord", "JobStatus", "ScheduleState", "WorkerInfo"]


class JobStatus(str, enum.Enum):
    """Where a job is in its life. ``SUCCEEDED``, ``FAILED``, ``CANCELLED`` and ``EXPIRED`` are final."""

    #: Ready to run, waiting for a worker.
    QUEUED = "queued"
    #: Waiting for its time (``enqueue_in``, ``enqueue_at``, or a retry's backoff).
    SCHEDULED = "scheduled"
    #: Leased by a worker that is running it.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    #: Raised on its last attempt, or could not run (unknown task, corrupt payload); kept with its error.
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Not started by its ``expires_in`` / ``expires_at``: it never ran, and never will.
    EXPIRED = "expired"
    #: Waiting for something other than its time: the key of a running job of its task (an
    #: ``on_conflict="replace"`` enqueue while the key's job ran); it is queued when that job ends.
    DEFERRED = "deferred"

    def __str__(self) -> str:
        return self.value


#: The statuses a job never leaves.
FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


@dataclass
class JobRecord:
    """Everything a backend keeps about a job. Backends store it; nothing else changes it behind them.

    Times are seconds since the epoch (``time.time()``), so that processes and machines agree on them.
    ``status`` is never ``SCHEDULED`` in storage: a ``QUEUED`` job whose ``eta`` is in the future is
    scheduled, and becomes ready by the clock alone (see ``effective_status``).
    """

    id: str
    task: str
    queue: str
    payload: str
    priority: int = 0
    status: JobStatus = JobStatus.QUEUED
    #: Attempts started so far (a redelivery after a lost lease counts).
    attempts: int = 0
    #: Further attempts allowed after the first one fails.
    retries: int = 0
    #: Seconds an attempt may run; ``None`` for no limit.
    timeout: float | None = None
    eta: float = 0.0
    enqueued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    #: While running: until when its worker holds it, and which worker that is.
    lease_until: float | None = None
    worker: str | None = None
    #: The JSON of the task's return value, once it succeeded.
    result: str | None = None
    error: str | None = None
    traceback: str | None = None
    #: When a finished job may be deleted; ``None`` keeps it.
    expires_at: float | None = None
    #: Leases that expired on this job (its worker died or hung); past a bound the job fails.
    lost: int = 0
    #: At most one unfinished job of a task holds a key (``task.options(key=...)``); ``None``: no key.
    key: str | None = None
    #: A job not started by then is ``EXPIRED`` instead (``expires_in`` / ``expires_at``); ``None``: never.
    #: Not ``expires_at``, which is when a finished job may be deleted.
    start_by: float | None = None
    #: The length of the whole payload when ``payload`` holds only its start (``Backend.jobs(preview=N)``
    #: read no more of it); ``None``: ``payload`` is whole.
    payload_size: int | None = None

    def effective_status(self, now: float | None = None) -> JobStatus:
        if self.status is JobStatus.QUEUED:
            now = time.time() if now is None else now
            if self.expired(now):
                return JobStatus.EXPIRED
            if self.eta > now:
                return JobStatus.SCHEDULED
        return self.status

    def expired(self, now: float) -> bool:
        """Whether a queued job's time to start has passed without a start: no worker may take it any more,
        and the next dequeue that meets it stores it as ``EXPIRED``."""
        return self.start_by is not None and self.start_by < now and self.attempts == 0


@dataclass
class ScheduleState:
    """What a backend keeps of a periodic schedule (``@tasks.periodic``): one record, whatever its ticks.

    ``last_tick`` is the latest tick (seconds since the epoch) some process enqueued, or skipped while the
    schedule was paused; ``None`` until the first. A schedule removed from the code keeps its record, unused.
    """

    name: str
    last_tick: float | None = None
    paused: bool = False


@dataclass
class WorkerInfo:
    """A worker's heartbeat: who it is and what it does, as ``flask queue status`` and the dashboard show it.

    A worker process (``flask queue worker``, or a web process's worker threads) beats every few seconds; it
    counts as alive until ``seen_at + ttl`` and is forgotten when it stops cleanly.
    """

    #: Unique among the workers of one backend: ``host:pid:token``.
    name: str
    host: str
    pid: int
    #: The queues it takes; ``None``: every queue.
    queues: list[str] | None
    threads: int
    #: Jobs it runs now, and jobs it finished since it started.
    running: int
    processed: int
    started_at: float
    seen_at: float
    #: Seconds after ``seen_at`` during which it counts as alive without another beat.
    ttl: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        return cls(**json.loads(text))
