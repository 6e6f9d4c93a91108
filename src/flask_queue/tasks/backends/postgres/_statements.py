"""The PostgreSQL backend's SQL: its tables, and every statement it runs, in psycopg's parameter style.

The status SQL is the SQLite backend's (``_sql``), its ``:name`` parameters turned into ``%(name)s``, and so are
the statements of keys and schedules (``translate``). A schema's name goes into the statements quoted, with its
``%`` doubled, so that psycopg reads it as text.
"""

from __future__ import annotations

import re

from ...records import JobStatus
from .. import _sql
from ..base import MAX_LOST

#: The columns an enqueue gives, in the order ``PostgresBackend._insert`` binds them.
INSERTED = (
    "token",
    "task",
    "queue",
    "payload",
    "priority",
    "retries",
    "timeout",
    "eta",
    "enqueued_at",
    "start_by",
)
RETURN_J = ", ".join(f"j.{column.strip()}" for column in _sql.COLUMNS.split(","))
#: Ends the notification of a job its key was handed to by the trigger (see ``tables``).
FREED = " freed"


def tables(s: str, channel: str) -> str:
    """The script that creates the tables of schema ``s`` (quoted), or brings those of an older layout up to
    this one; the trigger notifies ``channel``. Run without parameters: ``s`` keeps its ``%`` single."""
    jobs = f"{s}.flask_queue_jobs"
    # A job that ends (or is deleted) while holding a key hands it to the job deferred behind it, in the same
    # transaction, whichever of finish, cancel, expiry, lost leases or purge ended it; the notification wakes
    # the workers for it (the listener takes it even from this process's own connections, see FREED).
    body = (
        "DECLARE due double precision; BEGIN"
        f" UPDATE {jobs} SET status = 'queued' WHERE task = OLD.task AND key = OLD.key AND status = 'deferred'"
        " RETURNING eta INTO due;"
        f" IF FOUND THEN PERFORM pg_notify(TG_ARGV[0], '1 ' || due || '{FREED}'); END IF;"
        " RETURN NULL; END"
    )
    # Quoted as string literals, not dollar-quoted: no schema or channel name can end them early.
    body_literal = "'" + body.replace("'", "''") + "'"
    channel_literal = "'" + channel.replace("'", "''") + "'"
    freed = f"EXECUTE FUNCTION {s}.flask_queue_key_freed({channel_literal})"
    return f"""
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {jobs} (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token bigint NOT NULL,
    task text NOT NULL,
    queue text NOT NULL,
    payload text NOT NULL,
    priority bigint NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    retries bigint NOT NULL,
    timeout double precision,
    eta double precision NOT NULL,
    enqueued_at double precision NOT NULL,
    started_at double precision,
    finished_at double precision,
    lease_until double precision,
    worker text,
    result text,
    error text,
    traceback text,
    expires_at double precision,
    lost integer NOT NULL DEFAULT 0,
    key text,
    start_by double precision
) WITH (fillfactor = 80);
ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS key text;
ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS start_by double precision;
CREATE INDEX IF NOT EXISTS flask_queue_ready ON {jobs} (priority, seq) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS flask_queue_expiry ON {jobs} (expires_at) WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS flask_queue_key ON {jobs} (task, key) WHERE key IS NOT NULL AND status = 'queued';
CREATE UNIQUE INDEX IF NOT EXISTS flask_queue_key_deferred ON {jobs} (task, key) WHERE status = 'deferred';
CREATE INDEX IF NOT EXISTS flask_queue_start_by ON {jobs} (start_by) WHERE status = 'queued' AND start_by IS NOT NULL;
CREATE OR REPLACE FUNCTION {s}.flask_queue_key_freed() RETURNS trigger LANGUAGE plpgsql AS {body_literal};
DROP TRIGGER IF EXISTS flask_queue_key_freed ON {jobs};
CREATE TRIGGER flask_queue_key_freed AFTER UPDATE OF status ON {jobs} FOR EACH ROW
    WHEN (OLD.status = 'queued' AND NEW.status <> 'queued' AND OLD.key IS NOT NULL) {freed};
DROP TRIGGER IF EXISTS flask_queue_key_deleted ON {jobs};
CREATE TRIGGER flask_queue_key_deleted AFTER DELETE ON {jobs} FOR EACH ROW
    WHEN (OLD.status = 'queued' AND OLD.key IS NOT NULL) {freed};
CREATE TABLE IF NOT EXISTS {s}.flask_queue_workers (
    name text PRIMARY KEY,
    info text NOT NULL,
    alive_until double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.flask_queue_schedules (
    name text PRIMARY KEY,
    last_tick double precision,
    paused integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {s}.flask_queue_meta (
    instance text NOT NULL,
    version integer NOT NULL
)
"""


