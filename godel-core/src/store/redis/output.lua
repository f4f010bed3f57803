-- output: appends output chunks to the current attempt's record.
-- ARGV: T, task id, attempt, token, now, then pairs of (stream, data).
-- Returns 'l' (lease lost) or 'ok'.
local T, id, attempt, token, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local k = task_key(T, id)
if not fenced(k, token, attempt) then
  return 'l'
end
local entries = {}
for i = 6, #ARGV, 2 do
  entries[#entries + 1] = attempt .. '|' .. ARGV[i] .. '|' .. now .. '|' .. ARGV[i + 1]
end
if #entries > 0 then
  redis.call('RPUSH', T .. ':o:' .. id, unpack(entries))
end
return 'ok'
