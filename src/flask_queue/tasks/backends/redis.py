"""``redis://`` and ``rediss://``: jobs in Redis, shared by every process of every machine that reaches it.

Needs Redis 7.0 or later. Every state change is one Lua script (``EVALSHA``), so it is atomic: two workers
never take the same job, and a job is never seen half moved; a full Redis (``maxmemory``) refuses a script
before it starts, never halfway (see ``_lua``). A script is one round trip whatever it does, so ``enqueue``
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
    P:expires        zset    finished jobs that have an ``expires_at``, scored by it: ``expire()``
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

Each thread talks to Redis on a connection of its own (``_Link``), made with the settings of one redis-py pool
per backend and process (``after_fork`` makes a fresh one). Redis that cannot be reached raises
``BackendError`` after a short connect timeout, never retried here (a command that failed may have run; the
worker retries with its own backoff); a connection that Redis closed meanwhile (a restart) is replaced before
its next command. Redis's own key expiry is not used for results: a finished job is in several keys, and a
hash that vanished under them would leave them counting a ghost; ``expire()`` (every worker runs it every
minute) deletes a job from every key at once.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Sequence
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import ConnectionPool, Redis, RedisError
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ...exceptions import BackendError, ConfigurationError
from ..job import FINISHED, JobRecord, JobStatus
from .base import LOST_ERROR, MAX_LOST, Backend, WorkerInfo, hide_secrets, scrub

__all__ = ["RedisBackend"]

Params = ParamSpec("Params")
T = TypeVar("T")

#: Seconds to wait for a TCP (and TLS) connection to Redis before ``BackendError``; a URL's
#: ``socket_connect_timeout`` overrides it.
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for a reply; a URL's ``socket_timeout`` overrides it.
REPLY_TIMEOUT = 10.0
#: Longest single BLPOP: a wait longer than this is made of several, each well within the reply timeout.
BLOCK_SLICE = 5.0
#: Jobs ``purge`` and ``expire`` delete per script, and jobs ``jobs()`` looks at per script: each script
#: holds Redis for a millisecond or so, never for a whole large queue.
CHUNK = 1000
#: The key layout this module reads and writes (``P:layout``); a change of layout is a new number.
LAYOUT = 1
#: Seconds after which an unused connection is checked, before its next command, for a close by the server.
STALE_AFTER = 1.0
#: Milliseconds a leftover interrupt token lives (one not taken because its dequeue returned on its own).
INTERRUPT_TTL_MS = 5000

#: The hash fields of a job, in the order the scripts return them (the id comes last). ``attempts`` and
#: ``lost`` are absent until they count something.
_FIELDS = (
    "task", "queue", "payload", "priority", "status", "attempts", "retries", "timeout", "eta",
    "enqueued_at", "started_at", "finished_at", "lease_until", "worker", "result", "error", "traceback",
    "expires_at", "lost",
)  # fmt: skip
_ID = re.compile(r"[0-9a-f]{14}-[0-9a-f]{8}")

# The scripts' building blocks: each script takes only those it calls (defining a Lua function costs time at
# every call). ARGV[1] is always the prefix. An optional value travels as "" for None and "=" + the value
# otherwise, since Redis arguments have no None.
_KEY = """
local P = ARGV[1]
local function key(kind, name) return P .. ':' .. kind .. ':' .. name end
"""
_RECORD = f"""
local FIELDS = {{{", ".join(repr(field) for field in _FIELDS)}}}
local function record(id)
  local r = redis.call('HMGET', key('job', id), unpack(FIELDS))
  r[#FIELDS + 1] = id
  return r
end
"""
# A job's sequence number: the microseconds its id starts with (see ``RedisBackend._new_ids``).
_SEQ = """
local function seq(id) return tonumber(string.sub(id, 1, 14), 16) end
"""
_WAKE = """
local function token(list)
  if redis.call('LLEN', list) == 0 then redis.call('RPUSH', list, 1) return true end
  return false
end
-- A wake-up token stands for a registered queue (expire() drops both together), so the queue is registered
-- only when a token is pushed: an enqueue while a token waits (no idle worker) skips the SADD.
local function wake(queue)
  if token(key('wake', queue)) and redis.call('SADD', P .. ':queues', queue) == 1 then
    token(P .. ':wakeall')
  end
end
"""
_HELD = """
local function held(job, worker)
  local st = redis.call('HMGET', job, 'status', 'worker', 'queue')
  if st[1] == 'running' and st[2] == worker then return st[3] end
  return false
end
"""
_SCHEDULE = """
local function schedule(id, queue, eta, now)
  if tonumber(eta) > tonumber(now) then
    redis.call('ZADD', key('delayed', queue), eta, id)
  else
    redis.call('ZADD', key('ready', queue), redis.call('HGET', key('job', id), 'priority'), id)
  end
  wake(queue)
end
"""
_PROMOTE = """
local function promote(queue, now)
  local delayed = key('delayed', queue)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, CHUNK)
  if #due > 0 then
    local ready = key('ready', queue)
    for _, id in ipairs(due) do
      redis.call('ZADD', ready, redis.call('HGET', key('job', id), 'priority'), id)
    end
    redis.call('ZREM', delayed, unpack(due))
  end
