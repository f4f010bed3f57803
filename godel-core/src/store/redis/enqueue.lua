-- enqueue: adds tasks (one or a batch) atomically, in order, honouring
-- idempotency keys, and wakes other nodes if any is ready now.
-- ARGV: T, now, channel, wake message, n, then 10 per task:
--   id, idempotency key, priority rank, run_at, payload, capabilities
--   (space-separated), affinity key, parent, max_attempts, timeout (ns).
-- Returns one entry per task: 1 if created, else the existing task's fields (`read_task`).
local T, now, channel, wake, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
local created, ready = 0, false
for i = 0, n - 1 do
  local b = 6 + i * 10
  local id, idem, rank, run_at = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local existing = false
  if idem ~= '' then
    existing = redis.call('HGET', T .. ':idem', idem)
  end
  if existing then
    out[#out + 1] = read_task(task_key(T, existing))
  else
    local seq = int(redis.call('INCR', T .. ':seq'))
    local k = task_key(T, id)
    local fields = { 'id', id, 'seq', seq, 'pri', rank, 'st', 'pending', 'pay', ARGV[b + 4], 'att', '0',
      'max', ARGV[b + 8], 'run', run_at, 'cxl', '0', 'cr', now, 'up', now }
    if idem ~= '' then
      redis.call('HSET', T .. ':idem', idem, id)
      fields[#fields + 1] = 'idem'
      fields[#fields + 1] = idem
    end
    for j, name in ipairs({ 'caps', 'aff', 'par', '', 'to' }) do
      local v = ARGV[b + 4 + j]
      if name ~= '' and v ~= '' then
        fields[#fields + 1] = name
        fields[#fields + 1] = v
      end
    end
    redis.call('HSET', k, unpack(fields))
    redis.call('ZADD', T .. ':all', seq, id)
    redis.call('ZADD', T .. ':q:' .. rank, run_at, queue_member(seq, id))
    history(T, id, now, '0', 'pending', '0', nil, nil)
    created = created + 1
    if tonumber(run_at) <= tonumber(now) then
      ready = true
    end
    out[#out + 1] = 1
  end
end
count(T, 'pending', created)
flush_counts()
if ready then
  redis.call('PUBLISH', channel, wake)
end
return out
