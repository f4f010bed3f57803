-- confirm_cancel: the holder aborted after seeing a cancel request.
-- ARGV: T, lease index, tenant, task id, attempt, token, now.
-- Returns 'l' (lease lost) or 'ok'.
local T, leases, tenant, id, attempt, k, f = held_lease()
if not f then
  return 'l'
end
local now = ARGV[7]
unlease(k, leases, tenant, id)
redis.call('HSET', k, 'st', 'cancelled', 'ca', now, 'up', now)
redis.call('ZADD', T .. ':fin', now, id)
count(T, f[3], -1)
count(T, 'cancelled', 1)
flush_counts()
history(T, id, now, attempt, 'cancelled', f[4], f[5], f[6])
return 'ok'
