-- claim: moves up to `limit` ready tasks the claimer is capable of to
-- `assigned`, in (priority, run_at, seq) order, under fresh leases.
-- ARGV: T, lease index, tenant, now, expires_at, agent, limit, token prefix
--   (the first 28 characters of a random UUID; each lease appends 8 hex
--   digits), then the claimer's capabilities.
-- Returns one array of task fields (including the token `tok`) per claim.
local T, leases, tenant, now, expires, agent = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local limit, token_prefix = tonumber(ARGV[7]), ARGV[8]
local have = {}
for i = 9, #ARGV do
  have[ARGV[i]] = true
end
local out = {}
if limit <= 0 then
  return out
end
for rank = 0, 3 do
  if #out >= limit then break end
  local q = T .. ':q:' .. rank
  local offset = 0
  while #out < limit do
    local want = limit - #out
    local chunk = want < 100 and want or 100
    local members = redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', offset, chunk)
    if #members == 0 then break end
    local skipped = 0
    for _, m in ipairs(members) do
      local id = string.sub(m, 18)
      local k = task_key(T, id)
      local caps = redis.call('HGET', k, 'caps')
      local capable = true
      if caps then
        for c in string.gmatch(caps, '%S+') do
          if not have[c] then
            capable = false
            break
          end
        end
      end
      if capable then
        redis.call('ZREM', q, m)
        local attempt = int(redis.call('HINCRBY', k, 'att', 1))
        local token = token_prefix .. string.format('%08x', #out)
        redis.call('HSET', k, 'st', 'assigned', 'ag', agent, 'exp', expires, 'cxl', '0', 'up', now, 'tok', token)
        redis.call('HDEL', k, 'sa')
        redis.call('ZADD', leases, expires, tenant .. ':' .. id)
        local err = redis.call('HGET', k, 'err')
        history(T, id, now, attempt, 'assigned', '0', agent, err)
        out[#out + 1] = redis.call('HGETALL', k)
        if #out >= limit then break end
      else
        skipped = skipped + 1
      end
    end
    -- Claimed members left the set; only the skipped ones still sit before the next unseen member.
    offset = offset + skipped
    if #members < chunk then break end
  end
end
count(T, 'pending', -#out)
count(T, 'assigned', #out)
flush_counts()
return out