end
"""

_CONSTANTS = f"local CHUNK, MAX_LOST, LOST_ERROR = {CHUNK}, {MAX_LOST}, [==[{LOST_ERROR}]==]\n"


class _Script(NamedTuple):
    text: str
    sha: str


def _lua(*parts: str, flags: str = "") -> _Script:
    """A script: the prefix, the key helper and the constants, then ``parts`` (helpers, then its body).

    The ``#!lua`` line makes Redis (7.0 and later) refuse a whole script that may write when it is out of
    memory, before the script changes anything. Without it Redis would refuse only the script's first write
    that may grow memory, after earlier writes (a ZPOPMIN, a ZREM) took effect: a job taken off one key and
    never put on the next. ``flags``: ``no-writes`` for the scripts that only read (they run whatever the
    memory), ``allow-oom`` for those that delete (expire, purge), so that a full Redis can be emptied.
    """
    text = f"#!lua flags={flags}\n" if flags else "#!lua\n"
    text += _KEY + _CONSTANTS + "".join(parts)
    return _Script(text, hashlib.sha1(text.encode()).hexdigest())


# ARGV: prefix, layout. Returns the layout of the prefix's keys, marking them with ours if they have none
# (even in a full Redis: a process's first call must not fail there for this).
_LAYOUT = _lua(
    """
local layout = redis.call('GET', P .. ':layout')
if layout then return layout end
redis.call('SET', P .. ':layout', ARGV[2])
return ARGV[2]
""",
    flags="allow-oom",
)

# ARGV: prefix, now, count, then per job: id, sequence number, task, queue, payload, priority, retries,
# timeout, eta, enqueued_at.
_ENQUEUE = _lua(
    _WAKE,
    """
local now, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local woken = {}
for i = 1, n do
  local b = 3 + (i - 1) * 10
  local id, queue, eta = ARGV[b + 1], ARGV[b + 4], ARGV[b + 9]
  local job = key('job', id)
  redis.call('HSET', job, 'task', ARGV[b + 3], 'queue', queue, 'payload', ARGV[b + 5],
    'priority', ARGV[b + 6], 'status', 'queued', 'retries', ARGV[b + 7], 'eta', eta,
    'enqueued_at', ARGV[b + 10])
  if ARGV[b + 8] ~= '' then redis.call('HSET', job, 'timeout', string.sub(ARGV[b + 8], 2)) end
  redis.call('ZADD', P .. ':jobs', ARGV[b + 2], id)
  if tonumber(eta) > now then
    redis.call('ZADD', key('delayed', queue), eta, id)
  else
    redis.call('ZADD', key('ready', queue), ARGV[b + 6], id)
  end
  if not woken[queue] then
    woken[queue] = true
    wake(queue)
  end
end
return n
""",
)

# ARGV: prefix, now, lease_until, worker, limit, every queue (1/0), queue names. Returns {records} when it
# leased some, else {{}, the earliest eta or lease_until of these queues (or nil), the queue names}.
_TAKE = _lua(
    _RECORD,
    _SEQ,
    _WAKE,
    _PROMOTE,
    """
