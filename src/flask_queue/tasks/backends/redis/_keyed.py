"""The Redis backend's scripts of keys and schedules: the enqueue of jobs with keys (return, raise, replace,
defer), which ``enqueue_tick`` runs too, and the pause of a schedule. The building blocks are in
``_scripts.py``."""

from __future__ import annotations

from ._scripts import EXPIRY, HOLDER, LAPSE, RELEASE, SCHEDULE, SEQ, WAKE, lua

# ARGV: prefix, now, count, on_conflict, schedule or '', tick, then per job: id, sequence number, task, queue,
# payload, priority, retries, timeout, eta, enqueued_at, key, start_by. With a schedule, stores nothing
# (returns nil) unless the tick is later than the schedule's last, which it becomes, and the schedule is not
# paused. Returns {the ids, the holder's where a job met one}, or {{}, the job's number, the holder's id}
# when on_conflict is 'raise' and a job met one (then nothing is stored).
ENQUEUE_KEYED = lua(
    SEQ,
    WAKE,
    SCHEDULE,
    RELEASE,
    EXPIRY,
    LAPSE,
    HOLDER,
    """
local now, n, on_conflict, periodic, tick = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local B, W = 6, 12
if periodic ~= '' then
  -- One field per schedule: '<paused 0|1>:<last tick, or nothing>'.
  local schedules = P .. ':schedules'
  local state = redis.call('HGET', schedules, periodic) or '0:'
  local last = string.sub(state, 3)
  if last ~= '' and tonumber(last) >= tonumber(tick) then return false end
  redis.call('HSET', schedules, periodic, string.sub(state, 1, 2) .. tick)
  if string.sub(state, 1, 1) == '1' then return false end
end
-- The job of arguments b, stored with ``status`` ('queued' or 'deferred').
local function put(b, status)
  local id, queue, eta = ARGV[b + 1], ARGV[b + 4], ARGV[b + 9]
  local job = key('job', id)
  redis.call('HSET', job, 'task', ARGV[b + 3], 'queue', queue, 'payload', ARGV[b + 5],
    'priority', ARGV[b + 6], 'status', status, 'retries', ARGV[b + 7], 'eta', eta,
    'enqueued_at', ARGV[b + 10])
  for at, name in pairs({[8] = 'timeout', [11] = 'key', [12] = 'start_by'}) do
    if ARGV[b + at] ~= '' then redis.call('HSET', job, name, string.sub(ARGV[b + at], 2)) end
  end
  redis.call('ZADD', P .. ':jobs', ARGV[b + 2], id)
  if status == 'deferred' then
    redis.call('ZADD', key('deferred', queue), ARGV[b + 2], id)
    wake(queue)  -- registers the queue, for counts()
  else
    if ARGV[b + 12] ~= '' then redis.call('ZADD', key('start_by', queue), string.sub(ARGV[b + 12], 2), id) end
    schedule(id, queue, eta, now)
  end
end
-- Job ``id`` (of queue ``old``, not running) takes the call of arguments b, its id kept.
local function update(id, old, b, status)
  local job, queue, eta = key('job', id), ARGV[b + 4], ARGV[b + 9]
  redis.call('HSET', job, 'queue', queue, 'payload', ARGV[b + 5], 'priority', ARGV[b + 6],
    'retries', ARGV[b + 7], 'eta', eta)
  for at, name in pairs({[8] = 'timeout', [12] = 'start_by'}) do
    if ARGV[b + at] == '' then redis.call('HDEL', job, name)
    else redis.call('HSET', job, name, string.sub(ARGV[b + at], 2)) end
  end
  if status == 'deferred' then
    redis.call('ZREM', key('deferred', old), id)
    redis.call('ZADD', key('deferred', queue), seq(id), id)
    wake(queue)
    return
  end
  for _, kind in ipairs({'ready', 'delayed', 'start_by'}) do redis.call('ZREM', key(kind, old), id) end
  local attempts = redis.call('HGET', job, 'attempts')
  if ARGV[b + 12] ~= '' and (not attempts or attempts == '0') then
    redis.call('ZADD', key('start_by', queue), string.sub(ARGV[b + 12], 2), id)
  end
  schedule(id, queue, eta, now)
end
-- "replace" against the holder of field f: a holder not running takes the call; a running one keeps running,
-- and the job deferred behind it takes the call (made if there is none). Returns the id of the job that took
-- it, or false when the key is free after all (the holder's lapsed lease was its last).
local function replace(f, id, b)
  local st = redis.call('HMGET', key('job', id), 'status', 'queue', 'lease_until')
  if st[1] == 'running' and st[3] and tonumber(st[3]) < tonumber(now) then
    lapse(id, st[2], now)
    id = redis.call('HGET', P .. ':keys', f)
    if not id then return false end
    st = redis.call('HMGET', key('job', id), 'status', 'queue')
  end
  if st[1] == 'queued' then
    update(id, st[2], b, 'queued')
    return id
  end
  local waiting = redis.call('HGET', P .. ':keys_deferred', f)
  if waiting then
    local old = redis.call('HMGET', key('job', waiting), 'status', 'queue')
    if old[1] == 'deferred' then
      update(waiting, old[2], b, 'deferred')
      return waiting
    end
  end
  put(b, 'deferred')
  redis.call('HSET', P .. ':keys_deferred', f, ARGV[b + 1])
  return ARGV[b + 1]
end
-- "raise" stores nothing when any job meets a holder, so every job is looked at before anything is written,
-- without writing: a holder that expired by the clock does not count, and the job deferred behind it would
-- hold the key then. Jobs of the call meet each other.
if on_conflict == 'raise' then
  local claimed = {}
  for i = 1, n do
    local b = B + (i - 1) * W
    if ARGV[b + 11] ~= '' then
      local f = field(ARGV[b + 3], string.sub(ARGV[b + 11], 2))
      local found = claimed[f]
      local id = not found and redis.call('HGET', P .. ':keys', f)
      if id then
        local st = redis.call('HMGET', key('job', id), 'status', 'attempts', 'start_by')
        if st[1] == 'running' or (st[1] == 'queued' and not expiring(st[1], st[2], st[3], now)) then
          found = id
        else
          local waiting = redis.call('HGET', P .. ':keys_deferred', f)
          local w = waiting and redis.call('HMGET', key('job', waiting), 'status', 'start_by')
          if w and w[1] == 'deferred' and not (w[2] and tonumber(w[2]) < tonumber(now)) then found = waiting end
        end
      end
      if found then return {{}, i, found} end
      claimed[f] = ARGV[b + 1]
    end
  end
end
local ids = {}
for i = 1, n do
  local b = B + (i - 1) * W
  local id = ARGV[b + 1]
  if ARGV[b + 11] == '' then
    put(b, 'queued')
  else
    local f = field(ARGV[b + 3], string.sub(ARGV[b + 11], 2))
    local found = holder(f, now)
    if found and on_conflict == 'replace' then found = replace(f, found, b) end
    if found then
      id = found
    else
      put(b, 'queued')
      redis.call('HSET', P .. ':keys', f, id)
    end
  end
  ids[i] = id
end
return {ids}
""",
)

# ARGV: prefix, name, paused (1/0). A schedule with no field yet gets one.
PAUSE_SCHEDULE = lua(
    """
local schedules = P .. ':schedules'
local state = redis.call('HGET', schedules, ARGV[2]) or '0:'
redis.call('HSET', schedules, ARGV[2], ARGV[3] .. string.sub(state, 2))
return 1
""",
)
