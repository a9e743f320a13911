"""The Redis broker's Lua scripts: every change of a task's state, each one atomic.

Every key of one queue shares the hash tag ``{namespace}``, so that a Redis
Cluster keeps them on one slot. Each script is given one key, the queue's
``messages`` hash, and names the others from its prefix (the same tag, so
the same slot); no script uses ``KEYS`` or ``SCAN`` commands. Times come
from the server (``TIME``), never from a client's clock: leases and due
times mean the same on every host.

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
``dead``        HASH id -> a dead letter as JSON; ``dead_order`` ZSET id by ``seq`` (the order they failed)
``stats``       HASH of counters (submitted, succeeded, failed, cancelled, retried, ...),
                and ``seq``, the sequence of ready entries and dead letters
``started``     HASH id -> when its running attempt started (ms)
``members``     HASH id -> its entry in ``ready``, while it is there
``workers``     HASH worker id -> what a consuming process last said of itself (JSON)
``idle``        ZSET "visibility_ms|slot" by deadline (ms): worker threads waiting for a task
``handed``      ZSET "visibility_ms|slot" by deadline (ms): waiters handed a task they have
                not taken yet; past the deadline (a waiter that died), it goes back
==============  =====================================================================

Keys that are not structural, each of which expires: ``result:<id>`` (a
finished task's outcome, for ``result_ttl``), ``inbox:<slot>`` (a task handed
to one waiting worker thread, gone once it takes it), ``tick:<name>:<n>``
(a periodic tick claimed), ``wake:<process>`` (stops one process's threads).
Channels: ``events:<producer>`` (a producer's tasks' progress), ``room`` (a
full queue has room), ``due`` (a task got a due time: the timers look again).

How a task reaches a worker in one round trip: a worker thread that finds
nothing ready says it waits (``idle``) in the same script, then blocks on its
own inbox. Whatever makes a task ready (a submit, a retry, a due delay, a
lapsed lease) leases it at once to the most recent waiter and pushes it to
that inbox, so the blocking pop returns the task itself; only when nobody
waits does it go to ``ready``. A waiter that died in the moment before (its
registration had not run out) is noted in ``handed``: if it has not taken the
task within a few seconds, the timers give it back, and that delivery does
not count, instead of leaving it to wait out its lease. So a waiter exists only while nothing is
ready, and priorities hold: a waiter is given the only task there is.
"""

from __future__ import annotations

__all__ = ["STRUCTURAL", "ENQUEUE", "FETCH", "FINISH", "RETRY", "HAND_BACK", "RENEW",
           "REQUEUE_EXPIRED", "PROMOTE", "REQUEUE_DEAD", "LEAVE"]

STRUCTURAL = ("messages", "meta", "ready", "delayed", "leases", "tokens", "deliveries", "unique",
              "dead", "dead_order", "stats", "started", "members", "workers", "idle",
              "handed")
"""The structural keys: the only keys of a queue without a time to live."""

