"""The Lua scripts the store runs; each touches one session's keys (one slot on a cluster).

Message hashes are reached through the keys listed in the session's list, which share the
session's hash tag, so on a cluster they are in the same slot as the declared keys. The seed's
key list and the session index are only passed (the optional last keys) on a single Redis.
"""

from __future__ import annotations

import hashlib
from typing import Final


def _compact(source: str) -> str:
    """The script as sent: without its comment lines (an append sends its script every time)."""
    lines = (line for line in source.splitlines() if not line.lstrip().startswith("--"))
    return "\n".join(line for line in lines if line.strip()) + "\n"


LOAD: Final = _compact("""
-- KEYS[1]: the session's list of message keys, KEYS[2]: its blobs hash, KEYS[3]: its meta
-- hash. ARGV[1]: how many newest messages (-1: all).
-- Returns {PTTL of the oldest message returned (-1: none or no TTL), JSON of the HGETALL of
-- each, oldest first, JSON of the blobs their parts reference (hash -> base64), the session's
-- version (meta field v, 0: none)}: strings to parse instead of thousands of RESP items.
local limit = tonumber(ARGV[1])
local keys
if limit < 0 then
  keys = redis.call('LRANGE', KEYS[1], 0, -1)
else
  keys = redis.call('LRANGE', KEYS[1], -limit, -1)
end
local out = {}
local first_ttl = -1
local wanted = {}
local blobs = {}
for _, key in ipairs(keys) do
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then
    if #out == 0 then first_ttl = redis.call('PTTL', key) end
    out[#out + 1] = fields
    for i = 1, #fields, 2 do
      if fields[i] == 'parts' then
        local ok, parts = pcall(cjson.decode, fields[i + 1])
        if ok and type(parts) == 'table' then
          for _, part in ipairs(parts) do
            if type(part) == 'table' and type(part.blob) == 'string' then
              wanted[#wanted + 1] = part.blob
            end
          end
        end
      end
    end
  end
end
local found = 0
for _, blob in ipairs(wanted) do
  if not blobs[blob] then
    local data = redis.call('HGET', KEYS[2], blob)
    if data then
      blobs[blob] = data
      found = found + 1
    end
  end
end
local version = tonumber(redis.call('HGET', KEYS[3], 'v') or '0')
if #out == 0 then return {first_ttl, '[]', '{}', version} end
if found == 0 then return {first_ttl, cjson.encode(out), '{}', version} end
return {first_ttl, cjson.encode(out), cjson.encode(blobs), version}
""")

PRUNE: Final = _compact("""
-- KEYS[1]: the session's list, KEYS[2]: its meta hash, KEYS[3]: its blobs hash, KEYS[4]
-- (optional): the seed's key list. ARGV[1]: the per-session cap (0: none); ARGV[2]: how many
-- of the oldest keys of KEYS[4] to check, dropping those that expired.
-- Drops expired messages at the head of the session, then the oldest beyond the cap (their
-- hashes too), and the same keys from the seed's list. When a dropped message may have had
-- parts, drops the blobs no remaining message references. Returns the keys removed.
local removed = {}
local had_parts = false
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head or redis.call('EXISTS', head) == 1 then break end
  redis.call('LPOP', KEYS[1])
  removed[#removed + 1] = head
  had_parts = true  -- expired: whether it had parts is unknown
end
local cap = tonumber(ARGV[1])
if cap > 0 then
  local excess = redis.call('LLEN', KEYS[1]) - cap
  if excess > 0 then
    local old = redis.call('LRANGE', KEYS[1], 0, excess - 1)
    redis.call('LTRIM', KEYS[1], excess, -1)
    for _, key in ipairs(old) do
      if redis.call('HEXISTS', key, 'parts') == 1 then had_parts = true end
      redis.call('DEL', key)
      removed[#removed + 1] = key
    end
  end
end
if had_parts and redis.call('EXISTS', KEYS[3]) == 1 then
  local used = {}
  for _, key in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local parts = redis.call('HGET', key, 'parts')
    if parts then
      local ok, decoded = pcall(cjson.decode, parts)
      if ok and type(decoded) == 'table' then
        for _, part in ipairs(decoded) do
          if type(part) == 'table' and type(part.blob) == 'string' then used[part.blob] = true end
        end
      end
    end
  end
  for _, blob in ipairs(redis.call('HKEYS', KEYS[3])) do
    if not used[blob] then redis.call('HDEL', KEYS[3], blob) end
  end
end
if #removed > 0 then
  local head = redis.call('LINDEX', KEYS[1], 0)
  if head then
    local created = redis.call('HGET', head, 'created_at')
    if created then redis.call('HSET', KEYS[2], 'created_at', created) end
  end
  if KEYS[4] then
    for _, key in ipairs(removed) do redis.call('LREM', KEYS[4], 1, key) end
  end
end
local scan = tonumber(ARGV[2])
if KEYS[4] and scan > 0 then
  for _, key in ipairs(redis.call('LRANGE', KEYS[4], 0, scan - 1)) do
    if redis.call('EXISTS', key) == 0 then redis.call('LREM', KEYS[4], 1, key) end
  end
end
return removed
""")

