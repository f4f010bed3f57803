-- Helpers shared by every Godel script; the store prepends this file to each
-- script before loading it, so each script still runs as one atomic unit.
--
-- Conventions: every value stored is a string built here or by the Rust side
-- (timestamps are never computed in Lua, so they never pass through a Lua
-- double's formatting). An optional task field is absent or empty: hot paths
-- empty fields inside the HSET they do anyway rather than spend an HDEL, and
-- no present value is ever the empty string.
-- Keys of one tenant share the prefix T = "<prefix>:<tenant>".

local function int(n)
  return string.format('%d', n)
end

local function task_key(T, id)
  return T .. ':t:' .. id
end

-- The fields of a task hash, in the order `read_task` returns them (the Rust
-- side reads them by position: keep `TASK_FIELDS` in redis/decode.rs in step).
local TASK_FIELDS = { 'id', 'pri', 'st', 'pay', 'caps', 'aff', 'idem', 'par', 'att', 'max', 'to', 'run', 'ag', 'exp',
  'cxl', 'res', 'err', 'cr', 'up', 'sa', 'ca', 'dl', 'tok' }
local function read_task(k)
  return redis.call('HMGET', k, unpack(TASK_FIELDS))
end

-- A pending-queue member: sorted by run_at (the score), then by this string,
-- which starts with the zero-padded insertion sequence.
local function queue_member(seq, id)
  return string.format('%016d', tonumber(seq)) .. ':' .. id
end

-- Appends one history entry: at|attempt|status|cancel|agent|error_json.
local function history(T, id, at, attempt, status, cancel, agent, err)
  redis.call('RPUSH', T .. ':h:' .. id,
    at .. '|' .. attempt .. '|' .. status .. '|' .. cancel .. '|' .. (agent or '') .. '|' .. (err or ''))
end

local function is_leased(status)
  return status == 'assigned' or status == 'running'
end

local function is_terminal(status)
  return status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'dead_letter'
end

-- Per-status count changes, applied once at the end of a script.
local Counts = {}
local function count(T, status, n)
  local per = Counts[T]
  if not per then
    per = {}
    Counts[T] = per
  end
  per[status] = (per[status] or 0) + n
end
local function flush_counts()
  for T, per in pairs(Counts) do
    for status, n in pairs(per) do
      if n ~= 0 then
        redis.call('HINCRBY', T .. ':cnt', status, n)
      end
    end
  end
end

-- Reads a lease holder's task if (token, attempt) still hold it; nil otherwise.
-- Returns {token, attempt, status, cancel, agent, error, priority, seq, run_at,
-- max_attempts, expires_at}.
local function fenced(k, token, attempt)
  local f = redis.call('HMGET', k, 'tok', 'att', 'st', 'cxl', 'ag', 'err', 'pri', 'seq', 'run', 'max', 'exp')
  if f[1] == token and f[2] == attempt and is_leased(f[3]) then
    return f
  end
  return nil
end

-- The lease a single-lease script acts on, from its first six arguments: T,
-- the lease index, tenant, task id, attempt, token (the Rust side's
-- `lease_script` passes them). Returns T, the lease index, tenant, id,
-- attempt, the task's key and its fenced fields; the fields are nil when the
-- lease is stale, and the script then returns 'l'. Its own arguments start at ARGV[7].
local function held_lease()
  local T, leases, tenant, id, attempt, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local k = task_key(T, id)
  return T, leases, tenant, id, attempt, k, fenced(k, token, attempt)
end

-- Ends the lease on a task: its token, expiry and entry in the lease index.
local function unlease(k, leases, tenant, id)
  redis.call('HDEL', k, 'tok', 'exp')
  redis.call('ZREM', leases, tenant .. ':' .. id)
end

local function wake_message(node, tenant)
  return '{"origin":"' .. node .. '","type":"wake","tenant":"' .. tenant .. '"}'
end

local function set_of(csv)
  local s = {}
  for item in string.gmatch(csv, '[^,]+') do
    s[item] = true
  end
  return s
end

-- A task filter from six arguments starting at ARGV[i]: statuses and
-- priority ranks as comma-separated lists, agent, parent, created_after and
-- created_before; empty means "any".
local function parse_filter(i)
  local f = {
    statuses = ARGV[i] ~= '' and set_of(ARGV[i]) or nil,
    priorities = ARGV[i + 1] ~= '' and set_of(ARGV[i + 1]) or nil,
    agent = ARGV[i + 2] ~= '' and ARGV[i + 2] or nil,
    parent = ARGV[i + 3] ~= '' and ARGV[i + 3] or nil,
    after = ARGV[i + 4] ~= '' and tonumber(ARGV[i + 4]) or nil,
    before = ARGV[i + 5] ~= '' and tonumber(ARGV[i + 5]) or nil,
  }
  f.empty = not (f.statuses or f.priorities or f.agent or f.parent or f.after or f.before)
  return f
end

local function matches(f, k)
  if f.empty then
    return true
  end
  local v = redis.call('HMGET', k, 'st', 'pri', 'ag', 'par', 'cr')
  if not v[1] then
    return false
  end
  if f.statuses and not f.statuses[v[1]] then return false end
  if f.priorities and not f.priorities[v[2]] then return false end
  if f.agent and v[3] ~= f.agent then return false end
  if f.parent and v[4] ~= f.parent then return false end
  if f.after and tonumber(v[5]) < f.after then return false end
  if f.before and tonumber(v[5]) >= f.before then return false end
  return true
end

-- Deletes a terminal task and everything kept with it.
local function delete_task(T, id, k, status)
  local v = redis.call('HMGET', k, 'idem')
  if v[1] then
    redis.call('HDEL', T .. ':idem', v[1])
  end
  redis.call('DEL', k, T .. ':h:' .. id, T .. ':o:' .. id)
  redis.call('ZREM', T .. ':all', id)
  redis.call('ZREM', T .. ':fin', id)
  redis.call('ZREM', T .. ':dead', id)
  count(T, status, -1)
end

-- Puts a dead-lettered, failed or cancelled task back in line with fresh attempts.
local function replay_task(T, id, k, now)
  local v = redis.call('HMGET', k, 'st', 'pri', 'seq', 'ag', 'err')
  redis.call('HSET', k, 'st', 'pending', 'att', '0', 'run', now, 'cxl', '0', 'up', now)
  redis.call('HDEL', k, 'res', 'ca', 'dl')
  redis.call('ZREM', T .. ':fin', id)
  redis.call('ZREM', T .. ':dead', id)
  redis.call('ZADD', T .. ':q:' .. v[2], now, queue_member(v[3], id))
  count(T, v[1], -1)
  count(T, 'pending', 1)
  history(T, id, now, '0', 'pending', '0', v[4], v[5])
end
