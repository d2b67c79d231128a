-- Segment recompute jobs: one field per (project, segment), holding the newest edit's job
-- while it is pending, then only its version (16 hex digits, nothing after) once done. The
-- done version stays: a replay of an edit already recomputed must not queue it again.
--
--   KEYS[1]  the jobs hash
--   ARGV[1]  put or finish
--   ARGV[2]  the job's field (cache/readmodel/codec.py segment_job_field)
--   ARGV[3]  put: the job's value, starting with its version as 16 hex digits
--            finish: the version as 16 hex digits
--   returns  put: 1 stored, 0 kept (a job of a newer version is stored, or this version
--            is done already);
--            finish: 1 marked done, 0 kept (none pending, or one of another version: a newer
--            edit arrived while the job ran, and its recompute is still to be done)
--
-- Versions are compared as two 32-bit halves: Lua numbers are doubles, exact only below 2^53.

-- The version at the head of a job's value (or of a bare version).
local function halves(text)
  if type(text) ~= 'string' then
    return nil, nil
  end
  local hex = string.sub(text, 1, 16)
  if #hex ~= 16 or not string.match(hex, '^[0-9a-f]+$') then
    return nil, nil
  end
  return tonumber(string.sub(hex, 1, 8), 16), tonumber(string.sub(hex, 9, 16), 16)
end

local op, field, given = ARGV[1], ARGV[2], ARGV[3]
local new_hi, new_lo = halves(given)
if not new_hi or not field then
  return redis.error_reply('ERR segment_job: malformed job')
end
local stored = redis.call('HGET', KEYS[1], field)
if op == 'put' then
  local old_hi, old_lo = halves(stored)
  if old_hi and (old_hi > new_hi or (old_hi == new_hi and old_lo > new_lo)) then
    return 0
  end
  if old_hi and old_hi == new_hi and old_lo == new_lo and #stored == 16 then
    return 0
  end
  redis.call('HSET', KEYS[1], field, given)
  return 1
elseif op == 'finish' then
  if #given ~= 16 or not stored or #stored == 16 or string.sub(stored, 1, 16) ~= given then
    return 0
  end
  redis.call('HSET', KEYS[1], field, given)
  return 1
end
return redis.error_reply('ERR segment_job: unknown operation')
