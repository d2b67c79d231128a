-- Segment membership of one project's customers: apply updates to their records, keep the
-- project's member counts and append one event per transition, in one atomic call, so a
-- count and the stream never disagree with the records. One call carries many updates; on
-- Redis Cluster every key shares the {project} hash tag, hence one slot.
--
--   KEYS[1]      the project's counts hash: segment id -> member count
--   KEYS[2]      the project's event stream
--   KEYS[2 + i]  the membership record of update i's customer (a key may come twice)
--   ARGV[1]      expiry in milliseconds of a record left in no segment
--   ARGV[2]      about how many entries the stream keeps (XADD MAXLEN ~)
--   ARGV[3...]   the updates, one after the other (cache/readmodel/codec.py
--                membership_update_args), each:
--                  mode          r (REPLACE) or s (SET_ONE)
--                  version       16 lower-case hex digits
--                  emit          1 (append events) or 0 (silent rebuild)
--                  cause         c (change) or t (clock tick)
--                  cause LSN     decimal, copied into the events
--                  occurred at   decimal epoch microseconds, copied into the events
--                  customer id
--                  REPLACE:      n, then n distinct segment ids in byte order
--                  SET_ONE:      1 (in) or 0 (out), then the segment id
--   returns      how many transitions (a segment entered or left) happened, emitted or not
--
-- Record: msgpack [base, [segment id, ...]], base the version of the last REPLACE applied (or
-- of the SET_ONE that created the record) as 16 hex digits (compared as two 32-bit halves: Lua numbers are doubles, exact only below
-- 2^53), segment ids distinct, in byte order. An update below the base is a no-op: the
-- customer was evaluated again after it, with everything current then.
-- Event entry fields: t (e entered, l left), c customer, s segment, k cause, l cause LSN,
-- o occurred at; the auto id is the readers' cursor.
--
-- A record left in no segment is kept where one existed, with the expiry, so it still blocks
-- an older replay for the replay window (as a tombstone does); none is created where none
-- existed, so a customer in no segment costs no key. Ids are ordered byte by byte: Lua's
-- own string '<' follows the server's collation locale.

local function halves(hex)
  if type(hex) ~= 'string' or #hex ~= 16 or not string.match(hex, '^[0-9a-f]+$') then
    return nil, nil
  end
  return tonumber(string.sub(hex, 1, 8), 16), tonumber(string.sub(hex, 9, 16), 16)
end

local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local function ordered(ids)
  for i = 1, #ids do
    if type(ids[i]) ~= 'string' or ids[i] == '' or (i > 1 and not before(ids[i - 1], ids[i])) then
      return false
    end
  end
  return true
end

local function fail(why)
  return redis.error_reply('ERR membership: ' .. why)
end

-- Check every argument and read every record before the first write: a script error does
-- not undo earlier writes.
local ttl = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
if not ttl or ttl < 1 or ttl % 1 ~= 0 or not maxlen or maxlen < 1 or maxlen % 1 ~= 0 then
  return fail('malformed expiry or stream length')
end
local counts_type = redis.call('TYPE', KEYS[1])['ok']
local stream_type = redis.call('TYPE', KEYS[2])['ok']
if (counts_type ~= 'none' and counts_type ~= 'hash')
    or (stream_type ~= 'none' and stream_type ~= 'stream') then
  return fail('counts or stream key holds another type')
end

