"""What the dashboard shows, as plain data: the same dictionaries feed the page, its JSON and its script.

The request queue's figures are this process's (each server process has its own lanes); the task queue's
come from its backend, which every process shares, so they are the same whichever process answers. A
worker's own figures (``running``, ``processed``) are as of its last heartbeat, ``beat_age`` seconds before
``time``; the task queues' counts are read at ``time``.

Nothing here renders anything: values stay raw (job arguments and errors included) and are escaped where
they are shown, by Jinja's autoescape in the page and by ``textContent`` in the script. One thing is changed
on the way: a lone surrogate (``"\\ud800"``, valid in JSON, impossible in UTF-8) becomes the text ``\\ud800``,
so that no job can stop a page from being sent.

The cost of the overview does not depend on what the jobs carry: a list decodes a job's arguments only when
they are short (``PREVIEW_DECODE_LIMIT``); a longer payload is previewed from the start of its stored text.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from .. import _keys
from ..exceptions import BackendError
from ..tasks import JobRecord, JobStatus

if TYPE_CHECKING:
    from flask import Flask

    from ..request_queue import RequestQueueMiddleware
    from ..tasks import Serializer, TaskQueue, WorkerInfo
    from ..tasks.backends import Backend

__all__ = [
    "ARGS_PREVIEW",
    "ERROR_PREVIEW",
    "PER_PAGE",
    "PREVIEW_DECODE_LIMIT",
    "RECENT",
    "Queues",
    "describe_call",
    "displayable",
    "job_data",
    "log_outage",
    "snapshot",
]

log = logging.getLogger("flask_queue.dashboard")

#: Jobs in each of the overview's two lists (recent, failed).
RECENT: Final = 10
#: Jobs on a page of the job list.
PER_PAGE: Final = 25
#: Characters of a job's call shown in a list; the job's own page shows it all.
ARGS_PREVIEW: Final = 160
#: Characters of a job's error shown in a list; the job's own page shows it all.
ERROR_PREVIEW: Final = 400
#: A list decodes a job's stored arguments up to this many characters; a longer payload is previewed from
#: the start of its text (``task({"big": "abc…`` and its size), so that a list costs the same whatever the
#: jobs carry.
PREVIEW_DECODE_LIMIT: Final = 4096

#: How the JSON serializer frames a call; a preview of its raw text leaves it out.
_JSON_CALL_START: Final = '{"args":['


@dataclass(frozen=True)
class Queues:
    """The queues set up on one app, found in ``app.extensions``; either may be missing."""

    requests: RequestQueueMiddleware | None
    backend: Backend | None
    serializer: Serializer | None
    #: The ``TaskQueue`` (its schedules); ``None`` without one.
    tasks: TaskQueue | None = None

    @classmethod
    def of(cls, app: Flask) -> Queues:
        middleware = app.extensions.get(_keys.REQUEST_QUEUE)
        state = app.extensions.get(_keys.TASKS)
        if state is None:
            return cls(middleware, None, None)
        # Through the extension, not ``state.backend``: it reopens the backend in a child after a fork.
        return cls(middleware, state.extension.backend(app), state.extension.serializer, state.extension)


def snapshot(queues: Queues) -> dict[str, Any]:
    """Every figure of the overview: lanes, task queues, workers, and the latest and the failed jobs.

    ``tasks`` is ``None`` without a task queue. When its backend cannot be read it is
    ``{"backend": url, "up": False, "error": why}`` and the request lanes are still there.
    """
    now = time.time()
    data: dict[str, Any] = {"time": now, "requests": None, "tasks": None}
    if queues.requests is not None:
        data["requests"] = _lanes(queues.requests.stats()["lanes"])
    backend = queues.backend
    if backend is not None:
        try:
            data["tasks"] = _tasks(backend, queues.serializer, now)
        except BackendError as error:
            log_outage("the dashboard", backend.url, error)
            data["tasks"] = {"backend": backend.url, "up": False, "error": str(error)}
    return displayable(data)


def _tasks(backend: Backend, serializer: Serializer | None, now: float) -> dict[str, Any]:
    counts = backend.counts()
    totals = dict.fromkeys(map(str, JobStatus), 0)
    for by_status in counts.values():
        for status, count in by_status.items():
            totals[status] += count
    return {
        "backend": backend.url,
        "up": True,
        "queues": {name: counts[name] for name in sorted(counts)},
        "totals": totals,
        "workers": [_worker(info, now) for info in backend.workers()],
        "recent": [
            job_data(record, serializer)
            for record in backend.jobs(limit=RECENT, preview=PREVIEW_DECODE_LIMIT)
        ],
        "failed": [
            job_data(record, serializer)
            for record in backend.jobs(status=JobStatus.FAILED, limit=RECENT, preview=PREVIEW_DECODE_LIMIT)
        ],
    }


#: When each reader's outage of each backend was last logged: every open page polls every few seconds, and
#: every scrape asks; the log says it once a minute.
_logged_outages: dict[tuple[str, str], float] = {}
_OUTAGE_LOG_EVERY: Final = 60.0


def log_outage(reader: str, url: str, error: BackendError) -> None:
    """Log, once a minute at most, that ``reader`` left out the figures of the backend at ``url``."""
    now = time.monotonic()
    key = (reader, url)
    if now - _logged_outages.get(key, -_OUTAGE_LOG_EVERY) >= _OUTAGE_LOG_EVERY:
        _logged_outages[key] = now
        log.warning("%s cannot read the task backend, so it leaves its figures out: %s", reader, error)


def _lanes(lanes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # The lane's own figures, minus what the dashboard has no use for (time before the app saw a request).
    return {
        name: {key: value for key, value in lane.items() if key != "upstream_ms"}
        for name, lane in lanes.items()
    }


def _worker(info: WorkerInfo, now: float) -> dict[str, Any]:
    data = asdict(info)
    del data["ttl"]
    # Its ``running`` and ``processed`` are as old as its heartbeat: say how old, beside them.
    data["beat_age"] = max(now - info.seen_at, 0.0)
    return data


def schedules_data(queues: Queues) -> list[dict[str, Any]]:
    """The schedules of the code with their state, as the schedules page and ``/api/schedules`` show them."""
    if queues.tasks is None:
        return []
    listed = queues.tasks.schedule_states()
    return displayable(
        [
            {
                **item,
                "last_tick": None if item["last_tick"] is None else item["last_tick"].isoformat(),
                "next_tick": item["next_tick"].isoformat(),
            }
            for item in listed
        ]
    )


def job_data(record: JobRecord, serializer: Serializer | None, *, full: bool = False) -> dict[str, Any]:
    """A job as the dashboard shows it; ``full`` adds the whole call, the traceback and the result.

    Without ``full`` (a list) the call and the error are previews, cut with ``…``, and cost the same however
    large the job's arguments are.
    """
    error = record.error
    if error is not None and not full and len(error) > ERROR_PREVIEW:
        error = error[: ERROR_PREVIEW - 1] + "…"
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
        "key": record.key,
        "start_by": record.start_by,
        "error": error,
        "call": describe_call(record, serializer) if full else _preview(record, serializer),
    }
    if full:
        data["traceback"] = record.traceback
        data["result"] = record.result
    return displayable(data)


def describe_call(record: JobRecord, serializer: Serializer | None) -> str:
    """``task(1, "two", key=3)``: the job's whole call as text, or its raw payload when it cannot be decoded."""
    if serializer is None:
        return record.payload
    try:
        args, kwargs = serializer.loads_call(record.payload)
    except Exception:  # a corrupt payload, or one from another serializer: show it as stored
        return record.payload
    shown = [_argument(value) for value in args]
    shown += [f"{name}={_argument(value)}" for name, value in kwargs.items()]
    return f"{record.task}({', '.join(shown)})"


