"""What the SQLite and PostgreSQL backends share: the job table's columns, the SQL of a job's effective
status, and the mapping between a row and a ``JobRecord``.

The SQL here is written in SQLite's named parameter style (``:now``); PostgreSQL's backend translates it to
psycopg's (``%(now)s``). A job's id is ``<seq>-<token>``: the row's key and a random token, so that an id
whose row was deleted never names a later job that reuses the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ...exceptions import BackendError
from ..records import JobRecord, JobStatus
from .base import duplicate

COLUMNS = (
    "seq, token, task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,"
    " finished_at, lease_until, worker, result, error, traceback, expires_at, lost, key, start_by"
)

# A leased job is a 'queued' row with a lease that has not lapsed; ``worker`` still holds it (``HELD``) until
# another worker takes it over, even past the lapse.
LEASED = "(lease_until IS NOT NULL AND lease_until >= :now)"
UNLEASED = "(lease_until IS NULL OR lease_until < :now)"
HELD = "status = 'queued' AND worker = :worker AND lease_until IS NOT NULL"
# A 'queued' row never started whose start_by has passed is expired, whatever its stored status says (a
# dequeue stores 'expired' within a second); ``LIVE`` is the opposite, NULL-safe.
EXPIRING = "(status = 'queued' AND attempts = 0 AND start_by < :now)"
LIVE = "(start_by IS NULL OR attempts > 0 OR start_by >= :now)"
STATUS_SQL = {
    JobStatus.QUEUED: f"(status = 'queued' AND eta <= :now AND {UNLEASED} AND {LIVE})",
    JobStatus.SCHEDULED: f"(status = 'queued' AND eta > :now AND {UNLEASED} AND {LIVE})",
    JobStatus.RUNNING: f"(status = 'queued' AND {LEASED})",
    JobStatus.SUCCEEDED: "status = 'succeeded'",
    JobStatus.FAILED: "status = 'failed'",
    JobStatus.CANCELLED: "status = 'cancelled'",
    JobStatus.EXPIRED: f"(status = 'expired' OR {EXPIRING})",
    JobStatus.DEFERRED: "status = 'deferred'",
}
EFFECTIVE_STATUS = (
    f"CASE WHEN status = 'queued' AND {LEASED} THEN 'running' WHEN {EXPIRING} THEN 'expired'"
    " WHEN status = 'queued' AND eta > :now THEN 'scheduled' ELSE status END"
)
#: A final job back to the queue, unless another job of its task holds its key now.
REQUEUE = (
    "UPDATE flask_queue_jobs SET status = 'queued', attempts = 0, lost = 0, eta = :now, finished_at = NULL,"
    " expires_at = NULL, lease_until = NULL, worker = NULL, start_by = NULL WHERE seq = :seq AND token = :token"
    " AND status IN ('failed', 'cancelled', 'expired') AND (key IS NULL OR NOT EXISTS (SELECT 1 FROM"
    " flask_queue_jobs AS other WHERE other.task = flask_queue_jobs.task AND other.key = flask_queue_jobs.key"
    " AND other.status = 'queued') AND NOT EXISTS (SELECT 1 FROM flask_queue_jobs AS other WHERE other.task ="
    " flask_queue_jobs.task AND other.key = flask_queue_jobs.key AND other.status = 'deferred'))"
)  # two tests of one status each, so that each is answered by its partial unique index
#: Stores as expired the jobs that are so only by the clock (see ``EXPIRING``); a dequeue runs it.
EXPIRE = f"UPDATE flask_queue_jobs SET status = 'expired', finished_at = :now WHERE {EXPIRING}"
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
     finished_at, lease_until, worker, result, error, traceback, expires_at, lost, key, start_by) = row  # fmt: skip
    if status == "queued" and lease_until is not None and lease_until >= now:
        status = "running"
    elif status == "queued" and attempts == 0 and start_by is not None and start_by < now:
        status = "expired"
    return JobRecord(
        id=f"{seq}-{token:08x}",
        task=task,
        queue=queue,
        payload=payload,
        priority=priority,
        status=JobStatus(status),
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
        key=key,
        start_by=start_by,
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


# -- keys ---------------------------------------------------------------------------------------------------------
# The statements of ``store_keyed``, shared by SQLite and PostgreSQL. The unique indexes decide: one over the
# (task, key) of 'queued' rows (waiting or running), one over those of 'deferred' rows; an insert that meets
# either does nothing, and the holder is read after it.

KEYED_COLUMNS = "token, task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, key, start_by"
INSERT_KEYED = (
    f"INSERT INTO flask_queue_jobs ({KEYED_COLUMNS}) VALUES (:token, :task, :queue, :payload, :priority, :status,"
    " 0, :retries, :timeout, :eta, :enqueued_at, :key, :start_by) ON CONFLICT DO NOTHING RETURNING seq"
)
EXPIRE_HOLDER = (
    "UPDATE flask_queue_jobs SET status = 'expired', finished_at = :now"
    f" WHERE task = :task AND key = :key AND {EXPIRING} RETURNING seq"
)
HOLDER = "SELECT seq, token, lease_until FROM flask_queue_jobs WHERE task = :task AND key = :key AND status = :status"
#: A holder that is not running (never started, or its lease lapsed) takes the new call.
REPLACE = (
    "UPDATE flask_queue_jobs SET queue = :queue, payload = :payload, priority = :priority, retries = :retries,"
    " timeout = :timeout, eta = :eta, start_by = :start_by WHERE seq = :seq AND status = :status"
    f" AND {UNLEASED} RETURNING seq"
)
#: Passes between an insert that met a holder and the read of it, if the holder ends each time meanwhile.
KEY_ATTEMPTS = 20

Run = Callable[[str, Any], list[Any]]


def store_keyed(run: Run, row: dict[str, Any], on_conflict: str, now: float) -> str:
    """Store the job of ``row`` (the parameters of ``INSERT_KEYED`` but ``status``), which has a key, as the
    contract says for ``on_conflict``; return its id or its holder's. ``run(sql, params)`` executes one
    statement inside the caller's transaction and returns its rows."""
    params = {**row, "now": now}
    for _ in range(KEY_ATTEMPTS):
        # The insert first: a free key (the common case) costs one statement, as a job without a key.
        inserted = run(INSERT_KEYED, {**params, "status": "queued"})
        if inserted:
            return f"{inserted[0][0]}-{row['token']:08x}"
        if run(EXPIRE_HOLDER, params):
            continue  # the holder had expired by the clock: now stored so, the key is free
        holders = run(HOLDER, {**params, "status": "queued"})
        if not holders:
            continue  # it ended meanwhile (PostgreSQL): try again
        seq, token, lease_until = holders[0]
        holder = f"{seq}-{token:08x}"
        if on_conflict == "return":
            return holder
        if on_conflict == "raise":
            raise duplicate(JobRecord(id="", task=row["task"], queue="", payload="", key=row["key"]), holder)
        if lease_until is None or lease_until < now:
            if run(REPLACE, {**params, "seq": seq, "status": "queued"}):
                return holder
            continue  # a worker took it meanwhile: defer behind it
        inserted = run(INSERT_KEYED, {**params, "status": "deferred"})
        if inserted:
            return f"{inserted[0][0]}-{row['token']:08x}"
        deferred = run(HOLDER, {**params, "status": "deferred"})
        if deferred and run(REPLACE, {**params, "seq": deferred[0][0], "status": "deferred"}):
            return f"{deferred[0][0]}-{deferred[0][1]:08x}"
    raise BackendError(
        f"could not store a job of {row['task']!r} with key {row['key']!r}: its holder kept changing"
    )


