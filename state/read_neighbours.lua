--[==[
read_neighbours.lua: the strongest co-occurrence partners of many items in one shard, in one call
(the worker's rebuild of recommendation views, src/engine/recommend/neighbours.py).

KEYS[1]  the shard's watermark key: it routes the call to the shard's cluster slot (not read)
ARGV[1]  key prefix of the neighbour sets, "<ns>:{<topic>:<partition>}:<relation>:co:"
ARGV[2]  how many partners to read per item, strongest first
ARGV[3..] the items

Returns, per item in order, a flat array member, weight, member, weight, ... Read only; every key
carries the shard's hash tag, so the call touches one slot (no CROSSSLOT on Redis Cluster).
]==]

local out = {}
local last = tonumber(ARGV[2]) - 1
for i = 3, #ARGV do
  out[#out + 1] = redis.call('ZREVRANGE', ARGV[1] .. ARGV[i], 0, last, 'WITHSCORES')
end
return out
