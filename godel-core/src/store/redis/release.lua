-- release: gives a task back without counting the attempt; it keeps its
-- run_at and so its place in line, or is cancelled if a cancel was requested.
-- ARGV: T, lease index, tenant, task id, attempt, token, now, channel, wake message.
-- Returns 'l' (lease lost), 'cancelled' or 'pending'.
local T, leases, tenant, id, attempt, k, f = held_lease()
if not f then
  return 'l'
end
local now = ARGV[7]
local channel, wake = ARGV[8], ARGV[9]
unlease(k, leases, tenant, id)
local status, att
if f[4] == '1' then
  status, att = 'cancelled', attempt
  redis.call('HSET', k, 'st', status, 'ca', now, 'up', now)
  redis.call('ZADD', T .. ':fin', now, id)
else
  status, att = 'pending', int(tonumber(attempt) - 1)
  redis.call('HSET', k, 'st', status, 'att', att, 'up', now)
  redis.call('ZADD', T .. ':q:' .. f[7], f[9], queue_member(f[8], id))
end
count(T, f[3], -1)
count(T, status, 1)
flush_counts()
history(T, id, now, att, status, f[4], f[5], f[6])
if status == 'pending' and tonumber(f[9]) <= tonumber(now) then
  redis.call('PUBLISH', channel, wake)
end
return status
