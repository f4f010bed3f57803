-- cancel: a pending task is cancelled at once; a leased one gets a flag its
-- holder sees on its next heartbeat.
-- ARGV: T, task id, now.
-- Returns 'n' (no such task), 'cancelled', 'requested', or the status of a
-- terminal task prefixed with 't:'.
local T, id, now = ARGV[1], ARGV[2], ARGV[3]
local k = task_key(T, id)
local f = redis.call('HMGET', k, 'st', 'pri', 'seq', 'cxl', 'att', 'ag', 'err')
if not f[1] then
  return 'n'
end
if f[1] == 'pending' then
  redis.call('ZREM', T .. ':q:' .. f[2], queue_member(f[3], id))
  redis.call('HSET', k, 'st', 'cancelled', 'ca', now, 'up', now)
  redis.call('ZADD', T .. ':fin', now, id)
  count(T, 'pending', -1)
  count(T, 'cancelled', 1)
  flush_counts()
  history(T, id, now, f[5], 'cancelled', f[4], f[6], f[7])
  return 'cancelled'
end
if is_leased(f[1]) then
  redis.call('HSET', k, 'cxl', '1', 'up', now)
  if f[4] ~= '1' then
    history(T, id, now, f[5], f[1], '1', f[6], f[7])
  end
  return 'requested'
end
return 't:' .. f[1]
