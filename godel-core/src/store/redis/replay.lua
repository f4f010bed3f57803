-- replay: puts a dead-lettered, failed or cancelled task back in the queue
-- with fresh attempts; or, in bulk, every dead letter matching a filter.
-- ARGV: T, now, channel, wake message, mode, then
--   mode 'one': task id, then the statuses it may be replayed from (checked
--   and changed in this one script); returns 'n', 't:<status>' or the task's
--   fields;
--   mode 'bulk': the six filter arguments; returns how many were replayed.
local T, now, channel, wake, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if mode == 'one' then
  local id = ARGV[6]
  local k = task_key(T, id)
  local status = redis.call('HGET', k, 'st')
  if not status then
    return 'n'
  end
  local allowed = false
  for i = 7, #ARGV do
    allowed = allowed or ARGV[i] == status
  end
  if not allowed then
    return 't:' .. status
  end
  replay_task(T, id, k, now)
  flush_counts()
  redis.call('PUBLISH', channel, wake)
  return read_task(k)
end
local f = parse_filter(6)
local n = 0
for _, id in ipairs(redis.call('ZRANGE', T .. ':dead', 0, -1)) do
  local k = task_key(T, id)
  if matches(f, k) then
    replay_task(T, id, k, now)
    n = n + 1
  end
end
flush_counts()
if n > 0 then
  redis.call('PUBLISH', channel, wake)
end
return n
