"""The Redis backend's Lua scripts, and the reading of their replies.

Every state change of a job is one script: atomic in Redis, and one round trip whatever it does. Each script
takes only the building blocks it calls (defining a Lua function costs time at every call). ``ARGV[1]`` is
always the prefix. An optional value travels as ``""`` for ``None`` and ``"="`` + the value otherwise, since
Redis arguments have no ``None``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ...records import JobRecord, JobStatus
from ..base import LOST_ERROR, MAX_LOST

#: Jobs ``purge`` and ``expire`` delete per script, and jobs ``jobs()`` looks at per script: each script
#: holds Redis for a millisecond or so, never for a whole large queue. A dequeue stores as expired up to as
#: many jobs per queue.
CHUNK = 1000

#: The hash fields of a job, in the order the scripts return them (the id comes last). ``attempts`` and
#: ``lost`` are absent until they count something; ``key`` and ``start_by`` when ``None`` (and in the jobs of
#: a namespace written before they existed).
FIELDS = (
    "task", "queue", "payload", "priority", "status", "attempts", "retries", "timeout", "eta",
    "enqueued_at", "started_at", "finished_at", "lease_until", "worker", "result", "error", "traceback",
    "expires_at", "lost", "key", "start_by",
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
local KEY_AT, START_BY_AT = {FIELDS.index("key") + 1}, {FIELDS.index("start_by") + 1}
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
# Keys (needs SEQ, WAKE). P:keys maps a task and key to the unfinished job that holds it, queued or
# running; P:keys_deferred to the job DEFERRED behind it, in P:deferred:Q until the holder ends. A field starts
# with the task's length, so that no task and key run together into another pair's field.
RELEASE = """
local function field(task, k) return #task .. ':' .. task .. ':' .. k end
-- Job ``id`` ended (or went) holding key field ``f``: the job deferred behind it, if any, holds the key now
-- and is queued (or expired, if its start_by passed while it waited); else the key is free.
local function release(f, id, now)
  local holders, waiting = P .. ':keys', P .. ':keys_deferred'
  if redis.call('HGET', holders, f) ~= id then return end
  local next_id = redis.call('HGET', waiting, f)
  local st = next_id and redis.call('HMGET', key('job', next_id), 'status', 'queue', 'eta', 'start_by', 'priority')
  if next_id then redis.call('HDEL', waiting, f) end
  if not st or st[1] ~= 'deferred' then
    redis.call('HDEL', holders, f)
    return
  end
  local job, queue = key('job', next_id), st[2]
  redis.call('ZREM', key('deferred', queue), next_id)
  if st[4] and tonumber(st[4]) < tonumber(now) then
    redis.call('HSET', job, 'status', 'expired', 'finished_at', now)
    redis.call('ZADD', key('expired', queue), seq(next_id), next_id)
    redis.call('HDEL', holders, f)
    return
  end
  redis.call('HSET', job, 'status', 'queued')
  redis.call('HSET', holders, f, next_id)
  if st[4] then redis.call('ZADD', key('start_by', queue), st[4], next_id) end
  if tonumber(st[3]) > tonumber(now) then
    redis.call('ZADD', key('delayed', queue), st[3], next_id)
  else
    redis.call('ZADD', key('ready', queue), st[5], next_id)
  end
  wake(queue)
end
"""
# Expiry (needs RELEASE). P:start_by:Q holds the queued jobs of Q never started that have a start_by, scored by
# it: the ones below now are expired, whatever their stored status says, until a script stores it.
EXPIRY = """
local function expiring(status, attempts, start_by, now)
  return status == 'queued' and (not attempts or attempts == '0') and start_by
    and tonumber(start_by) < tonumber(now)
end
local function expire_job(id, queue, now)
  local job = key('job', id)
  redis.call('ZREM', key('start_by', queue), id)
  local st = redis.call('HMGET', job, 'status', 'attempts', 'task', 'key')
  if st[1] ~= 'queued' or (st[2] and st[2] ~= '0') then return end
  redis.call('ZREM', key('ready', queue), id)
  redis.call('ZREM', key('delayed', queue), id)
  redis.call('HSET', job, 'status', 'expired', 'finished_at', now)
  redis.call('ZADD', key('expired', queue), seq(id), id)
  if st[4] then release(field(st[3], st[4]), id, now) end
end
-- Stores as expired up to ``budget`` jobs of ``queue`` that are so by the clock; returns how many.
local function expire_due(queue, now, budget)
  local ids = redis.call('ZRANGEBYSCORE', key('start_by', queue), '-inf', '(' .. now, 'LIMIT', 0, budget)
  for _, id in ipairs(ids) do expire_job(id, queue, now) end
  return #ids
