-- One lookup of an object by id and by alias (a voucher's code, a customer's source_id), in
-- one round trip: the read API's L1 miss costs this call and nothing else when Redis holds
-- the answer. Nothing is written.
--
--   KEYS[1]  the object key of the value taken as an id
--   KEYS[2]  the alias key of the value taken as a code or source_id
--   ARGV[1]  the head of the object keys of the alias's kind: head .. target id is the key
--            of the object the alias names
--   returns  {object by id, alias, object the alias names}: stored values, false when absent
--
-- The alias's target is read from its envelope (cache/readmodel/codec.py: a msgpack map whose
-- "d" is the target id, nil for a tombstone); its object key is built here, not declared in
-- KEYS. On Redis Cluster that key is in the same slot as the declared ones (every key of a
-- project carries the project's {hash tag}, and the head passed is the project's), which is
-- what a script may touch there.

local by_id = redis.call('GET', KEYS[1])
local alias = redis.call('GET', KEYS[2])
local target = false
if alias and string.byte(alias, 1) == 131 then
  local ok, envelope = pcall(cmsgpack.unpack, alias)
  if ok and type(envelope) == 'table' and type(envelope['d']) == 'string' then
    target = redis.call('GET', ARGV[1] .. envelope['d'])
  end
end
return {by_id, alias, target}
