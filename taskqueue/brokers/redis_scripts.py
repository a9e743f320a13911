"""The Redis broker's Lua scripts: every change of a task's state, each one atomic.

Every key of one queue shares the hash tag ``{namespace}``, so that a Redis
Cluster keeps them on one slot; every key is passed to each script in
``KEYS`` (the structural keys first, in :data:`STRUCTURAL` order, then the
one result key a script may write), and no script uses ``KEYS`` or
``SCAN`` commands. Times come from the server (``TIME``), never from a
client's clock: leases and due times mean the same on every host.

The structural keys, and what each holds:

==============  =====================================================================
``messages``    HASH id -> the task as JSON (name, arguments, options), while it lives
``meta``        HASH id -> what the scripts need of it (priority, key, delivery limit, producer)
``ready``       ZSET "seq|id" by -priority: what may start now, highest priority first,
                in submission order within one (the zero-padded sequence)
``delayed``     ZSET id by due time (ms): retries waiting out a backoff, delayed tasks
``leases``      ZSET id by lease deadline (ms): what a worker runs now
``tokens``      HASH id -> the delivery that holds the lease (acks with another are fenced)
``deliveries``  HASH id -> how many times it was handed to a worker
``unique``      HASH key -> the id of the live task that holds it
``dead``        HASH id -> a dead letter as JSON; ``dead_order`` ZSET id by failure time
``stats``       HASH of counters (submitted, succeeded, failed, cancelled, retried, ...)
``seq``         the sequence of ready entries; ``wake`` LIST a worker blocks on
``started``     HASH id -> when its running attempt started (ms)
``members``     HASH id -> its entry in ``ready``, while it is there
``workers``     HASH worker id -> what a consuming process last said of itself (JSON)
==============  =====================================================================

A finished task's outcome is kept in ``result:<id>`` with a time to live:
the only keys that are not structural, and each of them expires.
"""

from __future__ import annotations

__all__ = ["STRUCTURAL", "ENQUEUE", "FETCH", "FINISH", "RETRY", "HAND_BACK", "RENEW",
           "REQUEUE_EXPIRED", "PROMOTE", "REQUEUE_DEAD"]

STRUCTURAL = ("messages", "meta", "ready", "delayed", "leases", "tokens", "deliveries", "unique",
              "dead", "dead_order", "stats", "seq", "wake", "started", "members", "workers")
"""The structural keys, in the order every script receives them."""

_PRELUDE = """
local K = {}
local names = {'messages', 'meta', 'ready', 'delayed', 'leases', 'tokens', 'deliveries',
               'unique', 'dead', 'dead_order', 'stats', 'seq', 'wake', 'started', 'members',
               'workers'}
for i, name in ipairs(names) do K[name] = KEYS[i] end
local events = ARGV[1]  -- the prefix of the producers' event channels

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function to_ready(id, priority)
  local seq = redis.call('INCR', K.seq)
  local member = string.format('%020d|%s', seq, id)
  redis.call('ZADD', K.ready, -priority, member)
  redis.call('HSET', K.members, id, member)
  redis.call('LPUSH', K.wake, '1')
  redis.call('LTRIM', K.wake, 0, 99)
end

local function tell(meta, event)
  if meta.producer and meta.producer ~= cjson.null then
    redis.call('PUBLISH', events .. meta.producer, event)
  end
end

local function forget(id, meta)
  redis.call('ZREM', K.leases, id)
  redis.call('ZREM', K.delayed, id)
  local member = redis.call('HGET', K.members, id)
  if member then redis.call('ZREM', K.ready, member) end
  for _, key in ipairs({K.messages, K.meta, K.tokens, K.deliveries, K.started, K.members}) do
    redis.call('HDEL', key, id)
  end
  if meta.key and meta.key ~= cjson.null and redis.call('HGET', K.unique, meta.key) == id then
    redis.call('HDEL', K.unique, meta.key)
  end
end

local function enqueue(id, body, meta_json, priority, delay, key, maxsize, bounded)
  if redis.call('HEXISTS', K.messages, id) == 1 then return {1, id} end  -- sent twice
  if key ~= '' then
    local holder = redis.call('HGET', K.unique, key)
    if holder and redis.call('HEXISTS', K.messages, holder) == 1 then return {2, holder} end
  end
  if delay == '' and bounded == '1' and tonumber(maxsize) > 0
      and redis.call('ZCARD', K.ready) >= tonumber(maxsize) then
    return {0, ''}
  end
  redis.call('HSET', K.messages, id, body)
  redis.call('HSET', K.meta, id, meta_json)
  if key ~= '' then redis.call('HSET', K.unique, key, id) end
  redis.call('HINCRBY', K.stats, 'submitted', 1)
  if delay == '' then
    to_ready(id, tonumber(priority))
  else
    redis.call('ZADD', K.delayed, now_ms() + tonumber(delay), id)
  end
  return {1, id}
end
"""