end
"""
# A lapsed lease (needs RELEASE): the job is queued again, or failed once it lost too many (freeing its key).
LAPSE = """
local function lapse(id, queue, now)
  local job = key('job', id)
  redis.call('ZREM', key('running', queue), id)
  redis.call('HDEL', job, 'lease_until', 'worker')
  if redis.call('HINCRBY', job, 'lost', 1) >= MAX_LOST then
    redis.call('HSET', job, 'status', 'failed', 'error', LOST_ERROR, 'traceback', '', 'finished_at', now)
    redis.call('ZADD', key('failed', queue), seq(id), id)
    local k = redis.call('HMGET', job, 'task', 'key')
    if k[2] then release(field(k[1], k[2]), id, now) end
  else
    redis.call('HSET', job, 'status', 'queued', 'eta', now)
    redis.call('ZADD', key('ready', queue), redis.call('HGET', job, 'priority'), id)
  end
end
"""
# The holder of a key (needs EXPIRY): the job that holds field ``f`` now, or false. A holder expired by the
# clock is stored as expired first, and one that ended without freeing the key (a process of an earlier
# version finished it) lets it go: either way the job deferred behind it may hold it now.
HOLDER = """
local function holder(f, now)
  local id = redis.call('HGET', P .. ':keys', f)
  if not id then return false end
  local st = redis.call('HMGET', key('job', id), 'status', 'attempts', 'start_by', 'queue')
  if st[1] == 'running' then return id end
  if st[1] == 'queued' then
    if not expiring(st[1], st[2], st[3], now) then return id end
    expire_job(id, st[4], now)
  else
    release(f, id, now)
  end
  return redis.call('HGET', P .. ':keys', f)
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

# ARGV: prefix, now, count, then per job (none with a key: see ENQUEUE_KEYED): id, sequence number, task,
# queue, payload, priority, retries, timeout, eta, enqueued_at, start_by.
ENQUEUE = lua(
    WAKE,
    """
local now, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local woken = {}
for i = 1, n do
  local b = 3 + (i - 1) * 11
  local id, queue, eta = ARGV[b + 1], ARGV[b + 4], ARGV[b + 9]
  local job = key('job', id)
  redis.call('HSET', job, 'task', ARGV[b + 3], 'queue', queue, 'payload', ARGV[b + 5],
    'priority', ARGV[b + 6], 'status', 'queued', 'retries', ARGV[b + 7], 'eta', eta,
    'enqueued_at', ARGV[b + 10])
  if ARGV[b + 8] ~= '' then redis.call('HSET', job, 'timeout', string.sub(ARGV[b + 8], 2)) end
  if ARGV[b + 11] ~= '' then
    local start_by = string.sub(ARGV[b + 11], 2)
    redis.call('HSET', job, 'start_by', start_by)
    redis.call('ZADD', key('start_by', queue), start_by, id)
  end
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
    RELEASE,
    EXPIRY,
    LAPSE,
    """
local now, lease_until, worker, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local queues
if ARGV[6] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 7)} end
-- Jobs expired by the clock leave the ready and delayed sets first, so that none is handed out; when there
-- are more than CHUNK of them in a queue (a backlog), each job picked is looked at too.
local backlog = false
for _, queue in ipairs(queues) do
  if expire_due(queue, now, CHUNK) == CHUNK then backlog = true end
  local lapsed = redis.call('ZRANGEBYSCORE', key('running', queue), '-inf', '(' .. now, 'LIMIT', 0, CHUNK)
  for _, id in ipairs(lapsed) do lapse(id, queue, now) end
  promote(queue, now)
