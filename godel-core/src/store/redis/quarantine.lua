-- quarantine: task rows that do not decode, moved out of the queue with the
-- reason, and the reads and deletes of what is there. A quarantined row is
-- the hash `T:qr:<id>` (fields `seq`, `err`, `raw`: the task hash as a JSON
-- object) and a member of `T:qr`, scored by the task's sequence number.
-- ARGV: T, mode, then
--   mode 'move': the lease index, tenant, then pairs of (task id, error);
--     moves each task still there and returns {id, raw} for each one moved;
--   mode 'list': after (a sequence number, or '' for the start), limit;
--     returns {seq, id, error, raw} for each row, in sequence order;
--   mode 'get': id; returns {error, raw}, or nil if there is no such row;
--   mode 'drop': id; returns 1, or 0 if there was no such row;
--   mode 'purge': returns how many rows went.
local T, mode = ARGV[1], ARGV[2]

local function known(status)
  return status == 'pending' or is_leased(status) or is_terminal(status)
end

if mode == 'move' then
  local leases, tenant = ARGV[3], ARGV[4]
  local out = {}
  for i = 5, #ARGV, 2 do
    local id, err = ARGV[i], ARGV[i + 1]
    local k = task_key(T, id)
    local seq = redis.call('ZSCORE', T .. ':all', id)
    if seq and redis.call('EXISTS', k) == 1 then
      local flat = redis.call('HGETALL', k)
      local row = {}
      for j = 1, #flat, 2 do
        row[flat[j]] = flat[j + 1]
      end
      local raw = cjson.encode(row)
      -- Out of every index, whatever the fields claim: the priority and
      -- status fields may be what does not decode.
      local member = queue_member(seq, id)
      for rank = 0, 3 do
        redis.call('ZREM', T .. ':q:' .. rank, member)
      end
      redis.call('ZREM', leases, tenant .. ':' .. id)
      if row['st'] and known(row['st']) then
        count(T, row['st'], -1)
      end
      if row['idem'] and redis.call('HGET', T .. ':idem', row['idem']) == id then
        redis.call('HDEL', T .. ':idem', row['idem'])
      end
      redis.call('DEL', k, T .. ':h:' .. id, T .. ':o:' .. id)
      redis.call('ZREM', T .. ':all', id)
      redis.call('ZREM', T .. ':fin', id)
      redis.call('ZREM', T .. ':dead', id)
      redis.call('HSET', T .. ':qr:' .. id, 'seq', seq, 'err', err, 'raw', raw)
      redis.call('ZADD', T .. ':qr', seq, id)
      out[#out + 1] = { id, raw }
    end
  end
  flush_counts()
  return out
elseif mode == 'list' then
  local after, limit = ARGV[3], ARGV[4]
  local ids = redis.call('ZRANGEBYSCORE', T .. ':qr', after == '' and '-inf' or '(' .. after, '+inf', 'WITHSCORES',
    'LIMIT', 0, limit)
  local out = {}
  for i = 1, #ids, 2 do
    local v = redis.call('HMGET', T .. ':qr:' .. ids[i], 'err', 'raw')
    out[#out + 1] = { ids[i + 1], ids[i], v[1] or '', v[2] or '' }
  end
  return out
elseif mode == 'get' then
  local v = redis.call('HMGET', T .. ':qr:' .. ARGV[3], 'err', 'raw')
  if not v[1] then
    return nil
  end
  return v
elseif mode == 'drop' then
  redis.call('DEL', T .. ':qr:' .. ARGV[3])
  return redis.call('ZREM', T .. ':qr', ARGV[3])
end
local ids = redis.call('ZRANGE', T .. ':qr', 0, -1)
for _, id in ipairs(ids) do
  redis.call('DEL', T .. ':qr:' .. id)
end
redis.call('DEL', T .. ':qr')
return #ids
