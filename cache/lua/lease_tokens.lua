-- Rate-limit token lease: grant a batch of tokens from one app id's bucket for the current
-- window, never more in total than the limit.
--
--   KEYS[1]  bucket key: the count of tokens granted in the current window
--   ARGV[1]  limit per window
--   ARGV[2]  most tokens wanted in this lease (at least 1)
--   ARGV[3]  window length in milliseconds
--   ARGV[4]  divisor: a lease takes at most ceil(left / divisor) tokens
--   returns  {granted, remaining after this grant, milliseconds until the window resets}
--
-- The window starts with the first lease (the key is created with its expiry) and ends when
-- the key expires. Leases shrink as the limit nears, so tokens leased by a process but never
-- used, which are lost for the window, are bounded by a fraction of what was left.

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local divisor = tonumber(ARGV[4])

local used = 0
local ttl = redis.call('PTTL', key)
if ttl == -2 then
  redis.call('SET', key, 0, 'PX', window)
  ttl = window
else
  used = tonumber(redis.call('GET', key)) or 0
  if ttl == -1 then
    -- A bucket without expiry (not created here) would never reset: start a window now.
    redis.call('PEXPIRE', key, window)
    ttl = window
  end
end

local left = limit - used
if left < 0 then
  left = 0
end
local granted = math.ceil(left / divisor)
if granted > wanted then
  granted = wanted
end
if granted > 0 then
  used = redis.call('INCRBY', key, granted)
end
local remaining = limit - used
if remaining < 0 then
  remaining = 0
end
return {granted, remaining, ttl}
