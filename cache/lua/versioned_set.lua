-- Versioned set of cache envelopes: each key takes its new envelope only when the new
-- version is at least the stored one. One call may carry many keys; on Redis Cluster they
-- must share a hash slot, which the {project} hash tag in every object key guarantees.
--
--   KEYS[i]       key to write
--   ARGV[2i - 1]  expiry in milliseconds, 0 for none (tombstones carry one)
--   ARGV[2i]      the new envelope, as cache/readmodel/codec.py encodes it
--   returns       one integer per key: 1 written, 0 kept (the stored version is newer)
--
-- The version is read from the envelope's fixed header (83 a1 76 cf + 8 bytes big-endian),
-- not with cmsgpack.unpack: unpacking would decode the whole stored document into Lua tables
-- on every write, and Lua numbers are doubles, exact only below 2^53, while an LSN is an
-- unsigned 64-bit integer. GETRANGE fetches only the 12 header bytes, and the 8 version bytes
-- are compared as two 32-bit halves, which doubles hold exactly.
--
-- A tombstone is an envelope like any other: it blocks every older version and yields to an
-- equal or newer one. An equal version is written again, so a replay is idempotent.
-- A stored value without the header (not written by this layer) counts as absent.

local HEADER = '\131\161v\207'

local function version_of(blob)
  if not blob or #blob < 12 or string.sub(blob, 1, 4) ~= HEADER then
    return nil, nil
  end
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(blob, 5, 12)
  return ((b1 * 256 + b2) * 256 + b3) * 256 + b4, ((b5 * 256 + b6) * 256 + b7) * 256 + b8
end

-- Check every argument before the first write: a script error does not undo earlier writes.
local count = #KEYS
if #ARGV ~= 2 * count then
  return redis.error_reply('ERR versioned_set: expected 2 arguments per key')
end
local new_hi, new_lo, ttl = {}, {}, {}
for i = 1, count do
  new_hi[i], new_lo[i] = version_of(ARGV[2 * i])
  ttl[i] = tonumber(ARGV[2 * i - 1])
  if not new_hi[i] or not ttl[i] or ttl[i] < 0 then
    return redis.error_reply('ERR versioned_set: malformed write for key ' .. KEYS[i])
  end
end

local written = {}
for i = 1, count do
  local key = KEYS[i]
  local old_hi, old_lo = version_of(redis.call('GETRANGE', key, 0, 11))
  if not old_hi or new_hi[i] > old_hi or (new_hi[i] == old_hi and new_lo[i] >= old_lo) then
    if ttl[i] > 0 then
      redis.call('SET', key, ARGV[2 * i], 'PX', ttl[i])
    else
      redis.call('SET', key, ARGV[2 * i])
    end
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
