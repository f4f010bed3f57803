-- keys: API keys. K = "<prefix>:keys" is a hash from each key's hash (hex)
-- to its id; each key is a hash K .. ':' .. id whose fields are KEY_FIELDS
-- (absent when empty). Times are compared as numbers (milliseconds fit a
-- double exactly) but stored as the strings the Rust side sent.
-- ARGV: K, mode, then
--   'create': the KEY_FIELDS values in order; returns 'c' (id or hash taken) or 'ok';
--   'find': 'id' or 'hash', the value; returns the key's fields or 'n';
--   'revoke' / 'expire': id, time; returns the key's fields or 'n';
--   'touch': count, then (id, time) pairs; returns 'ok';
--   'list': tenant or ''; returns every matching key's fields.
local KEY_FIELDS = { 'id', 'hash', 'name', 'tenant', 'role', 'prefix', 'cr', 'exp', 'used', 'rev' }
local K, mode = ARGV[1], ARGV[2]

local function read_key(id)
  return redis.call('HMGET', K .. ':' .. id, unpack(KEY_FIELDS))
end

-- Sets `field` to `at` if it is unset or if keep(current, at) says to.
local function move(id, field, at, keep)
  local k = K .. ':' .. id
  local current = redis.call('HGET', k, field)
  if not current or not keep(tonumber(current), tonumber(at)) then
    redis.call('HSET', k, field, at)
  end
end

if mode == 'create' then
  local id, hash = ARGV[3], ARGV[4]
  if redis.call('EXISTS', K .. ':' .. id) == 1 or redis.call('HEXISTS', K, hash) == 1 then
    return 'c'
  end
  redis.call('HSET', K, hash, id)
  for i, field in ipairs(KEY_FIELDS) do
    local value = ARGV[2 + i]
    if value ~= '' then
      redis.call('HSET', K .. ':' .. id, field, value)
    end
  end
  return 'ok'
elseif mode == 'find' then
  local id = ARGV[4]
  if ARGV[3] == 'hash' then
    id = redis.call('HGET', K, ARGV[4])
  end
  if not id or redis.call('EXISTS', K .. ':' .. id) == 0 then
    return 'n'
  end
  return read_key(id)
elseif mode == 'revoke' or mode == 'expire' then
  local id, at = ARGV[3], ARGV[4]
  if redis.call('EXISTS', K .. ':' .. id) == 0 then
    return 'n'
  end
  if mode == 'revoke' then
    move(id, 'rev', at, function() return true end)
  else
    move(id, 'exp', at, function(current, new) return current <= new end)
  end
  return read_key(id)
elseif mode == 'touch' then
  for i = 1, tonumber(ARGV[3]) do
    local id, at = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
    if redis.call('EXISTS', K .. ':' .. id) == 1 then
      move(id, 'used', at, function(current, new) return current >= new end)
    end
  end
  return 'ok'
end
local out = {}
for _, id in ipairs(redis.call('HVALS', K)) do
  local key = read_key(id)
  if ARGV[3] == '' or key[4] == ARGV[3] then
    out[#out + 1] = key
  end
end
return out