local now, lease_until, worker, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local queues
if ARGV[6] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 7)} end
for _, queue in ipairs(queues) do
  -- Lapsed leases: the job is ready again, or failed once it lost too many.
  local running = key('running', queue)
  local lapsed = redis.call('ZRANGEBYSCORE', running, '-inf', '(' .. now, 'LIMIT', 0, CHUNK)
  for _, id in ipairs(lapsed) do
    local job = key('job', id)
    redis.call('ZREM', running, id)
    redis.call('HDEL', job, 'lease_until', 'worker')
    if redis.call('HINCRBY', job, 'lost', 1) >= MAX_LOST then
      redis.call('HSET', job, 'status', 'failed', 'error', LOST_ERROR, 'traceback', '', 'finished_at', now)
      redis.call('ZADD', key('failed', queue), seq(id), id)
    else
      redis.call('HSET', job, 'status', 'queued', 'eta', now)
      redis.call('ZADD', key('ready', queue), redis.call('HGET', job, 'priority'), id)
    end
  end
  promote(queue, now)
end
local picked = {}
if #queues == 1 then
  local popped = redis.call('ZPOPMIN', key('ready', queues[1]), limit)
  for i = 1, #popped, 2 do picked[#picked + 1] = {popped[i], queues[1]} end
else
  local heads = {}
  for _, queue in ipairs(queues) do
    local head = redis.call('ZRANGE', key('ready', queue), 0, limit - 1, 'WITHSCORES')
    for i = 1, #head, 2 do heads[#heads + 1] = {tonumber(head[i + 1]), head[i], queue} end
  end
  table.sort(heads, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  for i = 1, math.min(limit, #heads) do
    redis.call('ZREM', key('ready', heads[i][3]), heads[i][2])
    picked[#picked + 1] = {heads[i][2], heads[i][3]}
  end
end
local out = {}
for _, pick in ipairs(picked) do
  local id, job = pick[1], key('job', pick[1])
  redis.call('HINCRBY', job, 'attempts', 1)
  redis.call('HSET', job, 'status', 'running', 'started_at', now, 'lease_until', lease_until,
    'worker', worker)
  redis.call('ZADD', key('running', pick[2]), lease_until, id)
  out[#out + 1] = record(id)
end
if #out > 0 then
  -- Ready jobs left behind: wake another idle worker for them.
  for _, queue in ipairs(queues) do
    if redis.call('EXISTS', key('ready', queue)) == 1 then wake(queue) end
  end
  return {out}
end
local next_at = false
for _, queue in ipairs(queues) do
  for _, kind in ipairs({'delayed', 'running'}) do
    local first = redis.call('ZRANGE', key(kind, queue), 0, 0, 'WITHSCORES')
    if first[2] and (not next_at or tonumber(first[2]) < tonumber(next_at)) then next_at = first[2] end
  end
end
return {out, next_at, queues}
""",
)

# ARGV: prefix, now, worker, status, count, then per job: id, result, error, traceback, expires_at (optional
# values). Returns per job its record, or nil where the worker does not hold its lease.
_FINISH = _lua(
    _RECORD,
    _SEQ,
    _HELD,
    """
local now, worker, status, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
for i = 1, n do
  local b = 5 + (i - 1) * 5
  local id = ARGV[b + 1]
  local job = key('job', id)
  local queue = held(job, worker)
  if queue then
    local sets, dels = {'status', status, 'finished_at', now}, {'lease_until'}
    for f, field in ipairs({'result', 'error', 'traceback', 'expires_at'}) do
      local value = ARGV[b + 1 + f]
      if value == '' then dels[#dels + 1] = field else
        sets[#sets + 1] = field
        sets[#sets + 1] = string.sub(value, 2)
      end
    end
    redis.call('HSET', job, unpack(sets))
    redis.call('HDEL', job, unpack(dels))
    redis.call('ZREM', key('running', queue), id)
    redis.call('ZADD', key(status, queue), seq(id), id)
    if ARGV[b + 5] ~= '' then redis.call('ZADD', P .. ':expires', string.sub(ARGV[b + 5], 2), id) end
    out[i] = record(id)
  else
    out[i] = false
  end
end
return out
""",
)

# ARGV: prefix, now, id, worker, lease_until. Returns 1 if renewed.
_RENEW = _lua(
    _HELD,
    """
local job = key('job', ARGV[3])
local queue = held(job, ARGV[4])
if not queue then return 0 end
redis.call('HSET', job, 'lease_until', ARGV[5])
redis.call('ZADD', key('running', queue), ARGV[5], ARGV[3])
return 1
""",
)

# ARGV: prefix, now, id, worker, eta, error, traceback (retry_later) or nothing more (release).
_PUT_BACK = _lua(
    _HELD,
    _WAKE,
    _SCHEDULE,
    """
local now, id = ARGV[2], ARGV[3]
local job = key('job', id)
local queue = held(job, ARGV[4])
if not queue then return 0 end
redis.call('ZREM', key('running', queue), id)
redis.call('HDEL', job, 'worker', 'lease_until')
local eta = ARGV[5]
if eta then
  redis.call('HSET', job, 'status', 'queued', 'eta', eta, 'error', ARGV[6], 'traceback', ARGV[7])
else
  redis.call('HINCRBY', job, 'attempts', -1)
  redis.call('HSET', job, 'status', 'queued')
  eta = redis.call('HGET', job, 'eta')
end
schedule(id, queue, eta, now)
return 1
""",
)

# ARGV: prefix, now, id. Returns the cancelled job's record, or nil if it was not queued.
_CANCEL = _lua(
    _RECORD,
    _SEQ,
    """
local now, id = ARGV[2], ARGV[3]
local job = key('job', id)
local st = redis.call('HMGET', job, 'status', 'queue')
if st[1] ~= 'queued' then return false end
redis.call('HSET', job, 'status', 'cancelled', 'finished_at', now)
redis.call('ZREM', key('ready', st[2]), id)
redis.call('ZREM', key('delayed', st[2]), id)
redis.call('ZADD', key('cancelled', st[2]), seq(id), id)
return record(id)
""",
)

# ARGV: prefix, now, id. Returns 1 if requeued.
_REQUEUE = _lua(
    _WAKE,
    _SCHEDULE,
    """
local now, id = ARGV[2], ARGV[3]
local job = key('job', id)
local st = redis.call('HMGET', job, 'status', 'queue')
if st[1] ~= 'failed' and st[1] ~= 'cancelled' then return 0 end
redis.call('ZREM', key(st[1], st[2]), id)
redis.call('ZREM', P .. ':expires', id)
redis.call('HSET', job, 'status', 'queued', 'attempts', 0, 'lost', 0, 'eta', now)
redis.call('HDEL', job, 'finished_at', 'expires_at', 'lease_until', 'worker')
schedule(id, st[2], now, now)
return 1
""",
)

# ARGV: prefix, now, every queue (1/0), queue names. Returns the jobs ready now.
_SIZE = _lua(
    """
local now = ARGV[2]
local queues
if ARGV[3] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 4)} end
local n = 0
for _, queue in ipairs(queues) do
  n = n + redis.call('ZCARD', key('ready', queue)) + redis.call('ZCOUNT', key('delayed', queue), '-inf', now)
end
return n
""",
    flags="no-writes",
)

# ARGV: prefix, now. Returns {queue, queued, scheduled, running, succeeded, failed, cancelled, ...}.
_COUNTS = _lua(
    """
local now = ARGV[2]
local out = {}
for _, queue in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
  local delayed = key('delayed', queue)
  out[#out + 1] = queue
  out[#out + 1] = redis.call('ZCARD', key('ready', queue)) + redis.call('ZCOUNT', delayed, '-inf', now)
  out[#out + 1] = redis.call('ZCOUNT', delayed, '(' .. now, '+inf')
  for _, kind in ipairs({'running', 'succeeded', 'failed', 'cancelled'}) do
    out[#out + 1] = redis.call('ZCARD', key(kind, queue))
  end
end
return out
""",
    flags="no-writes",
)

# ARGV: prefix, offset, limit. Returns the records of P:jobs from rank ``offset`` on, newest first.
_PAGE = _lua(
    _RECORD,
    """
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', P .. ':jobs', ARGV[2], ARGV[2] + ARGV[3] - 1)) do
  local r = record(id)
  if r[1] then out[#out + 1] = r end
end
return out
""",
    flags="no-writes",
)

# ARGV: prefix, now, below (a score: '+inf' at first), seen (jobs of score ``below`` looked at already), queue
# or '', status or ''. Looks at up to CHUNK jobs of P:jobs from ``below`` down, newest first, past the ``seen``
# first ones; returns {the records that match, the last score looked at, how many of that score were looked
# at} (only {the records} at the end). A cursor by score, unlike one by rank, is not shifted by jobs enqueued
# meanwhile. Producers that number jobs in the same microsecond give them one score, so a chunk may end
# between jobs of one score: the count is how the next chunk starts after those seen, never skipping the rest.
_SCAN = _lua(
    _RECORD,
    """
local now, queue, status = tonumber(ARGV[2]), ARGV[5], ARGV[6]
local ids = redis.call('ZREVRANGEBYSCORE', P .. ':jobs', ARGV[3], '-inf', 'WITHSCORES', 'LIMIT', ARGV[4], CHUNK)
local out = {}
for i = 1, #ids, 2 do
  local r = record(ids[i])
  local st = r[5]
  if st == 'queued' and tonumber(r[9]) > now then st = 'scheduled' end
  if r[1] and (queue == '' or r[2] == queue) and (status == '' or st == status) then out[#out + 1] = r end
end
if #ids < 2 * CHUNK then return {out} end
local last, seen = ids[#ids], 0
for i = #ids, 2, -2 do
  if ids[i] ~= last then break end
  seen = seen + 1
end
if last == ARGV[3] then seen = seen + tonumber(ARGV[4]) end
return {out, last, seen}
""",
    flags="no-writes",
)

# ARGV: prefix, status (a finished one), offset, limit, every queue (1/0), queue names. Returns the records
# of that status, newest first, from the per-queue indexes merged. Jobs of one sequence number (producers that
# numbered them in the same microsecond) are ordered by id, as within one index: a sort that left them in any
# order would put one job on two pages and another on none.
_FINISHED = _lua(
    _RECORD,
    """
local status, offset, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local queues
if ARGV[5] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 6)} end
local all = {}
for _, queue in ipairs(queues) do
  local ids = redis.call('ZREVRANGE', key(status, queue), 0, offset + limit - 1, 'WITHSCORES')
  for i = 1, #ids, 2 do all[#all + 1] = {tonumber(ids[i + 1]), ids[i]} end
end
table.sort(all, function(a, b) if a[1] ~= b[1] then return a[1] > b[1] end return a[2] > b[2] end)
local out = {}
for i = offset + 1, math.min(offset + limit, #all) do
  local r = record(all[i][2])
  if r[1] then out[#out + 1] = r end
end
return out
""",
    flags="no-writes",
)

# ARGV: prefix, now, every queue (1/0), then the index kinds to empty ('ready', 'delayed', 'succeeded', ...)
# up to '--', then queue names. Deletes up to CHUNK jobs; returns {deleted, 1 if more may remain}.
_PURGE = _lua(
    _PROMOTE,
    """
local now = ARGV[2]
local kinds, queues, i = {}, {}, 4
while ARGV[i] ~= '--' do kinds[#kinds + 1] = ARGV[i]; i = i + 1 end
if ARGV[3] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, i + 1)} end
local budget, deleted = CHUNK, 0
for _, queue in ipairs(queues) do
  promote(queue, now)
  for _, kind in ipairs(kinds) do
    local index = key(kind, queue)
    local ids = redis.call('ZRANGE', index, 0, budget - deleted - 1)
    if #ids > 0 then
      for _, id in ipairs(ids) do redis.call('DEL', key('job', id)) end
      redis.call('ZREM', index, unpack(ids))
      redis.call('ZREM', P .. ':jobs', unpack(ids))
      redis.call('ZREM', P .. ':expires', unpack(ids))
      deleted = deleted + #ids
      if deleted == budget then return {deleted, 1} end
    end
  end
end
return {deleted, 0}
""",
    flags="allow-oom",
)

# ARGV: prefix, now. Deletes up to CHUNK finished jobs whose expires_at passed; returns how many. Once none
# are left it forgets the queue names that have no job any more.
_EXPIRE = _lua(
    """
local now = ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', P .. ':expires', '-inf', now, 'LIMIT', 0, CHUNK)
for _, id in ipairs(ids) do
  local job = key('job', id)
  local st = redis.call('HMGET', job, 'status', 'queue')
  if st[1] == 'succeeded' or st[1] == 'failed' or st[1] == 'cancelled' then
    redis.call('DEL', job)
    redis.call('ZREM', P .. ':jobs', id)
    redis.call('ZREM', key(st[1], st[2]), id)
  end
end
if #ids > 0 then redis.call('ZREM', P .. ':expires', unpack(ids)) end
if #ids < CHUNK then
  for _, queue in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
    local kinds, empty = {'ready', 'delayed', 'running', 'succeeded', 'failed', 'cancelled'}, true
    for _, kind in ipairs(kinds) do
      if redis.call('EXISTS', key(kind, queue)) == 1 then empty = false; break end
    end
    if empty then
      redis.call('SREM', P .. ':queues', queue)
      redis.call('DEL', key('wake', queue))
    end
  end
end
return #ids
""",
    flags="allow-oom",
)

_STATUS_KINDS = {
    JobStatus.QUEUED: "ready",
    JobStatus.SCHEDULED: "delayed",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


class _Link:
    """A thread's connection to Redis, closed when the thread ends and its thread-local storage goes.

    The connection is made apart from the pool's, which would keep it for ever: a server that starts a
    thread per request would pile up connections.
    """

    __slots__ = ("__weakref__", "busy", "conn", "used")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        #: When it last carried a command (``time.monotonic()``).
        self.used = time.monotonic()
        #: Whether its thread is between a command and its reply: only that thread may close it then.
        self.busy = False

    def __del__(self) -> None:
        self.conn.disconnect()


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
        self._redis_url = urlunsplit(
            parts._replace(query=urlencode([(name, value) for name, value in options if name != "prefix"]))
        )
        self._connect()

    def _connect(self) -> None:
        """A fresh connection pool, and fresh per-process state: thread connections, waiters, ids."""
        try:
            self._pool = ConnectionPool.from_url(
                self._redis_url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=REPLY_TIMEOUT,
                # No retries inside redis-py (it retries 3 times with a growing backoff by default): a command
                # that failed may have run, and the worker retries with its own backoff anyway.
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
        except ValueError as exc:
            raise ConfigurationError(f"TASK_QUEUE_BACKEND={self.url!r}: {exc}") from exc
        reply_timeout = self._pool.connection_kwargs.get("socket_timeout")
        self._slice = BLOCK_SLICE if reply_timeout is None else min(BLOCK_SLICE, float(reply_timeout) / 2)
        self._client = Redis(connection_pool=self._pool)
        self._local = threading.local()
        self._links: weakref.WeakSet[_Link] = weakref.WeakSet()
        self._layout_checked = False
        self._closed = False
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
            found = self._send("EVALSHA", _LAYOUT.sha, 0, self.prefix, LAYOUT)
        except NoScriptError:
            self._send("SCRIPT", "LOAD", _LAYOUT.text)
            found = self._send("EVALSHA", _LAYOUT.sha, 0, self.prefix, LAYOUT)
        if int(found) != LAYOUT:
            raise BackendError(
                f"Redis at {self.url}: the keys under prefix {self.prefix!r} have key layout {found},"
                f" written by another version of Flask-Queue; this one uses layout {LAYOUT}. Run one version"
                " at a time on a prefix, or give this one another prefix (?prefix=...): see 'Upgrading' in"
                " the Redis docs"
            )
        self._layout_checked = True

    def _send(self, *args: str | float) -> Any:
        """Send a command on this thread's own connection and return its reply.

        Each thread keeps one connection instead of taking one from the pool per command: redis-py's pool
        and retry machinery cost more CPU than the command itself (a PING: 43 us through ``Redis``, 17 us
        on a connection), and a thread only ever waits for one reply at a time.
        """
        link: _Link | None = getattr(self._local, "link", None)
        if link is None:
            link = self._local.link = _Link(self._pool.connection_class(**self._pool.connection_kwargs))
            self._links.add(link)
        link.busy = True
        try:
            # After ``busy`` is set: either close() sees the link busy and leaves it to us, or we see it closed.
            if self._closed:
                link.conn.disconnect()
                raise BackendError(f"Redis at {self.url}: this backend is closed")
            return self._exchange(link, args)
        finally:
            link.busy = False
            if self._closed:
                link.conn.disconnect()

    def _exchange(self, link: _Link, args: Sequence[str | float]) -> Any:
        if time.monotonic() - link.used > STALE_AFTER:
            # A connection idle for a while may have been closed by the server (a restart, a timeout):
            # find out before sending, so that the command goes on a fresh one instead of failing.
            try:
                stale = link.conn.can_read()
            except RedisError:
                stale = True
            if stale:
                link.conn.disconnect()
        conn = link.conn
        try:
            conn.send_packed_command([_pack(args)])
            reply = conn.read_response()
        except ResponseError:
            raise
        except BaseException:
            # Whatever stopped us between a command and its reply (a lost connection, an exception raised in
            # this thread), the connection may still owe that reply: never read it as another's.
            conn.disconnect()
            raise
        link.used = time.monotonic()
        return reply

    def _eval(self, script: _Script, args: Sequence[str | float]) -> Any:
        """Run a script (loading it first if this Redis does not have it: new, restarted, or flushed)."""
        try:
            return self._command("EVALSHA", script.sha, 0, *args)
        except NoScriptError:
            self._send("SCRIPT", "LOAD", script.text)
            return self._send("EVALSHA", script.sha, 0, *args)

    # -- the contract --------------------------------------------------------------------------------------

    @_reporting
    def enqueue(self, records: Sequence[JobRecord]) -> list[str]:
        if not records:
            return []
        ids = self._new_ids(len(records))
        args: list[str | float] = [self.prefix, time.time(), len(records)]
        for (job_id, seq), r in zip(ids, records, strict=True):
            args += (
                job_id,
                seq,
                r.task,
                r.queue,
                r.payload,
                r.priority,
                r.retries,
                "" if r.timeout is None else f"={r.timeout!r}",
                r.eta,
                r.enqueued_at,
            )
        self._eval(_ENQUEUE, args)
        return [job_id for job_id, _ in ids]

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
        reply = self._eval(_TAKE, args)
        taken = [_record(values) for values in reply[0]]
        if taken:
            return taken, None, []
        next_at = None if reply[1] is None else float(reply[1])
        return taken, next_at, reply[2]

    @_reporting
    def renew(self, job_id: str, worker: str, lease: float) -> bool:
        if not _valid(job_id):
            return False
        return bool(self._eval(_RENEW, [self.prefix, time.time(), job_id, worker, time.time() + lease]))

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
        args += (_optional(result), _optional(error), _optional(traceback), _optional(expires_at))
        [values] = self._eval(_FINISH, args)
        if values is None:
            return None
        record = _record(values)
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
            args += (job_id, _optional(result), "", "", _optional(expires_at))
        replies = self._eval(_FINISH, args) if succeeded else []
        records = [None if values is None else _record(values) for values in replies]
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
        return bool(self._eval(_PUT_BACK, [self.prefix, time.time(), job_id, worker, eta, error, traceback]))

    @_reporting
    def release(self, job_id: str, worker: str) -> bool:
        if not _valid(job_id):
            return False
        return bool(self._eval(_PUT_BACK, [self.prefix, time.time(), job_id, worker]))

    def interrupt(self) -> None:
        """Make this process's waiting dequeues return now. Never raises: with Redis unreachable, each waiting
        dequeue fails on its own (and a worker stopping must not fail here)."""
        with self._wait_lock:
            self._interrupts += 1
            waiters = self._waiters
        if not waiters:
            return
        try:
            pipe = self._client.pipeline(transaction=True)
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
        self._closed = True
        self._pool.disconnect()
        for link in list(self._links):
            if not link.busy:
                link.conn.disconnect()

    @_reporting
    def get(self, job_id: str) -> JobRecord | None:
        if not _valid(job_id):
            return None
        values = self._command("HMGET", self._key("job", job_id), *_FIELDS)
        if values[0] is None:
            return None
        return _record([*values, job_id])

    @_reporting
    def cancel(self, job_id: str) -> bool:
        if not _valid(job_id):
            return False
        values = self._eval(_CANCEL, [self.prefix, time.time(), job_id])
        if values is None:
            return False
        self.finished_here(_record(values))
        return True

    @_reporting
    def requeue(self, job_id: str) -> bool:
        if not _valid(job_id):
            return False
        return bool(self._eval(_REQUEUE, [self.prefix, time.time(), job_id]))

    @_reporting
    def purge(self, queue: str | None, statuses: Collection[JobStatus]) -> int:
        # Running jobs are never deleted: RUNNING has no index kind here.
        kinds = sorted({_STATUS_KINDS[s] for s in map(JobStatus, statuses) if s in _STATUS_KINDS})
        if not kinds:
            return 0
        deleted = 0
        while True:
            args: list[str | float] = [self.prefix, time.time(), "1" if queue is None else "0", *kinds, "--"]
            if queue is not None:
                args.append(queue)
            count, more = self._eval(_PURGE, args)
            deleted += int(count)
            if not more:
                return deleted

    @_reporting
    def size(self, queue: str | None = None) -> int:
        args: list[str | float] = [self.prefix, time.time(), "1" if queue is None else "0"]
        if queue is not None:
            args.append(queue)
        return int(self._eval(_SIZE, args))

    @_reporting
    def counts(self) -> dict[str, dict[str, int]]:
        flat = self._eval(_COUNTS, [self.prefix, time.time()])
        order = ("queued", "scheduled", "running", "succeeded", "failed", "cancelled")
        counts: dict[str, dict[str, int]] = {}
        for start in range(0, len(flat), 7):
            numbers = [int(n) for n in flat[start + 1 : start + 7]]
            if any(numbers):
                counts[flat[start]] = dict(zip(order, numbers, strict=True))
        return counts

    @_reporting
    def jobs(
        self, *, status: JobStatus | None = None, queue: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        if status is not None and JobStatus(status) in FINISHED:
            args: list[str | float] = [
                self.prefix,
                JobStatus(status).value,
                offset,
                limit,
                "1" if queue is None else "0",
            ]
            if queue is not None:
                args.append(queue)
            return [_record(values) for values in self._eval(_FINISHED, args)]
        if status is None and queue is None:
            return [_record(values) for values in self._eval(_PAGE, [self.prefix, offset, limit])]
        # Filtered by queue or by a status that changes with time: look through the jobs, newest first, a
        # chunk per script; the newest jobs are the ones queued, scheduled and running, so this ends soon.
        wanted = "" if status is None else JobStatus(status).value
        found: list[JobRecord] = []
        below: str | None = "+inf"
        seen = 0
        while below is not None and len(found) < offset + limit:
            reply = self._eval(_SCAN, [self.prefix, time.time(), below, seen, queue or "", wanted])
            found += (_record(values) for values in reply[0])
            below, seen = (reply[1], int(reply[2])) if len(reply) > 1 else (None, 0)
        return found[offset : offset + limit]

    @_reporting
    def expire(self) -> int:
        deleted = 0
        while True:
            count = int(self._eval(_EXPIRE, [self.prefix, time.time()]))
            deleted += int(count)
            if count < CHUNK:
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


def _pack(args: Sequence[str | float]) -> bytes:
    """A command in Redis's protocol. redis-py's own packer is generic and costs a fifth of an enqueue's CPU;
    ours only meets strings and numbers."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else repr(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _valid(job_id: object) -> bool:
    """Whether ``job_id`` is spelled as this backend spells ids (anything else names no job)."""
    return isinstance(job_id, str) and _ID.fullmatch(job_id) is not None


def _optional(value: str | float | None) -> str:
    return "" if value is None else f"={value!r}" if isinstance(value, float) else f"={value}"


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _record(values: Sequence[Any]) -> JobRecord:
    """The record of a script's reply: the hash fields in ``_FIELDS`` order, then the id."""
    (task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,
     finished_at, lease_until, worker, result, error, traceback, expires_at, lost,
     job_id) = values  # fmt: skip
    return JobRecord(
        id=job_id,
        task=task,
        queue=queue,
        payload=payload,
        priority=int(priority),
        status=JobStatus(status),
        attempts=int(attempts or 0),
        retries=int(retries),
        timeout=_float(timeout),
        eta=float(eta),
        enqueued_at=float(enqueued_at),
        started_at=_float(started_at),
        finished_at=_float(finished_at),
        lease_until=_float(lease_until),
        worker=worker,
        result=result,
        error=error,
        traceback=traceback,
        expires_at=_float(expires_at),
        lost=int(lost or 0),
    )
