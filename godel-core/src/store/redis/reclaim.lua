-- reclaim: across tenants, makes tasks whose lease lapsed at or before now
-- ready again (the attempt stays counted), dead-letters them when attempts
-- are spent, or cancels them if a cancel was requested; wakes other nodes for
-- each tenant that got ready tasks.
-- ARGV: prefix, lease index, now, limit, channel, node id.
-- Returns per task: tenant, id, priority rank, attempt, new status.
local prefix, leases, now, limit, channel, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local out = {}
local woken = {}
local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
for _, m in ipairs(lapsed) do
  local sep = string.find(m, ':', 1, true)
  local tenant, id = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
  local T = prefix .. ':' .. tenant
  local k = task_key(T, id)
  redis.call('ZREM', leases, m)
  local f = redis.call('HMGET', k, 'st', 'att', 'max', 'cxl', 'pri', 'seq', 'run', 'ag')
  if is_leased(f[1]) then
    local status
    if f[4] == '1' then
      status = 'cancelled'
    elseif tonumber(f[2]) >= tonumber(f[3]) then
      status = 'dead_letter'
    else
      status = 'pending'
    end
    local err = '{"kind":"lease_expired","message":"lease of attempt ' .. f[2] .. ' expired"}'
    redis.call('HDEL', k, 'tok', 'exp')
    redis.call('HSET', k, 'st', status, 'err', err, 'up', now)
    if status == 'pending' then
      redis.call('ZADD', T .. ':q:' .. f[5], f[7], queue_member(f[6], id))
      woken[tenant] = true
    else
      redis.call('HSET', k, 'ca', now)
      redis.call('ZADD', T .. ':fin', now, id)
      if status == 'dead_letter' then
        redis.call('HSET', k, 'dl', now)
        redis.call('ZADD', T .. ':dead', f[6], id)
      end
    end
    count(T, f[1], -1)
    count(T, status, 1)
    history(T, id, now, f[2], status, f[4], f[8], err)
    out[#out + 1] = { tenant, id, f[5], f[2], status }
  end
end
flush_counts()
for tenant in pairs(woken) do
  redis.call('PUBLISH', channel, wake_message(node, tenant))
end
return out
