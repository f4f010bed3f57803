-- list: one step of a listing in insertion order (or its reverse), after a
-- sequence number, filtered. Looks at no more than `budget` tasks so that a
-- sparse filter cannot hold the server for long; the caller continues from
-- the returned position until it has a page.
-- ARGV: T, order ('a' or 'd'), after (a sequence number, or '' for the
--   start), wanted, budget, then the six filter arguments.
-- Returns {last sequence number looked at ('' if none), done (1 when the
-- listing is exhausted), then pairs of (sequence number, task fields)}.
local T, order, after, wanted, budget = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local f = parse_filter(6)
local out = { '', 0 }
local found, looked = 0, 0
local position = after
while found < wanted and looked < budget do
  local chunk = f.empty and (wanted - found) or 200
  local rows
  if order == 'a' then
    rows = redis.call('ZRANGEBYSCORE', T .. ':all', position == '' and '-inf' or '(' .. position, '+inf',
      'WITHSCORES', 'LIMIT', 0, chunk)
  else
    rows = redis.call('ZREVRANGEBYSCORE', T .. ':all', position == '' and '+inf' or '(' .. position, '-inf',
      'WITHSCORES', 'LIMIT', 0, chunk)
  end
  for i = 1, #rows, 2 do
    local id, seq = rows[i], rows[i + 1]
    local k = task_key(T, id)
    looked = looked + 1
    position = seq
    if matches(f, k) then
      out[#out + 1] = seq
      -- The index names the task even if its id field does not decode.
      local row = read_task(k)
      row[1] = id
      out[#out + 1] = row
      found = found + 1
      if found >= wanted then break end
    end
  end
  if #rows < 2 * chunk and found < wanted then
    out[2] = 1
    break
  end
end
out[1] = position
return out
