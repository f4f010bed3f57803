-- write: a lease holder's starts and completions, one or a batch, each
-- fenced on its own lease (a stale one does not stop the others) and applied
-- in input order.
-- ARGV: prefix, lease index, now, n, then 6 per entry:
--   kind ('s' start or 'c' complete), tenant, task id, attempt, token,
--   agent (start) or result JSON (complete).
-- Returns per entry: 's<cancel>:<expires_at>' (started; cancel is 1 if a
-- cancel was requested),
-- 'c' (completed) or 'l' (lease lost).
local prefix, leases, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
-- Index changes, applied once at the end (an entry's fence reads only its task hash).
local unleased = {}
local finished = {}
for i = 0, n - 1 do
  local b = 5 + i * 6
  local kind, tenant, id, attempt, token, extra = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local T = prefix .. ':' .. tenant
  local k = task_key(T, id)
  local f = fenced(k, token, attempt)
  if not f then
    out[#out + 1] = 'l'
  elseif kind == 's' then
    if f[3] == 'assigned' then
      redis.call('HSET', k, 'st', 'running', 'ag', extra, 'sa', now, 'up', now)
      count(T, 'assigned', -1)
      count(T, 'running', 1)
      history(T, id, now, attempt, 'running', f[4], extra, f[6])
    else
      redis.call('HSET', k, 'ag', extra, 'up', now)
    end
    out[#out + 1] = 's' .. f[4] .. ':' .. f[11]
  else
    -- Emptied rather than deleted fields read as absent; one HSET does it all.
    redis.call('HSET', k, 'st', 'completed', 'res', extra, 'ca', now, 'up', now, 'tok', '', 'exp', '')
    unleased[#unleased + 1] = tenant .. ':' .. id
    local fin = finished[T]
    if not fin then
      fin = {}
      finished[T] = fin
    end
    fin[#fin + 1] = now
    fin[#fin + 1] = id
    count(T, f[3], -1)
    count(T, 'completed', 1)
    history(T, id, now, attempt, 'completed', f[4], f[5], f[6])
    out[#out + 1] = 'c'
  end
end
for i = 1, #unleased, 1000 do
  redis.call('ZREM', leases, unpack(unleased, i, math.min(i + 999, #unleased)))
end
for T, fin in pairs(finished) do
  for i = 1, #fin, 1000 do
    redis.call('ZADD', T .. ':fin', unpack(fin, i, math.min(i + 999, #fin)))
  end
end
flush_counts()
return out