_PRELUDE = """
local P = string.sub(KEYS[1], 1, #KEYS[1] - #'messages')  -- '{namespace}:'
local K = {}
for _, name in ipairs({'messages', 'meta', 'ready', 'delayed', 'leases', 'tokens', 'deliveries',
                       'unique', 'dead', 'dead_order', 'stats', 'started', 'members',
                       'workers', 'idle', 'handed'}) do
  K[name] = P .. name
end
local events = ARGV[1]  -- the prefix of the producers' event channels

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tell(meta, event)
  if meta.producer and meta.producer ~= cjson.null then
    redis.call('PUBLISH', events .. meta.producer, event)
  end
end

-- Lease a task to one delivery: returns what a worker is given.
local function lease(id, meta_json, visibility_ms, now)
  local delivery = redis.call('HINCRBY', K.deliveries, id, 1)
  redis.call('HSET', K.tokens, id, delivery)
  redis.call('ZADD', K.leases, now + visibility_ms, id)
  redis.call('HSET', K.started, id, now)
  if delivery > 1 then redis.call('HINCRBY', K.stats, 'retried', 1) end
  local meta = cjson.decode(meta_json)
  tell(meta, '{"id":"' .. id .. '","state":"running","attempts":' .. delivery .. '}')
  return delivery
end

-- No delivery holds the task's lease any more (its outcome or its return is next).
local function unlease(id)
  redis.call('ZREM', K.leases, id)
  redis.call('HDEL', K.tokens, id)
  redis.call('HDEL', K.started, id)
end

-- A delivery taken back before it started counts for nothing (nor as a retry).
local function uncount(id)
  if redis.call('HINCRBY', K.deliveries, id, -1) >= 1 then
    redis.call('HINCRBY', K.stats, 'retried', -1)
  end
end

local HANDOFF_GRACE_MS = 3000  -- a live waiter takes a handed task in a moment

-- A task may start now: to the most recent waiting worker, else to ready.
local function to_ready(id, priority)
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', K.idle, '-inf', now)  -- waiters that went away
  local waiter = redis.call('ZPOPMAX', K.idle)
  if #waiter > 0 then
    local member = waiter[1]
    local bar = string.find(member, '|', 1, true)
    local visibility_ms = tonumber(string.sub(member, 1, bar - 1))
    local inbox = P .. 'inbox:' .. string.sub(member, bar + 1)
    local meta_json = redis.call('HGET', K.meta, id)
    local delivery = lease(id, meta_json, visibility_ms, now)
    redis.call('RPUSH', inbox, id .. '\\n' .. delivery .. '\\n' .. meta_json .. '\\n' ..
               redis.call('HGET', K.messages, id))
    redis.call('PEXPIRE', inbox, 2 * visibility_ms + 1000)
    redis.call('ZADD', K.handed, now + HANDOFF_GRACE_MS, member)
    return
  end
  local seq = redis.call('HINCRBY', K.stats, 'seq', 1)  -- no key of its own to linger
  local member = string.format('%020d|%s', seq, id)
  redis.call('ZADD', K.ready, -priority, member)
  redis.call('HSET', K.members, id, member)
end

-- The first ready task, leased; or, if none and the caller waits, note it
-- as a waiter (until now + wait_ms). ARGV from ``first``: visibility_ms,
-- waiter member ('' for none), wait_ms, room channel, maxsize.
local function take(first)
  local visibility_ms, waiter = tonumber(ARGV[first]), ARGV[first + 1]
  local maxsize = tonumber(ARGV[first + 4])
  if waiter ~= '' then redis.call('ZREM', K.handed, waiter) end  -- it took what it was handed
  while true do
    local size = redis.call('ZCARD', K.ready)
    local popped = redis.call('ZPOPMIN', K.ready, 1)
    if #popped == 0 then
      if waiter ~= '' then
        redis.call('ZADD', K.idle, now_ms() + tonumber(ARGV[first + 2]), waiter)
      end
      return false
    end
    local id = string.sub(popped[1], 22)
    redis.call('HDEL', K.members, id)
    local body = redis.call('HGET', K.messages, id)
    if body then
      local meta_json = redis.call('HGET', K.meta, id)
      local delivery = lease(id, meta_json, visibility_ms, now_ms())
      if maxsize > 0 and size >= maxsize then
        redis.call('PUBLISH', ARGV[first + 3], '1')  -- a producer may be waiting for room
      end
      return {id, body, delivery, meta_json}
    end
  end
end

-- What was handed to a waiter and is still in its inbox goes back at once
-- (those deliveries do not count): the waiter stops, or never took it.
local function give_back(inbox)
  local handed = redis.call('LRANGE', inbox, 0, -1)
  redis.call('DEL', inbox)
  for _, item in ipairs(handed) do
    local first = string.find(item, '\\n', 1, true)
    local id = string.sub(item, 1, first - 1)
    local delivery = string.sub(item, first + 1, string.find(item, '\\n', first + 1, true) - 1)
    if redis.call('HGET', K.tokens, id) == delivery then  -- not taken over since
      unlease(id)
      uncount(id)
      local meta = cjson.decode(redis.call('HGET', K.meta, id))
      tell(meta, '{"id":"' .. id .. '","state":"pending"}')
      to_ready(id, meta.priority)
    end
  end
  return #handed
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
    redis.call('PUBLISH', P .. 'due', '1')  -- the workers' timers look again
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
-- ARGV: events, then take()'s: visibility_ms, waiter, wait_ms, room channel, maxsize;
-- then this waiter's inbox key.
-- A task handed to this waiter's inbox first (it came as the wait ran
-- out), else the first ready one; else the caller is noted as a waiter.
-- Returns nil, or {id, body, delivery, meta} (a handed task: {item} whole).
local handed = redis.call('LPOP', ARGV[7])
if handed then
  redis.call('ZREM', K.handed, ARGV[3])
  return {handed}
end
return take(2)
"""