# ``fillfactor = 80`` leaves room in each page, so that taking and renewing a job (which change no indexed
# column) are HOT updates: a new row version on the same page, no new index entries. The trigger is on
# ``UPDATE OF status``, which neither sets: they do not even queue it. ``paused`` is an integer, as in SQLite,
# so that the shared ``_sql.ADVANCE_TICK`` and ``_sql.PAUSE`` work unchanged.


def pyformat(sql: str) -> str:
    """A SQLite fragment (``:name`` parameters) in psycopg's parameter style (``%(name)s``)."""
    return re.sub(r":(\w+)", r"%(\1)s", sql)


TABLE = re.compile(r"\bflask_queue_(?:jobs|schedules)\b")


def translate(sql: str, s: str) -> str:
    """A whole statement of ``_sql`` for schema ``s`` (quoted, its ``%`` doubled): psycopg's parameters, and
    its tables named in the schema."""
    # The parameters first: the schema's name may hold a colon.
    return TABLE.sub(lambda table: f"{s}.{table.group(0)}", pyformat(sql))


# The statuses are the SQLite backend's, the same columns read the same way; only the parameter style differs.
# ``worker`` holds its job until another worker takes it over, even past the lapse of its lease.
HELD = pyformat(_sql.HELD)
UNLEASED = pyformat(_sql.UNLEASED)
LIVE = pyformat(_sql.LIVE)
KEY = "seq = %(seq)s AND token = %(token)s"
STATUS_SQL = {status: pyformat(sql) for status, sql in _sql.STATUS_SQL.items()}
EFFECTIVE_STATUS = pyformat(_sql.EFFECTIVE_STATUS)
#: Notifies the backend's channel, in a transaction of several statements (the others notify as they write).
NOTIFY = "SELECT pg_notify(:channel, :note)"


