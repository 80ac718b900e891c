--[==[
apply_batch: apply a batch of events from ONE input partition, exactly once.

KEYS[1]  watermark key of the shard, "<ns>:{<topic>:<partition>}:wm" (an integer offset)
ARGV[1]  shard prefix "<ns>:{<topic>:<partition>}:"; every key an op names is prefixed with it,
         so all keys of one call share the hash tag {<topic>:<partition>} (Redis Cluster-safe)
ARGV[2]  the batch as one JSON array, in offset order: [[offset, [[code, key, a, b], ...]], ...]
         (one argument instead of ~50 per event: packing arguments dominated the client's cost)
ARGV[3]  the watermark the caller last saw for this shard, or "" if it has none. If Redis's is
         lower, Redis lost writes (failover to a lagging replica, restart from an AOF missing its
         last second): nothing is written and {-1, 0, watermark} tells the caller to rewind. If
         it is higher, another writer got there first (a worker that lost the partition in a
         rebalance finished its last batch): nothing is written and {-2, 0, watermark} tells the
         caller to re-read, because ops computed from what it read (model parameters) are stale.

Op codes (key is relative to the shard prefix):
  hincrby       HINCRBY key a b            integer counter
  hincrbyfloat  HINCRBYFLOAT key a b       float sum
  hset          HSET key a b               latest value, in offset order
  hsetmax       HSET key a b if b > current (numeric), e.g. the latest event time seen
  hdel          HDEL key a (b is ignored; send "")
  custbuy       a customer's purchase at time b (ms) in hash key (fields first, last, x): the
                first purchase sets first = last = b, x = 0; a purchase a day or more after
                last counts one more repeat transaction (x + 1, last = b); one a day or more
                before first becomes the new first (x + 1); same-day purchases are one
                transaction (BG/NBD's x, t_x and T: src/engine/core/returns.py)
  hsetlatest    HSET key a b where b is "<event_time_ms>|<value>", unless the stored value has a
                later event time: the latest observation by event time, whatever the arrival order
  zincrby       ZINCRBY key b a            weighted tally of member a
  covisit       co-occurrence, for recommendations: key is a user's history (sorted set item ->
                last event time), a the item, b "t|score|window_ms|history|partners|top_n|co:".
                Each of the `partners` most recent history items within window_ms of t (other
                than a) gains `score` with a, both ways, in sorted sets "<co:><item>", which keep
                their `top_n` best members; then a joins the history at time t (kept to the
                `history` most recent items).
  lpushcap      LPUSH key a, LTRIM to the newest b entries (bounded recent history)
  seenid        ZADD key <epoch * 1e12 + offset> a: event id a was applied at this position (the
                epoch key counts the times the broker lost the log); the sorted set keeps
                the latest b ids (trimmed once it is a quarter over): the worker dead-letters a
                later event with an id still in it (duplicate_event_id)

An event whose offset is at or below the watermark was applied before (Kafka re-delivered it
after a crash or rebalance) and is skipped whole. Every op, and every number it carries, is
checked before anything is written, because Redis does not roll back a script that fails half
way; a rejected batch writes nothing and names the offending offset.
Returns {applied, skipped, new_watermark}.
]==]

local wm = tonumber(redis.call('GET', KEYS[1]) or '-1')
if ARGV[3] ~= '' then
  local expected = tonumber(ARGV[3])
  if wm < expected then return {-1, 0, wm} end
  if wm > expected then return {-2, 0, wm} end
end
local prefix = ARGV[1]
local batch = cjson.decode(ARGV[2])
-- the partition's log epoch: moves on when the broker lost the log and offsets start again
local epoch = tonumber(redis.call('GET', prefix .. 'epoch') or '0')

local function integer(x)  -- as Redis's integer commands read it: digits only, 64-bit range
  return string.match(x, '^-?%d+$') ~= nil and #x <= 18
end
local function finite(x)
  local n = tonumber(x)
  return n ~= nil and n == n and n ~= math.huge and n ~= -math.huge
end
local function stamped(x)
  local ts = string.match(x, '^(%d+)|')
  return ts ~= nil
end
local function anything() return true end
local COVISIT = '^(%d+)|([^|]+)|(%d+)|(%d+)|(%d+)|(%d+)|(.+)$'
local function covisit_spec(x)
  local t, score = string.match(x, COVISIT)
  return t ~= nil and finite(score)
end
local function prune(key, top_n)
  -- let a set grow a quarter past its bound before trimming, so trimming is rare
  if redis.call('ZCARD', key) > top_n + math.floor(top_n / 4) then
    redis.call('ZREMRANGEBYRANK', key, 0, -(top_n + 1))
  end
end
-- what the fourth field of each op must be
local check = {hincrby = integer, hincrbyfloat = finite, hset = anything, hsetmax = finite,
               hsetlatest = stamped, zincrby = finite, lpushcap = integer,
               covisit = covisit_spec, hdel = anything, custbuy = integer, seenid = integer}

for _, event in ipairs(batch) do
  for _, op in ipairs(event[2]) do
    local valid = check[op[1]]
    if valid == nil or #op ~= 4 or type(op[2]) ~= 'string' or type(op[3]) ~= 'string'
        or type(op[4]) ~= 'string' or not valid(op[4]) then
      return redis.error_reply('ERR apply_batch: invalid op at offset ' .. tostring(event[1])
        .. ': ' .. tostring(op[1]) .. ' ' .. tostring(op[4]))
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
      elseif code == 'hdel' then
        redis.call('HDEL', key, a)
      elseif code == 'custbuy' then
        local t, day = tonumber(b), 86400000
        local first = tonumber(redis.call('HGET', key, 'first'))
        if first == nil then
          redis.call('HSET', key, 'first', b, 'last', b, 'x', 0)
        elseif t < first then
          if first - t >= day then redis.call('HINCRBY', key, 'x', 1) end
          redis.call('HSET', key, 'first', b)
        elseif t - tonumber(redis.call('HGET', key, 'last')) >= day then
          redis.call('HINCRBY', key, 'x', 1)
          redis.call('HSET', key, 'last', b)
        end
      elseif code == 'hsetmax' then
        local current = tonumber(redis.call('HGET', key, a))
        if current == nil or tonumber(b) > current then
          redis.call('HSET', key, a, b)
        end
      elseif code == 'hsetlatest' then
        local current = redis.call('HGET', key, a)
        if not current or tonumber(string.match(b, '^(%d+)|'))
            >= tonumber(string.match(current, '^(%d+)|') or '0') then
          redis.call('HSET', key, a, b)
        end
      elseif code == 'zincrby' then
        redis.call('ZINCRBY', key, b, a)
      elseif code == 'covisit' then
        local t, score, window, history, partners, top_n, co = string.match(b, COVISIT)
        t, window, history = tonumber(t), tonumber(window), tonumber(history)
        partners, top_n = tonumber(partners), tonumber(top_n)
        local recent = redis.call('ZREVRANGEBYSCORE', key, '+inf', t - window,
                                  'LIMIT', 0, partners + 1)
        local seen = 0
        for _, other in ipairs(recent) do
          if other ~= a and seen < partners then
            seen = seen + 1
            local mine, theirs = prefix .. co .. a, prefix .. co .. other
            redis.call('ZINCRBY', mine, score, other)
            redis.call('ZINCRBY', theirs, score, a)
            prune(mine, top_n)
            prune(theirs, top_n)
          end
        end
        redis.call('ZADD', key, 'GT', t, a)   -- adds a new item; a late, older event keeps the newer time
        if redis.call('ZCARD', key) > history then
          redis.call('ZREMRANGEBYRANK', key, 0, -(history + 1))
        end
      elseif code == 'seenid' then
        redis.call('ZADD', key, epoch * 1e12 + offset, a)
        prune(key, tonumber(b))
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
