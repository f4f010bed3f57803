-- claim: moves up to `limit` ready tasks the claimer is capable of to
-- `assigned`, in (priority, run_at, seq) order, under fresh leases.
-- ARGV: T, lease index, tenant, now, expires_at, agent, limit, token prefix
--   (the first 28 characters of a random UUID; each lease appends 8 hex
--   digits), then the claimer's capabilities.
-- Returns one `read_task` row (including the token `tok`) per claim.
local T, leases, tenant, now, expires, agent = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local limit, token_prefix = tonumber(ARGV[7]), ARGV[8]
local have = {}
for i = 9, #ARGV do
  have[ARGV[i]] = true
end
local out = {}
local lease_entries = {}
for rank = 0, 3 do
  if #out >= limit then break end
  local q = T .. ':q:' .. rank
  local offset = 0
  while #out < limit do
    local want = limit - #out
    local chunk = want < 100 and want or 100
    local members = redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', offset, chunk)
    if #members == 0 then break end
    local taken = {}
    local skipped = 0
    for _, m in ipairs(members) do
      local id = string.sub(m, 18)
      local k = task_key(T, id)
      local row = read_task(k)
      local caps = row[5]
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
        taken[#taken + 1] = m
        local attempt = int(tonumber(row[9]) + 1)
        local token = token_prefix .. string.format('%08x', #out)
        -- Emptied rather than deleted fields read as absent; one HSET does it all.
        redis.call('HSET', k, 'st', 'assigned', 'att', attempt, 'ag', agent, 'exp', expires, 'cxl', '0', 'up', now,
          'tok', token, 'sa', '')
        row[3], row[9], row[13], row[14], row[15], row[19], row[20], row[23] =
          'assigned', attempt, agent, expires, '0', now, false, token
        lease_entries[#lease_entries + 1] = expires
        lease_entries[#lease_entries + 1] = tenant .. ':' .. id
        history(T, id, now, attempt, 'assigned', '0', agent, row[17])
        -- The member names the task even if its id field does not decode.
        row[1] = id
        out[#out + 1] = row
        if #out >= limit then break end
      else
        skipped = skipped + 1
      end
    end
    if #taken > 0 then
      redis.call('ZREM', q, unpack(taken))
    end
    -- Claimed members left the set; only the skipped ones still sit before the next unseen member.
    offset = offset + skipped
    if #members < chunk then break end
  end
end
for i = 1, #lease_entries, 1000 do
  redis.call('ZADD', leases, unpack(lease_entries, i, math.min(i + 999, #lease_entries)))
end
count(T, 'pending', -#out)
count(T, 'assigned', #out)
flush_counts()
return out
