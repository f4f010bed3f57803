-- heartbeat: extends a lease and reports a pending cancel request.
-- ARGV: T, lease index, tenant, task id, attempt, token, new expires_at.
-- Returns 'l' (lease lost) or the cancel flag ('0' or '1').
local T, leases, tenant, id, attempt, k, f = held_lease()
if not f then
  return 'l'
end
local expires = ARGV[7]
redis.call('HSET', k, 'exp', expires)
redis.call('ZADD', leases, expires, tenant .. ':' .. id)
return f[4]
