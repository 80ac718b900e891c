--[==[
apply_batch: apply a batch of events from ONE input partition, exactly once.

KEYS[1]  watermark key of the shard, "<ns>:{<topic>:<partition>}:wm" (an integer offset)
ARGV[1]  shard prefix "<ns>:{<topic>:<partition>}:"; every key an op names is prefixed with it,
         so all keys of one call share the hash tag {<topic>:<partition>} (Redis Cluster-safe)
ARGV[2]  the batch as one JSON array, in offset order: [[offset, [[code, key, a, b], ...]], ...]
         (one argument instead of ~50 per event: packing arguments dominated the client's cost)

Op codes (key is relative to the shard prefix):
  hincrby       HINCRBY key a b            integer counter
  hincrbyfloat  HINCRBYFLOAT key a b       float sum
  hset          HSET key a b               latest value, in offset order
  hsetmax       HSET key a b if b > current (numeric), e.g. the latest event time seen
  zincrby       ZINCRBY key b a            weighted tally of member a
  lpushcap      LPUSH key a, LTRIM to the newest b entries (bounded recent history)

An event whose offset is at or below the watermark was applied before (Kafka re-delivered it
after a crash or rebalance) and is skipped whole. Every op code is checked before anything is
written, because Redis does not roll back a script that fails half way.
Returns {applied, skipped, new_watermark}.
]==]

local wm = tonumber(redis.call('GET', KEYS[1]) or '-1')
local prefix = ARGV[1]
local batch = cjson.decode(ARGV[2])
local known = {hincrby = true, hincrbyfloat = true, hset = true, hsetmax = true,
               zincrby = true, lpushcap = true}

for _, event in ipairs(batch) do
  for _, op in ipairs(event[2]) do
    if not known[op[1]] or #op ~= 4 then
      return redis.error_reply('ERR apply_batch: unknown op ' .. tostring(op[1]))
    end
  end
end

local applied, skipped, last = 0, 0, wm
for _, event in ipairs(batch) do
  local offset = event[1]
  if offset <= last then
    skipped = skipped + 1
  else
    for _, op in ipairs(event[2]) do
      local code, key, a, b = op[1], prefix .. op[2], op[3], op[4]
      if code == 'hincrby' then
        redis.call('HINCRBY', key, a, b)
      elseif code == 'hincrbyfloat' then
        redis.call('HINCRBYFLOAT', key, a, b)
      elseif code == 'hset' then
        redis.call('HSET', key, a, b)
      elseif code == 'hsetmax' then
        local current = tonumber(redis.call('HGET', key, a))
        if current == nil or tonumber(b) > current then
          redis.call('HSET', key, a, b)
        end
      elseif code == 'zincrby' then
        redis.call('ZINCRBY', key, b, a)
      elseif code == 'lpushcap' then
        redis.call('LPUSH', key, a)
        redis.call('LTRIM', key, 0, tonumber(b) - 1)
      end
    end
    last = offset
    applied = applied + 1
  end
end
if last > wm then
  redis.call('SET', KEYS[1], string.format('%.0f', last))
end
return {applied, skipped, last}
