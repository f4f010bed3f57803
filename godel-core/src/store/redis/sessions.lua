-- sessions: every session of a tenant, as field lists (the caller filters,
-- sorts and limits); or, in mode 'abandon', ends every live session of the
-- named agents in state `error`.
-- ARGV: T, mode ('all' or 'abandon'), then for 'abandon': now, reason, agents.
local T, mode = ARGV[1], ARGV[2]
local ids = redis.call('ZRANGE', T .. ':ss', 0, -1)
if mode == 'all' then
  local out = {}
  for _, id in ipairs(ids) do
    out[#out + 1] = redis.call('HGETALL', T .. ':s:' .. id)
  end
  return out
end
local now, reason = ARGV[3], ARGV[4]
local agents = {}
for i = 5, #ARGV do
  agents[ARGV[i]] = true
end
local live = { created = true, initializing = true, ready = true, running = true, completing = true }
local n = 0
for _, id in ipairs(ids) do
  local k = T .. ':s:' .. id
  local v = redis.call('HMGET', k, 'st', 'ag')
  if live[v[1]] and agents[v[2]] then
    redis.call('HSET', k, 'st', 'error', 'err', reason, 'up', now)
    n = n + 1
  end
end
return n
