-- output: appends output chunks to the current attempt's record.
-- ARGV: T, lease index, tenant, task id, attempt, token, now, then pairs of
-- (stream, data).
-- Returns 'l' (lease lost) or 'ok'.
local T, _, _, id, attempt, _, f = held_lease()
if not f then
  return 'l'
end
local now = ARGV[7]
local entries = {}
for i = 8, #ARGV, 2 do
  entries[#entries + 1] = attempt .. '|' .. ARGV[i] .. '|' .. now .. '|' .. ARGV[i + 1]
end
if #entries > 0 then
  redis.call('RPUSH', T .. ':o:' .. id, unpack(entries))
end
return 'ok'
