-- counts: a consistent snapshot of one tenant's counts for health reports.
-- ARGV: T, tenant, lease index, now.
-- Returns {per-status counts as a flat field/value list, ready per priority
-- (4 values), scheduled, expired leases, oldest ready run_at or '',
-- quarantined rows}.
local T, tenant, leases, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ready = {}
local scheduled = 0
local oldest = nil
for rank = 0, 3 do
  local q = T .. ':q:' .. rank
  ready[#ready + 1] = redis.call('ZCOUNT', q, '-inf', now)
  scheduled = scheduled + redis.call('ZCOUNT', q, '(' .. now, '+inf')
  local head = redis.call('ZRANGEBYSCORE', q, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
  if #head > 0 and (oldest == nil or tonumber(head[2]) < tonumber(oldest)) then
    oldest = head[2]
  end
end
local expired = 0
local mine = tenant .. ':'
for _, m in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
  if string.sub(m, 1, #mine) == mine then
    expired = expired + 1
  end
end
return { redis.call('HGETALL', T .. ':cnt'), ready, scheduled, expired, oldest or '', redis.call('ZCARD', T .. ':qr') }