def statements(s: str) -> dict[str, str]:
    """The statements of a backend whose tables live in schema ``s`` (quoted, its ``%`` doubled), by name."""
    jobs = f"{s}.flask_queue_jobs"
    notify = "pg_notify(%(channel)s, %(note)s)"

    def take(queues: str) -> str:
        # A function, not str.format: the schema's name may hold braces.
        return (
            f"WITH picked AS (SELECT seq FROM {jobs} WHERE status = 'queued' AND eta <= %(now)s AND (lease_until"
            f" IS NULL OR (lease_until < %(now)s AND lost < {MAX_LOST - 1})) AND {LIVE}{queues}"
            " ORDER BY priority, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            f" UPDATE {jobs} j SET attempts = j.attempts + 1, started_at = %(now)s, lease_until = %(until)s,"
            " worker = %(worker)s, lost = j.lost + (j.lease_until IS NOT NULL)::int FROM picked"
            f" WHERE j.seq = picked.seq RETURNING {RETURN_J}"
        )

    return {
        "insert": (
            f"INSERT INTO {jobs} (token, task, queue, payload, priority, status, attempts, retries, timeout,"
            " eta, enqueued_at, start_by) SELECT r.token, r.task, r.queue, r.payload, r.priority, 'queued', 0,"
            " r.retries, r.timeout, r.eta, r.enqueued_at, r.start_by FROM unnest(CAST(%(token)s AS bigint[]),"
            " CAST(%(task)s AS text[]), CAST(%(queue)s AS text[]), CAST(%(payload)s AS text[]),"
            " CAST(%(priority)s AS bigint[]), CAST(%(retries)s AS bigint[]), CAST(%(timeout)s AS float8[]),"
            " CAST(%(eta)s AS float8[]), CAST(%(enqueued_at)s AS float8[]), CAST(%(start_by)s AS float8[]))"
            " AS r(token, task, queue, payload, priority, retries, timeout, eta, enqueued_at, start_by)"
            f" RETURNING seq, token, {notify}"
        ),
        "insert_one": (
            f"INSERT INTO {jobs} (token, task, queue, payload, priority, status, attempts, retries, timeout,"
            " eta, enqueued_at, start_by) VALUES (%(token)s, %(task)s, %(queue)s, %(payload)s, %(priority)s,"
            " 'queued', 0, %(retries)s, %(timeout)s, %(eta)s, %(enqueued_at)s, %(start_by)s)"
            f" RETURNING seq, token, {notify}"
        ),
        "take": take(""),
        "take_queues": take(" AND queue = ANY(%(queues)s)"),
        # One statement for both, as often as before: a job past its start_by is stored as expired (its key
        # handed on by the trigger), and a job whose lease lapsed once too often is failed. The two never
        # meet one row: an expiring job never started, a lost one did.
        "recover": (
            f"WITH expired AS ({translate(_sql.EXPIRE, s)})"
            f" UPDATE {jobs} SET status = 'failed', error = %(error)s, traceback = '', finished_at = %(now)s,"
            " lost = lost + 1, lease_until = NULL WHERE status = 'queued' AND lease_until < %(now)s"
            f" AND lost >= {MAX_LOST - 1}"
        ),
        "due": (
            f"SELECT min(eta) FROM {jobs} WHERE status = 'queued' AND lease_until IS NULL AND eta > %(now)s"
            f" AND {LIVE}"
        ),
        "renew": f"UPDATE {jobs} SET lease_until = %(until)s WHERE {KEY} AND {HELD}",
        "finish": (
            f"UPDATE {jobs} SET status = %(status)s, result = %(result)s, error = %(error)s,"
            " traceback = %(traceback)s, finished_at = %(now)s, expires_at = %(expires)s, lease_until = NULL"
            f" WHERE {KEY} AND {HELD} RETURNING {_sql.COLUMNS}"
        ),
        "finish_batch": (
            f"UPDATE {jobs} j SET status = 'succeeded', result = b.result, error = NULL, traceback = NULL,"
            " finished_at = %(now)s, expires_at = b.expires, lease_until = NULL FROM unnest(CAST(%(seq)s AS"
            " bigint[]), CAST(%(token)s AS bigint[]), CAST(%(result)s AS text[]), CAST(%(expires)s AS float8[]))"
            " AS b(seq, token, result, expires) WHERE j.seq = b.seq AND j.token = b.token"
            f" AND j.status = 'queued' AND j.worker = %(worker)s AND j.lease_until IS NOT NULL RETURNING {RETURN_J}"
        ),
        "retry_later": (
            f"UPDATE {jobs} SET eta = %(eta)s, error = %(error)s, traceback = %(traceback)s, worker = NULL,"
            f" lease_until = NULL WHERE {KEY} AND {HELD} RETURNING {notify}"
        ),
        "release": (
            f"UPDATE {jobs} SET attempts = attempts - 1, worker = NULL, lease_until = NULL"
            f" WHERE {KEY} AND {HELD} RETURNING {notify}"
        ),
        "requeue": f"{translate(_sql.REQUEUE, s)} RETURNING {notify}",
        "get": f"SELECT {_sql.COLUMNS} FROM {jobs} WHERE {KEY}",
        # A deferred job is not expired, whatever its start_by (it expires once queued, if still late).
        "cancel": (
            f"UPDATE {jobs} SET status = 'cancelled', finished_at = %(now)s WHERE {KEY} AND (status = 'deferred'"
            f" OR (status = 'queued' AND {UNLEASED} AND {LIVE})) RETURNING {_sql.COLUMNS}"
        ),
        "size": f"SELECT count(*) FROM {jobs} WHERE {STATUS_SQL[JobStatus.QUEUED]}",
        "size_queue": f"SELECT count(*) FROM {jobs} WHERE {STATUS_SQL[JobStatus.QUEUED]} AND queue = %(queue)s",
        "counts": f"SELECT queue, {EFFECTIVE_STATUS} AS s, count(*) FROM {jobs} GROUP BY queue, s",
        "expire": (
            f"DELETE FROM {jobs} WHERE expires_at <= %(now)s"
            " AND status IN ('succeeded', 'failed', 'cancelled', 'expired')"
        ),
        "schedules": translate(_sql.SCHEDULES, s),
        "pause": translate(_sql.PAUSE, s),
        "beat": (
            f"WITH stale AS (DELETE FROM {s}.flask_queue_workers WHERE alive_until < %(now)s AND name <> %(name)s)"
            f" INSERT INTO {s}.flask_queue_workers (name, info, alive_until) VALUES (%(name)s, %(info)s, %(until)s)"
            " ON CONFLICT (name) DO UPDATE SET info = EXCLUDED.info, alive_until = EXCLUDED.alive_until"
        ),
        "workers": f"SELECT info FROM {s}.flask_queue_workers WHERE alive_until >= %(now)s ORDER BY name",
        "forget": f"DELETE FROM {s}.flask_queue_workers WHERE name = %(name)s",
    }