APPEND: Final = _compact("""
-- KEYS[1]: the session's list, KEYS[2]: its meta hash; then the session index when ARGV[3] is
-- '1', the seed's key list when ARGV[2] is '1'; then the message keys. ARGV[1]: the messages'
-- TTL in ms (0: none); ARGV[2], ARGV[3]: the flags; ARGV[4]: the session id, ARGV[5]: the
-- time of this write, ARGV[6]: of its first message, ARGV[7]: the session's tag, ARGV[8]: the
-- feed channel ('': none), ARGV[9]: the writer, ARGV[10]: the JSON of the blobs the messages
-- reference, ARGV[11]: a mark key of the session's to set and delete when the feed refuses the
-- message (a user without PUBLISH: other caches then drop the session by client tracking);
-- then per message: its field count n, then n field-value pairs.
-- Writes each message whose hash does not exist yet (a record id stored before is skipped:
-- appends are idempotent), pushes its key on the lists, updates the meta hash and the index.
-- When it wrote something it bumps the session's version (meta field v) and publishes the
-- messages on the feed (the writer first, the version, the session's length), so that
-- other processes' caches extend the session instead of reading it again.
-- Returns {the new version (0: nothing written), the keys written}.
local ttl = tonumber(ARGV[1])
local k = 3
local index, list = nil, nil
if ARGV[3] == '1' then index, k = KEYS[k], k + 1 end
if ARGV[2] == '1' then list, k = KEYS[k], k + 1 end
local written, rows = {}, {}
local at = 12
for i = k, #KEYS do
  local key = KEYS[i]
  local n = tonumber(ARGV[at])
  if redis.call('EXISTS', key) == 0 then
    local fields = {unpack(ARGV, at + 1, at + 2 * n)}
    redis.call('HSET', key, unpack(fields))
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    written[#written + 1] = key
    rows[#rows + 1] = fields
  end
  at = at + 1 + 2 * n
end
-- in chunks: unpack() is limited to a few thousand values
for from = 1, #written, 1000 do
  local to = math.min(from + 999, #written)
  redis.call('RPUSH', KEYS[1], unpack(written, from, to))
  if list then redis.call('RPUSH', list, unpack(written, from, to)) end
end
redis.call('HSET', KEYS[2], 'session_id', ARGV[4], 'updated_at', ARGV[5])
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[6])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if index then redis.call('ZADD', index, ARGV[5], ARGV[7]) end
local version = 0
if #written > 0 then
  version = redis.call('HINCRBY', KEYS[2], 'v', 1)
  if ARGV[8] ~= '' then
    local sent = redis.pcall('PUBLISH', ARGV[8], '{"w":' .. cjson.encode(ARGV[9]) .. ',"v":'
      .. version .. ',"n":' .. redis.call('LLEN', KEYS[1]) .. ',"t":' .. cjson.encode(ARGV[7])
      .. ',"b":' .. ARGV[10] .. ',"rows":' .. cjson.encode(rows) .. '}')
    if type(sent) == 'table' and sent.err and ARGV[11] ~= '' then
      redis.call('SET', ARGV[11], '1')
      redis.call('DEL', ARGV[11])
    end
  end
end
return {version, written}
""")

DELETE: Final = _compact("""
-- KEYS[1]: the session's list, KEYS[2]: its meta hash, KEYS[3]: its blobs hash, KEYS[4]
-- (optional): the session index, KEYS[5] (optional): the seed's key list. ARGV[1]: the
-- session's tag; ARGV[2]: a mark key to set and delete (tells other processes' caches), or ''.
-- Returns {how many message hashes were deleted, the message keys}.
local keys = redis.call('LRANGE', KEYS[1], 0, -1)
local count = 0
for _, key in ipairs(keys) do count = count + redis.call('DEL', key) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if KEYS[4] then redis.call('ZREM', KEYS[4], ARGV[1]) end
if KEYS[5] then
  for _, key in ipairs(keys) do redis.call('LREM', KEYS[5], 1, key) end
end
if ARGV[2] ~= '' then
  redis.call('SET', ARGV[2], '1')
  redis.call('DEL', ARGV[2])
end
return {count, keys}
""")


def sha1(script: str) -> str:
    """The SHA1 Redis names a script by (for ``EVALSHA``)."""
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


SHAS: Final = {
    LOAD: sha1(LOAD),
    PRUNE: sha1(PRUNE),
    APPEND: sha1(APPEND),
    DELETE: sha1(DELETE),
}
