-- audit: the append-only audit log. A = "<prefix>:audit" is a sorted set of
-- entries scored by their sequence number, each member "<seq>|<entry JSON>";
-- A .. '-at' indexes the sequence numbers by time, for retention, and
-- A .. '-seq' hands the numbers out. Appending in one script makes entries
-- visible in sequence order, so a reader's cursor never skips one.
-- ARGV: A, mode, then
--   'append': count, then (time, entry JSON) pairs; returns 'ok';
--   'prune': before, limit; deletes up to limit entries older than before,
--   oldest first, and returns how many.
local A, mode = ARGV[1], ARGV[2]
if mode == 'append' then
  for i = 1, tonumber(ARGV[3]) do
    local at, entry = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
    local seq = int(redis.call('INCR', A .. '-seq'))
    redis.call('ZADD', A, seq, seq .. '|' .. entry)
    redis.call('ZADD', A .. '-at', at, seq)
  end
  return 'ok'
end
local old = redis.call('ZRANGE', A .. '-at', '-inf', '(' .. ARGV[3], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[4]))
for _, seq in ipairs(old) do
  redis.call('ZREMRANGEBYSCORE', A, seq, seq)
  redis.call('ZREM', A .. '-at', seq)
end
return #old
