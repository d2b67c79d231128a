-- Monotonic watermark: store the new value and publish it only when it is newer.
--
--   KEYS[1]  watermark key
--   ARGV[1]  new watermark, 16 lower-case hex digits (cache/readmodel/codec.py encode_watermark)
--   ARGV[2]  channel to publish on when the watermark moved: a sharded channel in KEYS[1]'s
--            slot (its name carries the key as hash tag), as a cluster requires of a script
--   ARGV[3]  message to publish
--   ARGV[4]  optional: "1" to write only over a stored watermark
--   returns  1 when the watermark moved forward, 0 when the stored one is equal or newer,
--            -1 when ARGV[4] is "1" and no watermark is stored (Redis lost its data: the
--            writer must reload it, and a watermark written now would hide that)
--
-- Compared as two 32-bit halves: Lua numbers are doubles, exact only below 2^53.

local function halves(hex)
  if not hex or #hex ~= 16 then
    return nil, nil
  end
  return tonumber(string.sub(hex, 1, 8), 16), tonumber(string.sub(hex, 9, 16), 16)
end

local new_hi, new_lo = halves(ARGV[1])
if not new_hi or not new_lo then
  return redis.error_reply('ERR advance_watermark: malformed watermark')
end
local stored = redis.call('GET', KEYS[1])
if not stored and ARGV[4] == '1' then
  return -1
end
local old_hi, old_lo = halves(stored)
if old_hi and old_lo and (old_hi > new_hi or (old_hi == new_hi and old_lo >= new_lo)) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SPUBLISH', ARGV[2], ARGV[3])
return 1