ENQUEUE = _PRELUDE + """
-- ARGV: events, id, body, meta, priority, delay_ms or '', key or '', maxsize, bounded
-- Returns {1, id} taken in, {2, holder} a live task holds the key, {0, ''} full.
return enqueue(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
"""

FETCH = _PRELUDE + """
-- ARGV: events, visibility_ms, room channel, maxsize
-- Takes the first ready task and leases it. Returns nil, or {id, body, delivery, meta}.
while true do
  local size = redis.call('ZCARD', K.ready)
  local popped = redis.call('ZPOPMIN', K.ready, 1)
  if #popped == 0 then return false end
  local id = string.sub(popped[1], 22)
  redis.call('HDEL', K.members, id)
  local body = redis.call('HGET', K.messages, id)
  if body then
    local delivery = redis.call('HINCRBY', K.deliveries, id, 1)
    local now = now_ms()
    redis.call('HSET', K.tokens, id, delivery)
    redis.call('ZADD', K.leases, now + tonumber(ARGV[2]), id)
    redis.call('HSET', K.started, id, now)
    if delivery > 1 then redis.call('HINCRBY', K.stats, 'retried', 1) end
    local meta_json = redis.call('HGET', K.meta, id)
    local meta = cjson.decode(meta_json)
    tell(meta, cjson.encode({id = id, state = 'running', attempts = delivery}))
    if tonumber(ARGV[4]) > 0 and size >= tonumber(ARGV[4]) then
      redis.call('PUBLISH', ARGV[3], '1')  -- a producer may be waiting for this room
    end
    return {id, body, delivery, meta_json}
  end
end
"""

FINISH = _PRELUDE + """
-- ARGV: events, id, token or '' (a cancel), outcome, ttl, counter, letter or '',
--       dead letter limit, failed_at_ms
-- KEYS[17]: the task's result key.
-- Returns 1 done, 0 the task is gone, -1 fenced (another delivery holds the lease),
-- -2 (a cancel) it runs now.
local id = ARGV[2]
local meta_json = redis.call('HGET', K.meta, id)
if not meta_json then return 0 end
if ARGV[3] == '' then
  if redis.call('ZSCORE', K.leases, id) then return -2 end
elseif redis.call('HGET', K.tokens, id) ~= ARGV[3] then
  return -1
end
local meta = cjson.decode(meta_json)
forget(id, meta)
redis.call('HINCRBY', K.stats, ARGV[6], 1)
redis.call('SET', KEYS[17], ARGV[4], 'EX', ARGV[5])
if ARGV[7] ~= '' then
  redis.call('HSET', K.dead, id, ARGV[7])
  redis.call('ZADD', K.dead_order, ARGV[9], id)
  local over = redis.call('ZCARD', K.dead_order) - tonumber(ARGV[8])
  if over > 0 then
    local oldest = redis.call('ZPOPMIN', K.dead_order, over)
    for i = 1, #oldest, 2 do redis.call('HDEL', K.dead, oldest[i]) end
    redis.call('HINCRBY', K.stats, 'dead_letters_dropped', over)
  end
end
tell(meta, ARGV[4])
return 1
"""