local updates = {}
local at = 3
while at <= #ARGV do
  local u = {
    mode = ARGV[at], version = ARGV[at + 1], emit = ARGV[at + 2], cause = ARGV[at + 3],
    lsn = ARGV[at + 4], occurred = ARGV[at + 5], customer = ARGV[at + 6],
  }
  u.hi, u.lo = halves(u.version)
  if not u.hi or (u.emit ~= '0' and u.emit ~= '1') or (u.cause ~= 'c' and u.cause ~= 't')
      or not u.customer then
    return fail('malformed update ' .. (#updates + 1))
  end
  if u.mode == 'r' then
    local n = tonumber(ARGV[at + 7])
    if not n or n < 0 or n % 1 ~= 0 or at + 7 + n > #ARGV then
      return fail('malformed segment list in update ' .. (#updates + 1))
    end
    u.ids = {}
    for i = 1, n do
      u.ids[i] = ARGV[at + 7 + i]
    end
    if not ordered(u.ids) then
      return fail('segments not distinct and in byte order in update ' .. (#updates + 1))
    end
    at = at + 8 + n
  elseif u.mode == 's' then
    u.member, u.segment = ARGV[at + 7], ARGV[at + 8]
    if (u.member ~= '0' and u.member ~= '1') or not u.segment or u.segment == '' then
      return fail('malformed segment in update ' .. (#updates + 1))
    end
    at = at + 9
  else
    return fail('unknown mode in update ' .. (#updates + 1))
  end
  updates[#updates + 1] = u
end
if #KEYS ~= #updates + 2 then
  return fail('expected one record key per update')
end

-- state[key]: nil (no record) or {base = hex, hi, lo, ids}; later updates of the same key in
-- this call see earlier ones through it.
local state = {}
for i = 1, #updates do
  local key = KEYS[2 + i]
  if state[key] == nil then
    local blob = redis.call('GET', key)
    if not blob then
      state[key] = false
    else
      local ok, record = pcall(cmsgpack.unpack, blob)
      if not ok or type(record) ~= 'table' or type(record[2]) ~= 'table'
          or not ordered(record[2]) then
        return fail('malformed record at ' .. key)
      end
      local hi, lo = halves(record[1])
      if not hi then
        return fail('malformed record base at ' .. key)
      end
      state[key] = {base = record[1], hi = hi, lo = lo, ids = record[2]}
    end
  end
end

local EMPTY = {}

local function transition(u, segment, entered)
  if entered then
    redis.call('HINCRBY', KEYS[1], segment, 1)
  elseif redis.call('HINCRBY', KEYS[1], segment, -1) <= 0 then
    redis.call('HDEL', KEYS[1], segment)
  end
  if u.emit == '1' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
      't', entered and 'e' or 'l', 'c', u.customer, 's', segment,
      'k', u.cause, 'l', u.lsn, 'o', u.occurred)
  end
end

local transitions = 0
for i = 1, #updates do
  local u = updates[i]
  local key = KEYS[2 + i]
  local record = state[key]
  local older = record and (u.hi < record.hi or (u.hi == record.hi and u.lo < record.lo))
  if not older then
    local old = record and record.ids or EMPTY
    local new, base
    if u.mode == 'r' then
      new, base = u.ids, {base = u.version, hi = u.hi, lo = u.lo}
    else
      -- A record SET_ONE creates was in no segment as of its last REPLACE, which every
      -- change before this version has had: its base is this version, so a replay of such a
      -- REPLACE (computed from the current source, hence already reflected) changes nothing.
      base = record or {base = u.version, hi = u.hi, lo = u.lo}
      new = {}
      local pending = u.member == '1'
      for _, id in ipairs(old) do
        if pending and before(u.segment, id) then
          new[#new + 1] = u.segment
          pending = false
        end
        if id ~= u.segment then
          new[#new + 1] = id
        end
      end
      if pending then
        new[#new + 1] = u.segment
      end
    end
    -- Both lists are in byte order: one merge walk finds the transitions in that order.
    local moved = 0
    local a, b = 1, 1
    while a <= #old or b <= #new do
      if b > #new or (a <= #old and before(old[a], new[b])) then
        transition(u, old[a], false)
        a, moved = a + 1, moved + 1
      elseif a > #old or before(new[b], old[a]) then
        transition(u, new[b], true)
        b, moved = b + 1, moved + 1
      else
        a, b = a + 1, b + 1
      end
    end
    transitions = transitions + moved
    if moved > 0 or not record or base.base ~= record.base then
      if #new > 0 then
        -- A plain SET drops the expiry of a record that was in no segment.
        redis.call('SET', key, cmsgpack.pack({base.base, new}))
      elseif record then
        redis.call('SET', key, cmsgpack.pack({base.base, new}), 'PX', ttl)
      end
      if #new > 0 or record then
        state[key] = {base = base.base, hi = base.hi, lo = base.lo, ids = new}
      end
    end
  end
end
return transitions
