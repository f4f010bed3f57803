-- heartbeat: extends a lease and reports a pending cancel request.
-- ARGV: T, lease index, tenant, task id, attempt, token, new expires_at.
-- Returns 'l' (lease lost) or the cancel flag ('0' or '1').
local T, leases, tenant, id, attempt, token, expires = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local k = task_key(T, id)
local f = fenced(k, token, attempt)
if not f then
  return 'l'
end
redis.call('HSET', k, 'exp', expires)
redis.call('ZADD', leases, expires, tenant .. ':' .. id)
return f[4]
