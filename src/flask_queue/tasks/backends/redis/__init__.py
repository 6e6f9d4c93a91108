"""``redis://`` and ``rediss://``: jobs in Redis, shared by every process of every machine that reaches it.

Needs Redis 7.0 or later. Every state change is one Lua script (``EVALSHA``), so it is atomic: two workers
never take the same job, and a job is never seen half moved; a full Redis (``maxmemory``) refuses a script
before it starts, never halfway (see ``_scripts.lua``). A script is one round trip whatever it does, so ``enqueue``
of a list, ``dequeue_batch`` and ``finish_batch`` cost one round trip each; a worker running short jobs with
its prefetch at 16 spends about one eighth of a round trip per job.

Key layout (``P`` is the URL's ``prefix``, ``flask_queue`` by default; ``Q`` a queue name)::

    P:job:<id>       hash    the job's record, one field per ``JobRecord`` field (a None is no field);
                             the id is <sequence number, 14 hex digits>-<8 random hex digits>, the
                             sequence number being the enqueue time in microseconds (``_new_ids``)
    P:jobs           zset    every job, scored by sequence number: ``jobs()`` newest first
    P:queues         set     the queue names that have jobs
    P:ready:Q        zset    QUEUED jobs ready to run, scored by priority; equal scores sort by member,
                             which is the id, so a priority is FIFO
    P:delayed:Q      zset    QUEUED jobs with an eta, scored by eta (SCHEDULED until it passes)
    P:running:Q      zset    RUNNING jobs, scored by lease_until
    P:succeeded:Q    zset    finished jobs by outcome, scored by sequence number: ``counts()`` is a ZCARD,
    P:failed:Q               ``jobs(status=...)`` a ZREVRANGE
    P:cancelled:Q
    P:expired:Q
    P:deferred:Q     zset    DEFERRED jobs, scored by sequence number
    P:start_by:Q     zset    QUEUED jobs never started that have a ``start_by``, scored by it: those below
                             now are EXPIRED, whatever their hash says, until a script stores it
    P:expires        zset    finished jobs that have an ``expires_at``, scored by it: ``expire()``
    P:keys           hash    <len(task)>:<task>:<key> -> the id of the unfinished job that holds the key
    P:keys_deferred  hash    the same -> the id of the job DEFERRED behind it
    P:schedules      hash    schedule name -> <paused 0|1>:<last tick>, what ``schedules()`` reads
    P:wake:Q         list    at most one wake-up token: a dequeue blocked in BLPOP takes it
    P:wakeall        list    the same, for dequeues of every queue, when a new queue name appears
    P:interrupt:<t>  list    tokens that make this process's blocked dequeues return (``interrupt``)
    P:workers        hash    worker name -> the JSON of its last heartbeat
    P:layout         string  the version of this layout (``LAYOUT``), set by the first process to connect

How a job moves: ``enqueue`` writes its hash and puts its id in ``ready`` (or ``delayed``); a dequeue first
moves the ids of ``delayed`` whose eta passed to ``ready`` and hands out again the ids of ``running`` whose
lease lapsed (``lost`` + 1; failed with ``LOST_ERROR`` past ``MAX_LOST``), then pops the most urgent ids of
``ready`` into ``running``. ``finish`` moves an id from ``running`` to its outcome's set, ``retry_later``
and ``release`` back to ``delayed``/``ready``. Only the lease holder changes a running job: each script
checks the hash's ``status`` and ``worker`` first.

Keys and expiry: the enqueue of a job with a key (a script of its own, ``ENQUEUE_KEYED``, so that jobs
without one cost what they did) looks its key up in ``P:keys`` and decides there, for every job of the call,
what ``on_conflict`` says. Every script that ends a job holding a key (finish, cancel, expiry, a last lost
lease, purge) frees it in the same script, queueing the job of ``P:keys_deferred``. A dequeue first stores as
EXPIRED the jobs of ``P:start_by`` below now, so that none is handed out; reads (``get``, ``counts``,
``jobs``) report them so before. A namespace written before keys and ``start_by`` existed has neither in its
hashes, and reads as jobs without them.

Waiting: a dequeue that finds nothing blocks in ``BLPOP`` on the wake-up lists of its queues, with a
timeout that ends when the earliest delayed job falls due or the earliest lease lapses. Whatever makes a job
ready (an enqueue from any process, a retry, a release, a requeue) pushes a token when the list has none,
and a dequeue that leaves ready jobs behind pushes one again, so idle workers wake one after the other, as
many as there are jobs. Redis keeps at most one token per queue, so a token nobody waited for costs one
spare look later, never a pile.

Delivery is at-least-once: a job acknowledged by ``enqueue`` is in Redis; a job runs under a lease that its
worker renews, and a worker that dies lets it lapse, so the job runs again elsewhere. What survives a crash or
restart of Redis itself is Redis's persistence: with ``appendonly yes`` and ``appendfsync always``, every
acknowledged write is on disk before the reply, so nothing acknowledged is lost; with ``appendfsync everysec``
(Redis's default for the AOF) a crash of Redis loses nothing, a crash of the machine up to about the last
second of writes; RDB snapshots alone lose everything since the last snapshot. ``maxmemory-policy`` must be
``noeviction``: an evicting Redis would delete jobs silently.

Each thread talks to Redis on a connection of its own (``_link.Link``), made with the settings of one redis-py pool
per backend and process (``after_fork`` makes a fresh one). Redis that cannot be reached raises
``BackendError`` after a short connect timeout, never retried here (a command that failed may have run; the
worker retries with its own backoff); a connection that Redis closed meanwhile (a restart) is replaced before
its next command. Redis's own key expiry is not used for results: a finished job is in several keys, and a
hash that vanished under them would leave them counting a ghost; ``expire()`` (every worker runs it every
minute) deletes a job from every key at once.

The scripts are in ``_scripts.py`` (those of keys and schedules in ``_keyed.py``, those that only read in
``_reads.py``), the connections in ``_link.py``; this module is the contract.
"""

