"""What the SQLite and PostgreSQL backends share: the job table's columns, the SQL of a job's effective
status, and the mapping between a row and a ``JobRecord``.

The SQL here is written in SQLite's named parameter style (``:now``); PostgreSQL's backend translates it to
psycopg's (``%(now)s``). A job's id is ``<seq>-<token>``: the row's key and a random token, so that an id
whose row was deleted never names a later job that reuses the key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..records import JobRecord, JobStatus

COLUMNS = (
    "seq, token, task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,"
    " finished_at, lease_until, worker, result, error, traceback, expires_at, lost"
)

# A leased job is a 'queued' row with a lease that has not lapsed; ``worker`` still holds it (``HELD``) until
# another worker takes it over, even past the lapse.
LEASED = "(lease_until IS NOT NULL AND lease_until >= :now)"
UNLEASED = "(lease_until IS NULL OR lease_until < :now)"
HELD = "status = 'queued' AND worker = :worker AND lease_until IS NOT NULL"
STATUS_SQL = {
    JobStatus.QUEUED: f"(status = 'queued' AND eta <= :now AND {UNLEASED})",
    JobStatus.SCHEDULED: f"(status = 'queued' AND eta > :now AND {UNLEASED})",
    JobStatus.RUNNING: f"(status = 'queued' AND {LEASED})",
    JobStatus.SUCCEEDED: "status = 'succeeded'",
    JobStatus.FAILED: "status = 'failed'",
    JobStatus.CANCELLED: "status = 'cancelled'",
}
EFFECTIVE_STATUS = (
    f"CASE WHEN status = 'queued' AND {LEASED} THEN 'running'"
    " WHEN status = 'queued' AND eta > :now THEN 'scheduled' ELSE status END"
)
ID = re.compile(r"([1-9][0-9]{0,17})-([0-9a-f]{8})")


def key(job_id: str) -> dict[str, int]:
    """The row of a job id (``<seq>-<token>``): the rowid, and a random token, so that an id whose row was
    deleted never names a later job given the same rowid. Anything else (another spelling, another type)
    matches no row."""
    match = ID.fullmatch(job_id) if isinstance(job_id, str) else None
    if match is None:
        return {"seq": -1, "token": -1}
    return {"seq": int(match.group(1)), "token": int(match.group(2), 16)}


def record(row: Sequence[Any], now: float) -> JobRecord:
    """The record of a row read at ``now``: a 'queued' row under a live lease is RUNNING."""
    (seq, token, task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,
     finished_at, lease_until, worker, result, error, traceback, expires_at, lost) = row  # fmt: skip
    return JobRecord(
        id=f"{seq}-{token:08x}",
        task=task,
        queue=queue,
        payload=payload,
        priority=priority,
        status=JobStatus.RUNNING
        if status == "queued" and lease_until is not None and lease_until >= now
        else JobStatus(status),
        attempts=attempts,
        retries=retries,
        timeout=timeout,
        eta=eta,
        enqueued_at=enqueued_at,
        started_at=started_at,
        finished_at=finished_at,
        lease_until=lease_until,
        worker=worker,
        result=result,
        error=error,
        traceback=traceback,
        expires_at=expires_at,
        lost=lost,
    )


def preview_columns(placeholder: str) -> str:
    """``COLUMNS`` with the payload cut to ``placeholder`` characters, followed by its whole length: the
    columns of a list that must not read large payloads (``record(row, now, preview)`` reads them)."""
    return COLUMNS.replace("payload,", f"substr(payload, 1, {placeholder}), length(payload),", 1)


def preview_record(row: Sequence[Any], now: float, preview: int) -> JobRecord:
    """The record of a row of ``preview_columns``."""
    size = row[5]
    found = record([*row[:5], *row[6:]], now)
    if size > preview:
        found.payload_size = size
    return found