RETRY = _PRELUDE + """
-- ARGV: events, id, token, delay_ms, event
-- Returns 1, or -1 fenced.
local id = ARGV[2]
if redis.call('HGET', K.tokens, id) ~= ARGV[3] then return -1 end
redis.call('ZREM', K.leases, id)
redis.call('HDEL', K.tokens, id)
redis.call('HDEL', K.started, id)
local meta = cjson.decode(redis.call('HGET', K.meta, id))
if tonumber(ARGV[4]) > 0 then
  redis.call('ZADD', K.delayed, now_ms() + tonumber(ARGV[4]), id)
else
  to_ready(id, meta.priority)
end
tell(meta, ARGV[5])
return 1
"""

HAND_BACK = _PRELUDE + """
-- ARGV: events, id, token, event, uncount ('1': the delivery does not count)
-- A task fetched and not started, or cut short by its own worker's stop:
-- back to ready at once, for another worker to start without waiting for
-- the lease to run out. Returns 1, or -1 fenced.
local id = ARGV[2]
if redis.call('HGET', K.tokens, id) ~= ARGV[3] then return -1 end
redis.call('ZREM', K.leases, id)
redis.call('HDEL', K.tokens, id)
redis.call('HDEL', K.started, id)
if ARGV[5] == '1' then redis.call('HINCRBY', K.deliveries, id, -1) end
local meta = cjson.decode(redis.call('HGET', K.meta, id))
to_ready(id, meta.priority)
tell(meta, ARGV[4])
return 1
"""

RENEW = _PRELUDE + """
-- ARGV: events, visibility_ms, then id, token pairs. Returns how many leases were renewed.
local deadline = now_ms() + tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV, 2 do
  if redis.call('HGET', K.tokens, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', K.leases, 'XX', deadline, ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
"""

REQUEUE_EXPIRED = _PRELUDE + """
-- ARGV: events, most. Leases past their deadline (their worker died or stalled)
-- go back to ready. Returns how many.
local expired = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now_ms(), 'LIMIT', 0,
                           tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  redis.call('ZREM', K.leases, id)
  redis.call('HDEL', K.tokens, id)
  redis.call('HDEL', K.started, id)
  local meta_json = redis.call('HGET', K.meta, id)
  if meta_json then
    local meta = cjson.decode(meta_json)
    to_ready(id, meta.priority)
    tell(meta, cjson.encode({id = id, state = 'pending'}))
  end
end
return #expired
"""

PROMOTE = _PRELUDE + """
-- ARGV: events, most. Moves what is due from delayed to ready.
-- Returns {moved, ms until the next is due or -1}.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', K.delayed, id)
  local meta_json = redis.call('HGET', K.meta, id)
  if meta_json then
    local meta = cjson.decode(meta_json)
    to_ready(id, meta.priority)
    tell(meta, cjson.encode({id = id, state = 'pending'}))
  end
end
local next_due = redis.call('ZRANGE', K.delayed, 0, 0, 'WITHSCORES')
if #next_due == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(next_due[2]) - now)}
"""

REQUEUE_DEAD = _PRELUDE + """
-- ARGV: events, letter id, then ENQUEUE's arguments (id, body, meta, priority,
-- delay_ms, key, maxsize, bounded). Forgets the letter and takes the new task
-- in, together. Returns {-1, ''} if the letter is not held, else as ENQUEUE
-- (if the new task is not taken in, the letter stays).
if redis.call('HEXISTS', K.dead, ARGV[2]) == 0 then return {-1, ''} end
local taken = enqueue(ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
if taken[1] == 1 then
  redis.call('HDEL', K.dead, ARGV[2])
  redis.call('ZREM', K.dead_order, ARGV[2])
end
return taken
"""
