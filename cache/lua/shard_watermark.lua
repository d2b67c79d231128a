-- One indexer shard's applied position, and the least position of the shards in force.
--
--   KEYS[1]  shard watermarks hash (field "N:k" per shard, value 16 lower-case hex digits)
--   ARGV[1]  this shard's field
--   ARGV[2]  its new position, 16 lower-case hex digits
--   ARGV[3]  "1" to write only over a stored position of this shard (see advance_watermark)
--   ARGV[4..] the fields whose least position is the combined watermark
--   returns  the combined watermark (16 hex digits), false while one of those fields has no
--            position yet, or -1 when ARGV[3] is "1" and this shard's field is missing
--
-- Fixed-width lower-case hex compares as strings exactly as the numbers do.

local new = ARGV[2]
if not new or #new ~= 16 or string.find(new, '[^0-9a-f]') then
  return redis.error_reply('ERR shard_watermark: malformed position')
end
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored and ARGV[3] == '1' then
  return -1
end
if not stored or stored < new then
  redis.call('HSET', KEYS[1], ARGV[1], new)
end
local least = nil
for i = 4, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if not value then
    return false
  end
  if not least or value < least then
    least = value
  end
end
return least or false
