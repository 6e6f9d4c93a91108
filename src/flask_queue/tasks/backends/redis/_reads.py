"""The Redis backend's scripts that only read (``no-writes``: they run on a replica too): sizes, counts and
pages of jobs. The building blocks and the scripts that change jobs are in ``_scripts.py``."""

from __future__ import annotations

from ._scripts import RECORD, SEQ, lua

# The queued jobs of a queue that are expired by the clock (not stored so yet), as two counts: those ready
# (or due) and those scheduled. Every job of P:start_by:Q waits in P:ready:Q or P:delayed:Q.
LATE = """
local function late(queue, now)
  local ready, scheduled = 0, 0
  local delayed = key('delayed', queue)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key('start_by', queue), '-inf', '(' .. now)) do
    local eta = redis.call('ZSCORE', delayed, id)
    if eta and tonumber(eta) > tonumber(now) then scheduled = scheduled + 1 else ready = ready + 1 end
  end
  return ready, scheduled
end
"""

# ARGV: prefix, now, every queue (1/0), queue names. Returns the jobs ready now.
SIZE = lua(
    LATE,
    """
local now = ARGV[2]
local queues
if ARGV[3] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 4)} end
local n = 0
for _, queue in ipairs(queues) do
  n = n + redis.call('ZCARD', key('ready', queue)) + redis.call('ZCOUNT', key('delayed', queue), '-inf', now)
    - late(queue, now)
end
return n
""",
    flags="no-writes",
)

# ARGV: prefix, now. Returns {queue, then a count per status of JobStatus in its order, ...}.
COUNTS = lua(
    LATE,
    """
local now = ARGV[2]
local out = {}
for _, queue in ipairs(redis.call('SMEMBERS', P .. ':queues')) do
  local delayed = key('delayed', queue)
  local late_ready, late_scheduled = late(queue, now)
  out[#out + 1] = queue
  out[#out + 1] = redis.call('ZCARD', key('ready', queue)) + redis.call('ZCOUNT', delayed, '-inf', now)
    - late_ready
  out[#out + 1] = redis.call('ZCOUNT', delayed, '(' .. now, '+inf') - late_scheduled
  for _, kind in ipairs({'running', 'succeeded', 'failed', 'cancelled', 'expired'}) do
    out[#out + 1] = redis.call('ZCARD', key(kind, queue))
  end
  out[#out] = out[#out] + late_ready + late_scheduled
  out[#out + 1] = redis.call('ZCARD', key('deferred', queue))
end
return out
""",
    flags="no-writes",
)

# ARGV: prefix, offset, limit, preview (0: whole payloads). Returns the records of P:jobs from rank ``offset``
# on, newest first.
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
# or '', status or '', preview (0: whole payloads). Looks at up to CHUNK jobs of P:jobs from ``below`` down,
# newest first, past the ``seen`` first ones; returns {the records that match, the last score looked at, how
# many of that score were looked at} (only {the records} at the end). A cursor by score, unlike one by rank,
# is not shifted by jobs enqueued meanwhile. Producers that number jobs in the same microsecond give them one
# score, so a chunk may end between jobs of one score: the count is how the next chunk starts after those
# seen, never skipping the rest.
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
  if st == 'queued' and (not r[6] or r[6] == '0') and r[START_BY_AT] and tonumber(r[START_BY_AT]) < now then
    st = 'expired'
  elseif st == 'queued' and tonumber(r[9]) > now then
    st = 'scheduled'
  end
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

# ARGV: prefix, now, status (a finished one), offset, limit, preview (0: whole payloads), every queue (1/0),
# queue names. Returns the records of that status, newest first, from the per-queue indexes merged (for
# 'expired', with the jobs expired by the clock and not stored so yet). Jobs of one sequence number
# (producers that numbered them in the same microsecond) are ordered by id, as within one index: a sort that
# left them in any order would put one job on two pages and another on none.
FINISHED_PAGE = lua(
    RECORD,
    SEQ,
    """
local now, status, offset, limit = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
PREVIEW = tonumber(ARGV[6])
local queues
if ARGV[7] == '1' then queues = redis.call('SMEMBERS', P .. ':queues') else queues = {unpack(ARGV, 8)} end
local all = {}
for _, queue in ipairs(queues) do
  local ids = redis.call('ZREVRANGE', key(status, queue), 0, offset + limit - 1, 'WITHSCORES')
  for i = 1, #ids, 2 do all[#all + 1] = {tonumber(ids[i + 1]), ids[i]} end
  if status == 'expired' then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', key('start_by', queue), '-inf', '(' .. now)) do
      all[#all + 1] = {seq(id), id}
    end
  end
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