end
-- Takes up to ``count`` of the most urgent ready jobs off their sets: {{id, queue}, ...}.
local function pop(count)
  local picked = {}
  if #queues == 1 then
    local popped = redis.call('ZPOPMIN', key('ready', queues[1]), count)
    for i = 1, #popped, 2 do picked[#picked + 1] = {popped[i], queues[1]} end
    return picked
  end
  local heads = {}
  for _, queue in ipairs(queues) do
    local head = redis.call('ZRANGE', key('ready', queue), 0, count - 1, 'WITHSCORES')
    for i = 1, #head, 2 do heads[#heads + 1] = {tonumber(head[i + 1]), head[i], queue} end
  end
  table.sort(heads, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  for i = 1, math.min(count, #heads) do
    redis.call('ZREM', key('ready', heads[i][3]), heads[i][2])
    picked[#picked + 1] = {heads[i][2], heads[i][3]}
  end
  return picked
end
local picked, wanted = {}, limit
while wanted > 0 do
  local batch = pop(wanted)
  wanted = 0
  for _, pick in ipairs(batch) do
    local start_by = backlog and redis.call('ZSCORE', key('start_by', pick[2]), pick[1])
    if start_by and tonumber(start_by) < tonumber(now) then
      expire_job(pick[1], pick[2], now)
      wanted = wanted + 1
    else
      picked[#picked + 1] = pick
    end
  end
end
local out = {}
for _, pick in ipairs(picked) do
  local id, job = pick[1], key('job', pick[1])
  redis.call('HINCRBY', job, 'attempts', 1)
  redis.call('HSET', job, 'status', 'running', 'started_at', now, 'lease_until', lease_until,
    'worker', worker)
  redis.call('ZADD', key('running', pick[2]), lease_until, id)
  local r = record(id)
  -- Started: it can no longer expire.
  if r[START_BY_AT] then redis.call('ZREM', key('start_by', pick[2]), id) end
  out[#out + 1] = r
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
# values). Returns per job its record, or nil where the worker does not hold its lease. A job with a key
# frees it (for the job deferred behind it, if any).
FINISH = lua(
    RECORD,
    SEQ,
    HELD,
    WAKE,
    RELEASE,
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
    for f, name in ipairs({'result', 'error', 'traceback', 'expires_at'}) do
      local value = ARGV[b + 1 + f]
      if value == '' then dels[#dels + 1] = name else
        sets[#sets + 1] = name
        sets[#sets + 1] = string.sub(value, 2)
      end
    end
    redis.call('HSET', job, unpack(sets))
    redis.call('HDEL', job, unpack(dels))
    redis.call('ZREM', key('running', queue), id)
    redis.call('ZADD', key(status, queue), seq(id), id)
    if ARGV[b + 5] ~= '' then redis.call('ZADD', P .. ':expires', string.sub(ARGV[b + 5], 2), id) end
    out[i] = record(id)
    if out[i][KEY_AT] then release(field(out[i][1], out[i][KEY_AT]), id, now) end
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

# ARGV: prefix, now, id, worker, eta, error, traceback (retry_later) or nothing more (release). The job keeps
# its key; a released job whose attempt was its first may expire again.
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
  if redis.call('HINCRBY', job, 'attempts', -1) == 0 then
    local start_by = redis.call('HGET', job, 'start_by')
    if start_by then redis.call('ZADD', key('start_by', queue), start_by, id) end
  end
  redis.call('HSET', job, 'status', 'queued')
  eta = redis.call('HGET', job, 'eta')
end
schedule(id, queue, eta, now)
return 1
""",
)

# ARGV: prefix, now, id. Returns the cancelled job's record, or nil if it was neither queued nor deferred (a
# job expired by the clock is stored as expired instead).
CANCEL = lua(
    RECORD,
    SEQ,
    WAKE,
    RELEASE,
    EXPIRY,
    """
local now, id = ARGV[2], ARGV[3]
local job = key('job', id)
local st = redis.call('HMGET', job, 'status', 'queue', 'attempts', 'start_by', 'task', 'key')
local queue = st[2]
if st[1] == 'queued' then
  if expiring(st[1], st[3], st[4], now) then
    expire_job(id, queue, now)
    return false
  end
  for _, kind in ipairs({'ready', 'delayed', 'start_by'}) do redis.call('ZREM', key(kind, queue), id) end
elseif st[1] == 'deferred' then
  redis.call('ZREM', key('deferred', queue), id)
else
  return false
end
redis.call('HSET', job, 'status', 'cancelled', 'finished_at', now)
redis.call('ZADD', key('cancelled', queue), seq(id), id)
if st[6] then
  local f = field(st[5], st[6])
  if st[1] == 'queued' then
    release(f, id, now)
  elseif redis.call('HGET', P .. ':keys_deferred', f) == id then
    redis.call('HDEL', P .. ':keys_deferred', f)
  end
end
return record(id)
""",
)

# ARGV: prefix, now, id. Returns 1 if requeued, 0 if it was not final or another job holds its key.
REQUEUE = lua(
    SEQ,
    WAKE,
    SCHEDULE,
    RELEASE,
    EXPIRY,
    HOLDER,
    """
local now, id = ARGV[2], ARGV[3]
local job = key('job', id)
local st = redis.call('HMGET', job, 'status', 'queue', 'task', 'key')
if st[1] ~= 'failed' and st[1] ~= 'cancelled' and st[1] ~= 'expired' then return 0 end
if st[4] then
  local f = field(st[3], st[4])
  if holder(f, now) then return 0 end
  redis.call('HSET', P .. ':keys', f, id)
end
redis.call('ZREM', key(st[1], st[2]), id)
redis.call('ZREM', P .. ':expires', id)
redis.call('HSET', job, 'status', 'queued', 'attempts', 0, 'lost', 0, 'eta', now)
redis.call('HDEL', job, 'finished_at', 'expires_at', 'lease_until', 'worker', 'start_by')
schedule(id, st[2], now, now)
return 1
""",
)

# ARGV: prefix, now, every queue (1/0), then the index kinds to empty ('ready', 'delayed', 'succeeded', ...)
# up to '--', then queue names. Deletes up to CHUNK jobs; returns {deleted, 1 if more may remain}. Jobs
# expired by the clock are stored so first (a purge of queued jobs leaves them, one of expired jobs takes
# them); a job whose lease lapsed is queued (its worker died or hung). Every job to delete is chosen before
# any is: a holder's deferred job queued by the purge is not purged with the queued ones.
PURGE = lua(
    SEQ,
    WAKE,
    PROMOTE,
    RELEASE,
    EXPIRY,
    """
local now = ARGV[2]
local kinds, queues, i = {}, {}, 4
while ARGV[i] ~= '--' do kinds[#kinds + 1] = ARGV[i]; i = i + 1 end
if ARGV[3] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, i + 1)} end
local budget, done, deleted = CHUNK, 0, 0
for _, queue in ipairs(queues) do
  done = done + expire_due(queue, now, budget - done)
  if done >= budget then return {deleted, 1} end
  promote(queue, now)
  local chosen = {}
  for _, kind in ipairs(kinds) do
    local index = key(kind, queue)
    local ids = redis.call('ZRANGE', index, 0, budget - done - 1)
    if #ids > 0 then chosen[#chosen + 1] = {index, ids}; done = done + #ids end
    if kind == 'ready' and done < budget then
      local running = key('running', queue)
      local lapsed = redis.call('ZRANGEBYSCORE', running, '-inf', '(' .. now, 'LIMIT', 0, budget - done)
      if #lapsed > 0 then chosen[#chosen + 1] = {running, lapsed}; done = done + #lapsed end
    end
    if done >= budget then break end
  end
  for _, group in ipairs(chosen) do
    local ids = group[2]
    redis.call('ZREM', group[1], unpack(ids))
    redis.call('ZREM', key('start_by', queue), unpack(ids))
    redis.call('ZREM', P .. ':jobs', unpack(ids))
    redis.call('ZREM', P .. ':expires', unpack(ids))
  end
  for _, group in ipairs(chosen) do
    for _, id in ipairs(group[2]) do
      local job = key('job', id)
      local st = redis.call('HMGET', job, 'status', 'queue', 'task', 'key')
      redis.call('DEL', job)
      deleted = deleted + 1
      if st[4] then
        -- A holder frees its key (the job deferred behind it is queued); a deferred job its place. The job may
        -- be one this loop queued a moment ago: out of the sets it entered, too.
        local f = field(st[3], st[4])
        if st[1] == 'deferred' then
          if redis.call('HGET', P .. ':keys_deferred', f) == id then redis.call('HDEL', P .. ':keys_deferred', f) end
        else
          for _, kind in ipairs({'ready', 'delayed', 'start_by'}) do redis.call('ZREM', key(kind, st[2]), id) end
          release(f, id, now)
        end
      end
    end
  end
  if done >= budget then return {deleted, 1} end
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
  if st[1] == 'succeeded' or st[1] == 'failed' or st[1] == 'cancelled' or st[1] == 'expired' then
    redis.call('DEL', job)
    redis.call('ZREM', P .. ':jobs', id)
    redis.call('ZREM', key(st[1], st[2]), id)
  end
end
if #ids > 0 then redis.call('ZREM', P .. ':expires', unpack(ids)) end
if #ids < CHUNK then
  for _, queue in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
    local kinds, empty = {'ready', 'delayed', 'running', 'deferred', 'succeeded', 'failed', 'cancelled',
      'expired'}, true
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

#: The index each status's jobs are in, for ``purge`` (running jobs are never deleted: none here).
STATUS_KINDS = {
    JobStatus.QUEUED: "ready",
    JobStatus.SCHEDULED: "delayed",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.EXPIRED: "expired",
    JobStatus.DEFERRED: "deferred",
}


def optional(value: str | float | None) -> str:
    return "" if value is None else f"={value!r}" if isinstance(value, float) else f"={value}"


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def record(values: Sequence[Any], now: float | None = None) -> JobRecord:
    """The record of a script's reply: the hash fields in ``FIELDS`` order, then the id (then, for a payload
    cut by ``PREVIEW``, its whole length). A queued job never started whose ``start_by`` passed by ``now``
    (default: the time now) is ``EXPIRED``, as a dequeue will store it."""
    size = int(values[-1]) if len(values) > len(FIELDS) + 1 else None
    (task, queue, payload, priority, status, attempts, retries, timeout, eta, enqueued_at, started_at,
     finished_at, lease_until, worker, result, error, traceback, expires_at, lost, key, start_by,
     job_id) = values[: len(FIELDS) + 1]  # fmt: skip
    found = JobRecord(
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
        key=key,
        start_by=_float(start_by),
        payload_size=size,
    )
    if found.status is JobStatus.QUEUED and found.expired(time.time() if now is None else now):
        found.status = JobStatus.EXPIRED
    return found
