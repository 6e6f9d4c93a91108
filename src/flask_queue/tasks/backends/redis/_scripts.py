"""The Redis backend's Lua scripts, and the reading of their replies.

Every state change of a job is one script: atomic in Redis, and one round trip whatever it does. Each script
takes only the building blocks it calls (defining a Lua function costs time at every call). ``ARGV[1]`` is
always the prefix. An optional value travels as ``""`` for ``None`` and ``"="`` + the value otherwise, since
Redis arguments have no ``None``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from ...records import JobRecord, JobStatus
from ..base import LOST_ERROR, MAX_LOST

#: Jobs ``purge`` and ``expire`` delete per script, and jobs ``jobs()`` looks at per script: each script
#: holds Redis for a millisecond or so, never for a whole large queue.
CHUNK = 1000

#: The hash fields of a job, in the order the scripts return them (the id comes last). ``attempts`` and
#: ``lost`` are absent until they count something.
FIELDS = (
    "task", "queue", "payload", "priority", "status", "attempts", "retries", "timeout", "eta",
    "enqueued_at", "started_at", "finished_at", "lease_until", "worker", "result", "error", "traceback",
    "expires_at", "lost",
)  # fmt: skip
ID = re.compile(r"[0-9a-f]{14}-[0-9a-f]{8}")

# The scripts' building blocks: each script takes only those it calls (defining a Lua function costs time at
# every call). ARGV[1] is always the prefix. An optional value travels as "" for None and "=" + the value
# otherwise, since Redis arguments have no None.
KEY = """
local P = ARGV[1]
local function key(kind, name) return P .. ':' .. kind .. ':' .. name end
"""
# A script that lists jobs sets PREVIEW from its arguments: a longer payload goes back cut to PREVIEW
# characters, its whole length after the id (Redis has no way to read part of a hash field, but the reply
# need not carry it all).
RECORD = f"""
local FIELDS = {{{", ".join(repr(field) for field in FIELDS)}}}
local PREVIEW = 0
local function record(id)
  local r = redis.call('HMGET', key('job', id), unpack(FIELDS))
  r[#FIELDS + 1] = id
  if PREVIEW > 0 and r[3] and #r[3] > PREVIEW then
    r[#FIELDS + 2] = #r[3]
    r[3] = string.sub(r[3], 1, PREVIEW)
  end
  return r
end
"""
# A job's sequence number: the microseconds its id starts with (see ``RedisBackend._new_ids``).
SEQ = """
local function seq(id) return tonumber(string.sub(id, 1, 14), 16) end
"""
WAKE = """
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
HELD = """
local function held(job, worker)
  local st = redis.call('HMGET', job, 'status', 'worker', 'queue')
  if st[1] == 'running' and st[2] == worker then return st[3] end
  return false
end
"""
SCHEDULE = """
local function schedule(id, queue, eta, now)
  if tonumber(eta) > tonumber(now) then
    redis.call('ZADD', key('delayed', queue), eta, id)
  else
    redis.call('ZADD', key('ready', queue), redis.call('HGET', key('job', id), 'priority'), id)
  end
  wake(queue)
end
"""
PROMOTE = """
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

CONSTANTS = f"local CHUNK, MAX_LOST, LOST_ERROR = {CHUNK}, {MAX_LOST}, [==[{LOST_ERROR}]==]\n"


class Script(NamedTuple):
    text: str
    sha: str


def lua(*parts: str, flags: str = "") -> Script:
    """A script: the prefix, the key helper and the constants, then ``parts`` (helpers, then its body).

    The ``#!lua`` line makes Redis (7.0 and later) refuse a whole script that may write when it is out of
    memory, before the script changes anything. Without it Redis would refuse only the script's first write
    that may grow memory, after earlier writes (a ZPOPMIN, a ZREM) took effect: a job taken off one key and
    never put on the next. ``flags``: ``no-writes`` for the scripts that only read (they run whatever the
    memory), ``allow-oom`` for those that delete (expire, purge), so that a full Redis can be emptied.
    """
    text = f"#!lua flags={flags}\n" if flags else "#!lua\n"
    text += KEY + CONSTANTS + "".join(parts)
    return Script(text, hashlib.sha1(text.encode()).hexdigest())


# ARGV: prefix, layout. Returns the layout of the prefix's keys, marking them with ours if they have none
# (even in a full Redis: a process's first call must not fail there for this).
LAYOUT_SCRIPT = lua(
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
ENQUEUE = lua(
    WAKE,
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
TAKE = lua(
    RECORD,
    SEQ,
    WAKE,
    PROMOTE,
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
FINISH = lua(
    RECORD,
    SEQ,
    HELD,
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
RENEW = lua(
    HELD,
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
PUT_BACK = lua(
    HELD,
    WAKE,
    SCHEDULE,
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
CANCEL = lua(
    RECORD,
    SEQ,
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
REQUEUE = lua(
    WAKE,
    SCHEDULE,
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
SIZE = lua(
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
COUNTS = lua(
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

# ARGV: prefix, offset, limit, preview (0: whole payloads). Returns the records of P:jobs from rank ``offset`` on, newest first.
PAGE = lua(
    RECORD,
    """
PREVIEW = tonumber(ARGV[4])
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
# or '', status or '', preview (0: whole payloads). Looks at up to CHUNK jobs of P:jobs from ``below`` down, newest first, past the ``seen``
# first ones; returns {the records that match, the last score looked at, how many of that score were looked
# at} (only {the records} at the end). A cursor by score, unlike one by rank, is not shifted by jobs enqueued
# meanwhile. Producers that number jobs in the same microsecond give them one score, so a chunk may end
# between jobs of one score: the count is how the next chunk starts after those seen, never skipping the rest.
SCAN = lua(
    RECORD,
    """
local now, queue, status = tonumber(ARGV[2]), ARGV[5], ARGV[6]
PREVIEW = tonumber(ARGV[7])
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

# ARGV: prefix, status (a finished one), offset, limit, preview (0: whole payloads), every queue (1/0), queue
# names. Returns the records
# of that status, newest first, from the per-queue indexes merged. Jobs of one sequence number (producers that
# numbered them in the same microsecond) are ordered by id, as within one index: a sort that left them in any
# order would put one job on two pages and another on none.
FINISHED_PAGE = lua(
    RECORD,
    """
local status, offset, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
PREVIEW = tonumber(ARGV[5])
local queues
if ARGV[6] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 7)} end
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
PURGE = lua(
    PROMOTE,
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
EXPIRE = lua(
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

STATUS_KINDS = {
    JobStatus.QUEUED: "ready",
    JobStatus.SCHEDULED: "delayed",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


def optional(value: str | float | None) -> str:
    return "" if value is None else f"={value!r}" if isinstance(value, float) else f"={value}"


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def record(values: Sequence[Any]) -> JobRecord:
    """The record of a script's reply: the hash fields in ``FIELDS`` order, then the id (then, for a payload
    cut by ``PREVIEW``, its whole length)."""
    size = int(values[-1]) if len(values) > len(FIELDS) + 1 else None
    (task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,
     finished_at, lease_until, worker, result, error, traceback, expires_at, lost,
     job_id) = values[: len(FIELDS) + 1]  # fmt: skip
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
        payload_size=size,
    )