def refuse_held(run: Run, records: Sequence[JobRecord], now: float) -> None:
    """``on_conflict="raise"``: raise ``DuplicateJob`` before anything of the batch is written if a record's
    key is held. (The expiry of a holder by the clock, written first, is a fact worth keeping either way.)"""
    for record in records:
        if record.key is None:
            continue
        params = {"task": record.task, "key": record.key, "now": now, "status": "queued"}
        run(EXPIRE_HOLDER, params)
        holders = run(HOLDER, params)
        if holders:
            raise duplicate(record, f"{holders[0][0]}-{holders[0][1]:08x}")


def keyed_row(record: JobRecord, token: int) -> dict[str, Any]:
    """The parameters of ``INSERT_KEYED`` (but ``status``) for ``record``."""
    return {
        "token": token,
        "task": record.task,
        "queue": record.queue,
        "payload": record.payload,
        "priority": record.priority,
        "retries": record.retries,
        "timeout": record.timeout,
        "eta": record.eta,
        "enqueued_at": record.enqueued_at,
        "key": record.key,
        "start_by": record.start_by,
    }


# -- schedules ----------------------------------------------------------------------------------------------------

#: Makes ``:tick`` the schedule's last tick if it is later than the last; a row comes back if and only if it
#: did, with ``paused``.
ADVANCE_TICK = (
    "INSERT INTO flask_queue_schedules (name, last_tick, paused) VALUES (:name, :tick, 0)"
    " ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick"
    " WHERE flask_queue_schedules.last_tick IS NULL OR flask_queue_schedules.last_tick < excluded.last_tick"
    " RETURNING paused"
)
PAUSE = (
    "INSERT INTO flask_queue_schedules (name, last_tick, paused) VALUES (:name, NULL, :paused)"
    " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"
)
SCHEDULES = "SELECT name, last_tick, paused FROM flask_queue_schedules ORDER BY name"
