-- fail: ends the current attempt with an error: cancelled if a cancel was
-- requested, failed if not retryable, dead-lettered when attempts are spent,
-- otherwise pending again from run_at (waking other nodes if that is now).
-- ARGV: T, lease index, tenant, task id, attempt, token, now, error JSON,
--   retryable ('1' or '0'), retry run_at, channel, wake message.
-- Returns 'l' (lease lost), 'cancelled', 'failed', 'dead_letter' or 'pending'.
local T, leases, tenant, id, attempt, k, f = held_lease()
if not f then
  return 'l'
end
local now = ARGV[7]
local err, retryable, run_at, channel, wake = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local status
if f[4] == '1' then
  status = 'cancelled'
elseif retryable ~= '1' then
  status = 'failed'
elseif tonumber(f[2]) >= tonumber(f[10]) then
  status = 'dead_letter'
else
  status = 'pending'
end
unlease(k, leases, tenant, id)
redis.call('HSET', k, 'st', status, 'err', err, 'up', now)
if status == 'pending' then
  redis.call('HSET', k, 'run', run_at)
  redis.call('HDEL', k, 'ca')
  redis.call('ZADD', T .. ':q:' .. f[7], run_at, queue_member(f[8], id))
else
  redis.call('HSET', k, 'ca', now)
  redis.call('ZADD', T .. ':fin', now, id)
  if status == 'dead_letter' then
    redis.call('HSET', k, 'dl', now)
    redis.call('ZADD', T .. ':dead', f[8], id)
  end
end
count(T, f[3], -1)
count(T, status, 1)
flush_counts()
history(T, id, now, attempt, status, f[4], f[5], err)
if status == 'pending' and tonumber(run_at) <= tonumber(now) then
  redis.call('PUBLISH', channel, wake)
end
return status