FINISH = _PRELUDE + """
-- ARGV: events, id, token or '' (a cancel), outcome, ttl, counter, letter or '',
--       dead letter limit, then take()'s five (visibility_ms '' : none).
-- Returns {1, next} done (next: as FETCH, or false), {0} the task is gone,
-- {-1} fenced (another delivery holds the lease), {-2} (a cancel) it runs now.
local id = ARGV[2]
local meta_json = redis.call('HGET', K.meta, id)
if not meta_json then return {0} end
if ARGV[3] == '' then
  if redis.call('ZSCORE', K.leases, id) then return {-2} end
elseif redis.call('HGET', K.tokens, id) ~= ARGV[3] then
  return {-1}
end
local meta = cjson.decode(meta_json)
forget(id, meta)
redis.call('HINCRBY', K.stats, ARGV[6], 1)
redis.call('SET', P .. 'result:' .. id, ARGV[4], 'EX', ARGV[5])
if ARGV[7] ~= '' then
  redis.call('HSET', K.dead, id, ARGV[7])
  -- In the order they failed, as the server ran them (times can tie in a millisecond).
  redis.call('ZADD', K.dead_order, redis.call('HINCRBY', K.stats, 'seq', 1), id)
  local over = redis.call('ZCARD', K.dead_order) - tonumber(ARGV[8])
  if over > 0 then
    local oldest = redis.call('ZPOPMIN', K.dead_order, over)
    for i = 1, #oldest, 2 do redis.call('HDEL', K.dead, oldest[i]) end
    redis.call('HINCRBY', K.stats, 'dead_letters_dropped', over)
  end
end
tell(meta, ARGV[4])
if ARGV[9] == '' then return {1, false} end
return {1, take(9)}
"""

RETRY = _PRELUDE + """
-- ARGV: events, id, token, delay_ms, event, then take()'s five (visibility_ms '': none).
-- Returns {1, next} (next: as FETCH, or false), or {-1} fenced.
local id = ARGV[2]
if redis.call('HGET', K.tokens, id) ~= ARGV[3] then return {-1} end
unlease(id)
local meta = cjson.decode(redis.call('HGET', K.meta, id))
tell(meta, ARGV[5])
if tonumber(ARGV[4]) > 0 then
  redis.call('ZADD', K.delayed, now_ms() + tonumber(ARGV[4]), id)
  redis.call('PUBLISH', P .. 'due', '1')  -- the workers' timers look again
else
  to_ready(id, meta.priority)
end
if ARGV[6] == '' then return {1, false} end
return {1, take(6)}
"""

HAND_BACK = _PRELUDE + """
-- ARGV: events, id, token, event, uncount ('1': the delivery does not count)
-- A task fetched and not started, or cut short by its own worker's stop:
-- back to ready at once, for another worker to start without waiting for
-- the lease to run out. Returns 1, or -1 fenced.
local id = ARGV[2]
if redis.call('HGET', K.tokens, id) ~= ARGV[3] then return -1 end
unlease(id)
if ARGV[5] == '1' then uncount(id) end
local meta = cjson.decode(redis.call('HGET', K.meta, id))
tell(meta, ARGV[4])  -- before to_ready, which may tell it runs again
to_ready(id, meta.priority)
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
-- ARGV: events, most. Tasks handed to waiters that did not take them in time
-- (their process died) go back, uncounted; leases past their deadline (their
-- worker died or stalled) go back to ready. Returns how many leases.
local now = now_ms()
for _, member in ipairs(redis.call('ZRANGEBYSCORE', K.handed, '-inf', now)) do
  redis.call('ZREM', K.handed, member)
  give_back(P .. 'inbox:' .. string.sub(member, string.find(member, '|', 1, true) + 1))
end
local expired = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now, 'LIMIT', 0,
                           tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  unlease(id)
  local meta_json = redis.call('HGET', K.meta, id)
  if meta_json then
    local meta = cjson.decode(meta_json)
    tell(meta, cjson.encode({id = id, state = 'pending'}))
    to_ready(id, meta.priority)
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
    tell(meta, cjson.encode({id = id, state = 'pending'}))
    to_ready(id, meta.priority)
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

LEAVE = _PRELUDE + """
-- ARGV: events, waiter member, its inbox key. A worker thread stops waiting:
-- it is no waiter any more, and what was handed to it and not taken goes
-- back at once (those deliveries do not count). Returns how many.
redis.call('ZREM', K.idle, ARGV[2])
redis.call('ZREM', K.handed, ARGV[2])
return give_back(ARGV[3])
"""
