-- purge: deletes a terminal task and its output and history; or, in bulk,
-- terminal tasks matching a filter that finished before a time.
-- ARGV: T, mode, then
--   mode 'one': task id; returns 'n', 't:<status>' (not terminal) or 'ok';
--   mode 'bulk': finished_before, offset, chunk, the six filter arguments;
--     looks at up to `chunk` finished tasks from `offset` and returns
--     {deleted, examined}.
local T, mode = ARGV[1], ARGV[2]
if mode == 'one' then
  local id = ARGV[3]
  local k = task_key(T, id)
  local status = redis.call('HGET', k, 'st')
  if not status then
    return 'n'
  end
  if not is_terminal(status) then
    return 't:' .. status
  end
  delete_task(T, id, k, status)
  flush_counts()
  return 'ok'
end
local before, offset, chunk = ARGV[3], ARGV[4], ARGV[5]
local f = parse_filter(6)
local ids = redis.call('ZRANGEBYSCORE', T .. ':fin', '-inf', '(' .. before, 'LIMIT', offset, chunk)
local deleted = 0
for _, id in ipairs(ids) do
  local k = task_key(T, id)
  if matches(f, k) then
    delete_task(T, id, k, redis.call('HGET', k, 'st'))
    deleted = deleted + 1
  end
end
flush_counts()
return { deleted, #ids }