from __future__ import annotations

import functools
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ....exceptions import BackendError, ConfigurationError
from ...records import FINISHED, JobRecord, JobStatus, ScheduleState, WorkerInfo
from ..base import ON_CONFLICT, Backend, duplicate, hide_secrets, scrub
from . import _keyed, _reads, _scripts
from ._link import Links

__all__ = ["RedisBackend"]

Params = ParamSpec("Params")
T = TypeVar("T")

#: Longest single BLPOP: a wait longer than this is made of several, each well within the reply timeout.
BLOCK_SLICE = 5.0
#: The key layout this module reads and writes (``P:layout``); a change of layout is a new number.
LAYOUT = 1
#: Milliseconds a leftover interrupt token lives (one not taken because its dequeue returned on its own).
INTERRUPT_TTL_MS = 5000


def _reporting(
    method: Callable[Concatenate[RedisBackend, Params], T],
) -> Callable[Concatenate[RedisBackend, Params], T]:
    """Turn redis-py's errors into ``BackendError`` naming the backend (its password hidden)."""

    @functools.wraps(method)
    def call(self: RedisBackend, /, *args: Params.args, **kwargs: Params.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except RedisError as exc:
            raise self._error(exc) from exc

    return call


class RedisBackend(Backend):
    """Jobs in Redis. The URL is ``redis://[user:password@]host[:port][/db][?prefix=NAME&...]`` (``rediss://``
    for TLS); ``prefix`` names the keys, the other options go to redis-py. Connects at first use."""

    def __init__(self, url: str) -> None:
        super().__init__()
        #: The URL as messages show it, and what they must not show: its passwords.
        self.url, self._secrets = hide_secrets(url)
        try:
            parts = urlsplit(url)
            options = parse_qsl(parts.query, keep_blank_values=True)
        except ValueError as exc:
            raise ConfigurationError(f"TASK_QUEUE_BACKEND={self.url!r} is not a valid URL: {exc}") from exc
        prefixes = [value for name, value in options if name == "prefix"]
        #: What every key of this backend starts with (before a colon).
        self.prefix = prefixes[-1] if prefixes else "flask_queue"
        if not self.prefix:
            raise ConfigurationError(
                f"TASK_QUEUE_BACKEND={self.url!r}: prefix is empty; give the keys a name (?prefix=myapp)"
            )
        database = parts.path.lstrip("/")
        if database and not database.isdigit():  # redis-py would quietly take database 0
            raise ConfigurationError(
                f"TASK_QUEUE_BACKEND={self.url!r}: the database must be a number (redis://host:6379/0), not"
                f" {database!r}"
            )
        self._redis_url = urlunsplit(
            parts._replace(query=urlencode([(name, value) for name, value in options if name != "prefix"]))
        )
        self._connect()

    def _connect(self) -> None:
        """Fresh connections, and fresh per-process state: waiters, ids."""
        try:
            self._links = Links(self._redis_url, self.url)
            # Made, not connected: an option redis-py does not know fails here, not at the first enqueue.
            self._links.pool.connection_class(**self._links.pool.connection_kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"TASK_QUEUE_BACKEND={self.url!r}: {exc}") from exc
        reply_timeout = self._links.reply_timeout
        self._slice = BLOCK_SLICE if reply_timeout is None else min(BLOCK_SLICE, reply_timeout / 2)
        self._send = self._links.send
        self._layout_checked = False
        self._wait_lock = threading.Lock()
        self._ids_lock = threading.Lock()
        self._last_seq = 0
        #: Threads of this process in a waiting ``dequeue``, and ``interrupt`` calls so far (under the lock).
        self._waiters = 0
        self._interrupts = 0
        self._interrupt_key = f"{self.prefix}:interrupt:{uuid.uuid4().hex}"

    def _error(self, exc: RedisError) -> BackendError:
        message = str(exc)
        message = scrub(message, self._secrets)
        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            return BackendError(
                f"Redis at {self.url} is unreachable: {message} (is it running, and is TASK_QUEUE_BACKEND"
                " right?)"
            )
        if "maxmemory" in message:
            message += (
                " (Redis is full: raise its maxmemory, or make room: shorter TASK_QUEUE_RESULT_TTL and"
                " TASK_QUEUE_FAILED_TTL, flask queue purge)"
            )
        return BackendError(f"Redis at {self.url}: {message}")

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def _command(self, *args: str | float) -> Any:
        """Send a command and return its reply; the first one of this backend checks the key layout."""
        if not self._layout_checked:
            self._check_layout()
        return self._send(*args)

    def _check_layout(self) -> None:
        """Mark the prefix's keys as ours in layout ``LAYOUT``, or refuse keys another layout wrote."""
        try:
            found = self._send("EVALSHA", _scripts.LAYOUT_SCRIPT.sha, 0, self.prefix, LAYOUT)
        except NoScriptError:
            self._send("SCRIPT", "LOAD", _scripts.LAYOUT_SCRIPT.text)
            found = self._send("EVALSHA", _scripts.LAYOUT_SCRIPT.sha, 0, self.prefix, LAYOUT)
        if int(found) != LAYOUT:
            raise BackendError(
                f"Redis at {self.url}: the keys under prefix {self.prefix!r} have key layout {found},"
                f" written by another version of Flask-Queue; this one uses layout {LAYOUT}. Run one version"
                " at a time on a prefix, or give this one another prefix (?prefix=...): see 'Upgrading' in"
                " the Redis docs"
            )
        self._layout_checked = True

    def _eval(self, script: _scripts.Script, args: Sequence[str | float]) -> Any:
        """Run a script (loading it first if this Redis does not have it: new, restarted, or flushed)."""
        try:
            return self._command("EVALSHA", script.sha, 0, *args)
        except NoScriptError:
            self._send("SCRIPT", "LOAD", script.text)
            return self._send("EVALSHA", script.sha, 0, *args)

    # -- the contract --------------------------------------------------------------------------------------

    @_reporting
    def enqueue(self, records: Sequence[JobRecord], *, on_conflict: str = "return") -> list[str]:
        if on_conflict not in ON_CONFLICT:
            raise ValueError(
                f"on_conflict must be one of {', '.join(map(repr, ON_CONFLICT))}, not {on_conflict!r}"
            )
        if not records:
            return []
        if any(r.key is not None for r in records):
            ids = self._enqueue_keyed(records, on_conflict, "", "")
            assert ids is not None  # only a schedule's tick stores nothing
            return ids
        new = self._new_ids(len(records))
        args: list[str | float] = [self.prefix, time.time(), len(records)]
        for (job_id, seq), r in zip(new, records, strict=True):
            args += (
                job_id,
                seq,
                r.task,
                r.queue,
                r.payload,
                r.priority,
                r.retries,
                _scripts.optional(r.timeout),
                r.eta,
                r.enqueued_at,
                _scripts.optional(r.start_by),
            )
        self._eval(_scripts.ENQUEUE, args)
        return [job_id for job_id, _ in new]

    def _enqueue_keyed(
        self, records: Sequence[JobRecord], on_conflict: str, schedule: str, tick: str | float
    ) -> list[str] | None:
        """Store ``records``, some of which have a key, as ``on_conflict`` says, with ``ENQUEUE_KEYED``; with a
        ``schedule``, only if ``tick`` is its next (``None`` if not)."""
        new = self._new_ids(len(records))
        args: list[str | float] = [self.prefix, time.time(), len(records), on_conflict, schedule, tick]
        for (job_id, seq), r in zip(new, records, strict=True):
            args += (
                job_id,
                seq,
                r.task,
                r.queue,
                r.payload,
                r.priority,
                r.retries,
                _scripts.optional(r.timeout),
                r.eta,
                r.enqueued_at,
                _scripts.optional(r.key),
                _scripts.optional(r.start_by),
            )
        reply = self._eval(_keyed.ENQUEUE_KEYED, args)
        if reply is None:
            return None
        if len(reply) > 1:
            raise duplicate(records[int(reply[1]) - 1], reply[2])
        return list(reply[0])

    @_reporting
    def enqueue_tick(self, schedule: str, tick: float, records: Sequence[JobRecord]) -> list[str] | None:
        return self._enqueue_keyed(records, "return", schedule, float(tick))

    @_reporting
    def schedules(self) -> list[ScheduleState]:
        reply = self._command("HGETALL", f"{self.prefix}:schedules")
        # A flat list of names and values (RESP2), or a map if the URL asked for RESP3 (protocol=3).
        pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
        states = []
        for name, value in pairs:
            paused, _, tick = value.partition(":")
            states.append(ScheduleState(name, float(tick) if tick else None, paused == "1"))
        return sorted(states, key=lambda state: state.name)

    @_reporting
    def pause_schedule(self, schedule: str, paused: bool) -> None:
        self._eval(_keyed.PAUSE_SCHEDULE, [self.prefix, schedule, "1" if paused else "0"])

    def _new_ids(self, count: int) -> list[tuple[str, int]]:
        """Ids for ``count`` new jobs, and their sequence numbers.

        The sequence number is the time in microseconds, made to grow by at least one per job in this
        process; the id is it in hex, then 32 random bits. Ids sort like enqueue times (FIFO within a
        priority, by the producers' clocks, which the contract already has agree for etas and leases) and
        are made here rather than by an INCR in Redis, which costs the enqueue script a fifth of its time.
        Two processes that meet on one microsecond still make different ids, but for one in 4 billion.
        """
        with self._ids_lock:
            first = max(time.time_ns() // 1000, self._last_seq + 1)
            self._last_seq = first + count - 1
        bits = random.getrandbits
        return [(f"{seq:014x}-{bits(32):08x}", seq) for seq in range(first, first + count)]

    @_reporting
    def dequeue(
        self, queues: Collection[str] | None, worker: str, lease: float, timeout: float
    ) -> JobRecord | None:
        names = None if queues is None else list(queues)
        if timeout <= 0:
            taken, _, _ = self._take_jobs(names, worker, lease, 1)
            return taken[0] if taken else None
        deadline = time.monotonic() + timeout
        with self._wait_lock:
            self._waiters += 1
            interrupts = self._interrupts
        try:
            while True:
                now = time.time()
                taken, next_at, known = self._take_jobs(names, worker, lease, 1)
                if taken:
                    return taken[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._interrupts != interrupts:
                    return None
                pause = min(remaining, self._slice)
                if next_at is not None:
                    pause = min(pause, next_at - now)
                # A job due now was made ready by the script above: look again at once (a BLPOP of 0 would
                # wait for ever).
                if pause >= 0.001:
                    lists = [self._interrupt_key, *(self._key("wake", name) for name in known)]
                    if names is None:
                        lists.append(f"{self.prefix}:wakeall")
                    self._command("BLPOP", *lists, pause)
                if self._interrupts != interrupts:
                    return None
        finally:
            with self._wait_lock:
                self._waiters -= 1

    @_reporting
    def dequeue_batch(
        self, queues: Collection[str] | None, worker: str, lease: float, limit: int
    ) -> list[JobRecord]:
        return self._take_jobs(None if queues is None else list(queues), worker, lease, limit)[0]

    def _take_jobs(
        self, names: list[str] | None, worker: str, lease: float, limit: int
    ) -> tuple[list[JobRecord], float | None, list[str]]:
        """Lease up to ``limit`` jobs; when there are none, also say when one may be due and which queues the
        wait watches."""
        now = time.time()
        args: list[str | float] = [
            self.prefix,
            now,
            now + lease,
            worker,
            limit,
            "1" if names is None else "0",
            *(names or ()),
        ]
        reply = self._eval(_scripts.TAKE, args)
        taken = [_scripts.record(values) for values in reply[0]]
        if taken:
            return taken, None, []
        next_at = None if reply[1] is None else float(reply[1])
        return taken, next_at, reply[2]

    @_reporting
    def renew(self, job_id: str, worker: str, lease: float) -> bool:
        if not _valid(job_id):
            return False
        return bool(
            self._eval(_scripts.RENEW, [self.prefix, time.time(), job_id, worker, time.time() + lease])
        )

    @_reporting
    def finish(
        self,
        job_id: str,
        worker: str,
        status: JobStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        expires_at: float | None = None,
    ) -> JobRecord | None:
        if not _valid(job_id):
            return None
        args: list[str | float] = [self.prefix, time.time(), worker, JobStatus(status).value, 1, job_id]
        args += (
            _scripts.optional(result),
            _scripts.optional(error),
            _scripts.optional(traceback),
            _scripts.optional(expires_at),
        )
        [values] = self._eval(_scripts.FINISH, args)
        if values is None:
            return None
        record = _scripts.record(values)
        self.finished_here(record)
        return record

    @_reporting
    def finish_batch(
        self, worker: str, succeeded: Sequence[tuple[str, str | None, float | None]]
    ) -> list[JobRecord | None]:
        args: list[str | float] = [
            self.prefix,
            time.time(),
            worker,
            JobStatus.SUCCEEDED.value,
            len(succeeded),
        ]
        for job_id, result, expires_at in succeeded:
            # An id of no job of ours finds no hash: the script answers nil for it like for a lost lease.
            args += (job_id, _scripts.optional(result), "", "", _scripts.optional(expires_at))
        replies = self._eval(_scripts.FINISH, args) if succeeded else []
        records = [None if values is None else _scripts.record(values) for values in replies]
        for record in records:
            if record is not None:
                self.finished_here(record)
        return records

    def fail_unrunnable(self, job_id: str, worker: str, error: str) -> JobRecord | None:
        return self.finish(job_id, worker, JobStatus.FAILED, error=error, traceback="")

    @_reporting
    def retry_later(self, job_id: str, worker: str, eta: float, error: str, traceback: str) -> bool:
        if not _valid(job_id):
            return False
        return bool(
            self._eval(_scripts.PUT_BACK, [self.prefix, time.time(), job_id, worker, eta, error, traceback])
        )

    @_reporting
    def release(self, job_id: str, worker: str) -> bool:
        if not _valid(job_id):
            return False
        return bool(self._eval(_scripts.PUT_BACK, [self.prefix, time.time(), job_id, worker]))

    def interrupt(self) -> None:
        """Make this process's waiting dequeues return now. Never raises: with Redis unreachable, each waiting
        dequeue fails on its own (and a worker stopping must not fail here)."""
        with self._wait_lock:
            self._interrupts += 1
            waiters = self._waiters
        if not waiters:
            return
        try:
            pipe = self._links.client.pipeline(transaction=True)
            pipe.rpush(self._interrupt_key, *(["1"] * waiters))
            pipe.pexpire(self._interrupt_key, INTERRUPT_TTL_MS)
            pipe.execute()
        except RedisError:
            pass

    def after_fork(self) -> None:
        # The parent's sockets stay open for the parent (redis-py only shuts a socket down in the process that
        # opened it); the child talks through a pool of its own.
        self._connect()

    def close(self) -> None:
        """Close every connection; later calls raise ``BackendError``. A thread in the middle of a command
        (a worker still running a job given back at shutdown) keeps its connection until the reply: redis-py's
        connections must not be closed under the thread reading them."""
        self.interrupt()
        self._links.close()

    @_reporting
    def get(self, job_id: str) -> JobRecord | None:
        if not _valid(job_id):
            return None
        values = self._command("HMGET", self._key("job", job_id), *_scripts.FIELDS)
        if values[0] is None:
            return None
        return _scripts.record([*values, job_id], time.time())

    @_reporting
    def cancel(self, job_id: str) -> bool:
        if not _valid(job_id):
            return False
        values = self._eval(_scripts.CANCEL, [self.prefix, time.time(), job_id])
        if values is None:
            return False
        self.finished_here(_scripts.record(values))
        return True

    @_reporting
    def requeue(self, job_id: str) -> bool:
        if not _valid(job_id):
            return False
        return bool(self._eval(_scripts.REQUEUE, [self.prefix, time.time(), job_id]))

    @_reporting
    def purge(self, queue: str | None, statuses: Collection[JobStatus]) -> int:
        # Running jobs are never deleted: RUNNING has no index kind here.
        kinds = sorted(
            {_scripts.STATUS_KINDS[s] for s in map(JobStatus, statuses) if s in _scripts.STATUS_KINDS}
        )
        if not kinds:
            return 0
        deleted = 0
        while True:
            args: list[str | float] = [self.prefix, time.time(), "1" if queue is None else "0", *kinds, "--"]
            if queue is not None:
                args.append(queue)
            count, more = self._eval(_scripts.PURGE, args)
            deleted += int(count)
            if not more:
                return deleted

    @_reporting
    def size(self, queue: str | None = None) -> int:
        args: list[str | float] = [self.prefix, time.time(), "1" if queue is None else "0"]
        if queue is not None:
            args.append(queue)
        return int(self._eval(_reads.SIZE, args))

    @_reporting
    def counts(self) -> dict[str, dict[str, int]]:
        flat = self._eval(_reads.COUNTS, [self.prefix, time.time()])
        order = [str(status) for status in JobStatus]  # the script's order
        width = len(order) + 1
        counts: dict[str, dict[str, int]] = {}
        for start in range(0, len(flat), width):
            numbers = [int(n) for n in flat[start + 1 : start + width]]
            if any(numbers):
                counts[flat[start]] = dict(zip(order, numbers, strict=True))
        return counts

    @_reporting
    def jobs(
        self,
        *,
        status: JobStatus | None = None,
        queue: str | None = None,
        limit: int = 50,
        offset: int = 0,
        preview: int | None = None,
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        cut = 0 if preview is None else max(int(preview), 1)
        now = time.time()
        if status is not None and JobStatus(status) in FINISHED:
            args: list[str | float] = [
                self.prefix,
                now,
                JobStatus(status).value,
                offset,
                limit,
                cut,
                "1" if queue is None else "0",
            ]
            if queue is not None:
                args.append(queue)
            return [_scripts.record(values, now) for values in self._eval(_reads.FINISHED_PAGE, args)]
        if status is None and queue is None:
            return [
                _scripts.record(values, now)
                for values in self._eval(_reads.PAGE, [self.prefix, offset, limit, cut])
            ]
        # Filtered by queue or by a status that changes with time: look through the jobs, newest first, a
        # chunk per script; the newest jobs are the ones queued, scheduled and running, so this ends soon.
        wanted = "" if status is None else JobStatus(status).value
        found: list[JobRecord] = []
        below: str | None = "+inf"
        seen = 0
        while below is not None and len(found) < offset + limit:
            reply = self._eval(_reads.SCAN, [self.prefix, now, below, seen, queue or "", wanted, cut])
            found += (_scripts.record(values, now) for values in reply[0])
            below, seen = (reply[1], int(reply[2])) if len(reply) > 1 else (None, 0)
        return found[offset : offset + limit]

    @_reporting
    def expire(self) -> int:
        deleted = 0
        while True:
            count = int(self._eval(_scripts.EXPIRE, [self.prefix, time.time()]))
            deleted += int(count)
            if count < _scripts.CHUNK:
                return deleted

    @_reporting
    def beat(self, info: WorkerInfo) -> None:
        self._command("HSET", f"{self.prefix}:workers", info.name, info.to_json())

    @_reporting
    def workers(self) -> list[WorkerInfo]:
        now = time.time()
        beats = [WorkerInfo.from_json(text) for text in self._command("HVALS", f"{self.prefix}:workers")]
        stale = [info.name for info in beats if info.seen_at + info.ttl < now]
        if stale:
            self._command("HDEL", f"{self.prefix}:workers", *stale)
        return sorted((info for info in beats if info.seen_at + info.ttl >= now), key=lambda info: info.name)

    @_reporting
    def forget(self, name: str) -> None:
        self._command("HDEL", f"{self.prefix}:workers", name)


def _valid(job_id: object) -> bool:
    """Whether ``job_id`` is spelled as this backend spells ids (anything else names no job)."""
    return isinstance(job_id, str) and _scripts.ID.fullmatch(job_id) is not None