def _preview(record: JobRecord, serializer: Serializer | None) -> str:
    """The call as a list shows it: at most ``ARGS_PREVIEW`` characters, whatever the payload's size."""
    payload = record.payload
    size = len(payload) if record.payload_size is None else record.payload_size
    if size <= PREVIEW_DECODE_LIMIT:
        call = describe_call(record, serializer)
        return call if len(call) <= ARGS_PREVIEW else call[: ARGS_PREVIEW - 1] + "…"
    # Too long to decode for a preview: the start of the stored text (the JSON serializer's framing left
    # out), cut, with the size of the whole.
    head = payload[: ARGS_PREVIEW * 2]
    if head.startswith(_JSON_CALL_START):
        head = head[len(_JSON_CALL_START) :]
    tail = f"… ({size:,} characters)"
    return f"{record.task}({head}"[: ARGS_PREVIEW - len(tail)] + tail


def _argument(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


_SURROGATE: Final = re.compile("[\ud800-\udfff]")

T = TypeVar("T")


def displayable(value: T) -> T:
    """``value`` with every lone surrogate in its strings (dict keys included) written as ``\\udXXX``.

    JSON can carry ``"\\ud800"`` and Python holds it, but UTF-8 cannot encode it: left in, it makes the page
    that shows it fail. Strings without one are returned as they are, so this costs a scan.
    """
    if isinstance(value, str):
        if value.isascii() or not _SURROGATE.search(value):
            return value
        return cast(T, value.encode("utf-8", "backslashreplace").decode("utf-8"))
    if isinstance(value, dict):
        return cast(T, {displayable(key): displayable(item) for key, item in value.items()})
    if isinstance(value, list):
        return cast(T, [displayable(item) for item in value])
    return value
