"""What the dashboard shows, as plain data: the same dictionaries feed the page, its JSON and its script.

The request queue's figures are this process's (each server process has its own lanes); the task queue's
come from its backend, which every process shares, so they are the same whichever process answers.
Nothing here renders anything: values stay raw (job arguments and errors included) and are escaped where
they are shown, by Jinja's autoescape in the page and by ``textContent`` in the script.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

from .. import _keys
from ..tasks import JobRecord, JobStatus

if TYPE_CHECKING:
    from flask import Flask

    from ..request_queue import RequestQueueMiddleware
    from ..tasks import Serializer, WorkerInfo
    from ..tasks.backends import Backend

__all__ = ["PER_PAGE", "RECENT", "Queues", "job_data", "snapshot"]

#: Jobs in each of the overview's two lists (recent, failed).
RECENT: Final = 10
#: Jobs on a page of the job list.
PER_PAGE: Final = 25
#: Characters of a job's arguments shown in a list; the job's own page shows them all.
ARGS_PREVIEW: Final = 160


@dataclass(frozen=True)
class Queues:
    """The queues set up on one app, found in ``app.extensions``; either may be missing."""

    requests: RequestQueueMiddleware | None
    backend: Backend | None
    serializer: Serializer | None

    @classmethod
    def of(cls, app: Flask) -> Queues:
        middleware = app.extensions.get(_keys.REQUEST_QUEUE)
        state = app.extensions.get(_keys.TASKS)
        if state is None:
            return cls(middleware, None, None)
        # Through the extension, not ``state.backend``: it reopens the backend in a child after a fork.
        return cls(middleware, state.extension.backend(app), state.extension.serializer)


def snapshot(queues: Queues) -> dict[str, Any]:
    """Every figure of the overview: lanes, task queues, workers, and the latest and the failed jobs."""
    data: dict[str, Any] = {"time": time.time(), "requests": None, "tasks": None}
    if queues.requests is not None:
        data["requests"] = _lanes(queues.requests.stats()["lanes"])
    backend = queues.backend
    if backend is not None:
        counts = backend.counts()
        totals = dict.fromkeys(map(str, JobStatus), 0)
        for by_status in counts.values():
            for status, count in by_status.items():
                totals[status] += count
        data["tasks"] = {
            "backend": backend.url,
            "queues": {name: counts[name] for name in sorted(counts)},
            "totals": totals,
            "workers": [_worker(info) for info in backend.workers()],
            "recent": [job_data(record, queues.serializer) for record in backend.jobs(limit=RECENT)],
            "failed": [
                job_data(record, queues.serializer)
                for record in backend.jobs(status=JobStatus.FAILED, limit=RECENT)
            ],
        }
    return data


def _lanes(lanes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # The lane's own figures, minus what the dashboard has no use for (time before the app saw a request).
    return {
        name: {key: value for key, value in lane.items() if key != "upstream_ms"}
        for name, lane in lanes.items()
    }


def _worker(info: WorkerInfo) -> dict[str, Any]:
    data = asdict(info)
    del data["ttl"]
    return data


def job_data(record: JobRecord, serializer: Serializer | None, *, full: bool = False) -> dict[str, Any]:
    """A job as the dashboard shows it; ``full`` adds the whole call, the traceback and the result."""
    call = describe_call(record, serializer)
    data: dict[str, Any] = {
        "id": record.id,
        "task": record.task,
        "queue": record.queue,
        "status": str(record.effective_status()),
        "priority": record.priority,
        "attempts": record.attempts,
        "retries": record.retries,
        "enqueued_at": record.enqueued_at,
        "eta": record.eta,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "worker": record.worker,
        "error": record.error,
        "call": call if full or len(call) <= ARGS_PREVIEW else call[: ARGS_PREVIEW - 1] + "…",
    }
    if full:
        data["traceback"] = record.traceback
        data["result"] = record.result
    return data


def describe_call(record: JobRecord, serializer: Serializer | None) -> str:
    """``task(1, "two", key=3)``: the job's call as text, or its raw payload when it cannot be decoded."""
    if serializer is None:
        return record.payload
    try:
        args, kwargs = serializer.loads_call(record.payload)
    except Exception:  # a corrupt payload, or one from another serializer: show it as stored
        return record.payload
    shown = [_argument(value) for value in args]
    shown += [f"{name}={_argument(value)}" for name, value in kwargs.items()]
    return f"{record.task}({', '.join(shown)})"


def _argument(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
