"""The Lua scripts of the Redis ledger: one EVALSHA reserves, one settles, one reads usage.

A fourth, :data:`CHARGE`, replays the worst case of a hold made locally while Redis was away
(``fail=open``; see :mod:`llmproxy_redis_budget.ledger`).

Each script runs atomically in Redis: a reserve checks every claim and then holds on all of
them or on none, with no other client in between. The admission rule is
:func:`llmproxy.budget.memory.admit`, step by step and in the same float arithmetic, so a Redis
ledger grants and refuses exactly as the memory and SQLite ledgers do.

Keys (all under one hash tag ``T``, so that a script's keys share a Redis Cluster slot), per
claim key ``K``:

``{T}:u:K``  hash: ``u`` the settled total (all-time, in the window, or in period ``p``),
             ``r`` the sum of the live holds' amounts, and ``d`` the claim's terms as JSON
             (policy, scope, limit, unit, window, period, tz), written by a reserve when they
             change, for listing every budget
``{T}:h:K``  sorted set of holds: member ``reservation-id:amount``, score its expiry time
``{T}:e:K``  (windowed claims) sorted set of settled events: ``reservation-id:amount`` at the
             settle time; events at or before ``now - window`` are deleted, and taken off
             ``u``, when the key is next used
``{T}:s:ID`` a settled reservation's marker, so that settling twice is a no-op

Amounts are whole numbers (tokens, requests, nano-dollars), so every sum is exact. Time is the
server's ``TIME`` unless the caller passes ``now`` (a test's fake clock). With the server's
time, keys expire by themselves once nothing in them counts any more: a hold set after its
last lease, a window's keys after their last event leaves the window (or their last hold's
lease ends, if later), a period's after the period ends (idem); all-time totals are kept.
Expiry times are rounded up to the second, so a busy key's moves once a second. A hold set
that expired whole leaves its sum behind in ``u``; the scripts read that as nothing held.

Arguments are packed, to keep a call's arguments few (encoding them is most of the client's
work, and it grows with the number of claims): ``ARGV[1]`` is a header of space-separated
fields; the reserve and the settle send every claim's fields in ``ARGV[2]`` (claims separated
by ``|``), the other scripts one argument per claim (``ARGV[1 + i]``); ``-`` stands for
"none". Claims pass 2 keys (``u``, ``h``), or 3 with a window (``e``). The reserve reads each
claim's hash once (``HMGET``), and answers the amounts it held in one string.

A calendar claim is sent with three candidate periods (the one the client thinks it is, the
one before and the one after, with their bounds: previous start, start, end, next end,
previous id, id, next id); the script picks the one containing the server's time, so a
boundary is exact on the server's clock. When none does (the client's estimate of the
server's clock is off by more than a period) it answers ``clock`` and writes nothing; the
client asks again with the server's time. Replies start with a status and the server's time
(a decimal string); amounts in replies are integers.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = r"""
-- Numbers given to redis.call are sent as '%.17g' (exact); a Lua number returned becomes an
-- integer reply. Only member strings and the time in replies are formatted here.
local function int(x) return string.format('%d', x) end
local function split(s)
  local t = {}
  for field in string.gmatch(s, '%S+') do t[#t + 1] = field end
  return t
end
-- The time as a number and as the decimal string it was read from (for the reply).
local function clock(given)
  if given ~= '-' then return tonumber(given), given end
  local t = redis.call('TIME')
  local text = t[1] .. '.' .. string.rep('0', 6 - #t[2]) .. t[2]
  return tonumber(text), text
end
local function amount_of(member) return tonumber(string.match(member, ':(%d+)$')) end

-- The claims' field strings: A[1 + i] is claim i's. ARGV itself, or (reserve, settle) the
-- claims packed in ARGV[2], separated by '|' (unpack_claims): one argument for all of them.
local A = ARGV
local function unpack_claims()
  A = {ARGV[1]}
  for text in string.gmatch(ARGV[2], '[^|]+') do A[#A + 1] = text end
  return #A - 1
end

-- Read claim i's fields from A[1 + i] and its keys from KEYS[k..]: returns the fields, the
-- keys (u, h, and e or nil), the next claim's first key, and where its period fields start
-- (nil without a period). The window is field window_at; periods start at period_at.
local function claim(i, k, window_at, period_at)
  local f = split(A[1 + i])
  local e, next_k, period = nil, k + 2, nil
  if f[window_at] ~= '-' then e, next_k = KEYS[k + 2], k + 3 end
  if #f >= period_at then period = period_at end
  return f, KEYS[k], KEYS[k + 1], e, next_k, period
end

-- The period containing now among the three candidates at f[b..b+6], and its end; nil when
-- none contains it.
local function pick(f, b, now)
  local first, start, stop, last = tonumber(f[b]), tonumber(f[b + 1]), tonumber(f[b + 2]),
    tonumber(f[b + 3])
  if now < first or now >= last then return nil end
  if now < start then return f[b + 4], start, first end
  if now < stop then return f[b + 5], stop, start end
  return f[b + 6], last, stop
end

-- A period's total counts while its period is the current one (or a later one: a clock that
-- stepped back does not reopen an earlier period).
local function in_period(stored, pid)
  return stored and tonumber(stored) >= tonumber(pid)
end
"""

_WRITES: Final = r"""
-- Unknown is spent: charge a hold that expired unsettled (member `id:amount`, expired at ts)
-- in full, as used at its expiry, and remember the charge in the id's marker hash
-- (`{T}:s:ID`, field: the claim's u key, value "amount ts") so that a late settle replaces it.
-- c: {e = events key, window = seconds, period = current id, start = its start, tag, grace}.
local function charge(u, c, member, amount, ts, now)
  local id = string.match(member, '^(.*):%d+$')
  if c.e then
    if ts > now - c.window then
      redis.call('ZADD', c.e, ts, member)
      redis.call('HINCRBY', u, 'u', amount)
    end
  elseif c.period then
    if ts >= c.start then
      if in_period(redis.call('HGET', u, 'p'), c.period) then
        redis.call('HINCRBY', u, 'u', amount)
      else
        redis.call('HSET', u, 'p', c.period, 'u', amount)
      end
    end
  else
    redis.call('HINCRBY', u, 'u', amount)
  end
  local marker = c.tag .. ':s:' .. id
  redis.call('HSET', marker, u, int(amount) .. ' ' .. string.format('%.17g', ts))
  redis.call('PEXPIRE', marker, math.ceil(c.grace * 1000))
end

-- Charge a key's expired holds (expires_at <= now); return what its live holds hold. A hold
-- set that expired whole (its TTL ends when a charge could no longer count in a window or
-- period) leaves r behind: an all-time claim counts it as used then, others drop it.
local function held(u, h, r, now, c)
  local total = tonumber(r or '0')
  if total == 0 then return 0 end
  -- The earliest hold: none (the set expired whole), live (nothing to charge), or expired.
  local first = redis.call('ZRANGE', h, 0, 0, 'WITHSCORES')
  if #first > 0 and tonumber(first[2]) > now then return total end
  local gone = {}
  if #first > 0 then gone = redis.call('ZRANGEBYSCORE', h, '-inf', now, 'WITHSCORES') end
  if #gone > 0 then
    for j = 1, #gone, 2 do
      local amount = amount_of(gone[j])
      total = total - amount
      charge(u, c, gone[j], amount, tonumber(gone[j + 1]), now)
    end
    redis.call('ZREMRANGEBYSCORE', h, '-inf', now)
  else
    if not c.e and not c.period then redis.call('HINCRBY', u, 'u', total) end
    total = 0
  end
  if total > 0 then redis.call('HSET', u, 'r', total) else
    redis.call('HDEL', u, 'r')
    total = 0
  end
  return total
end

-- How long after a hold's expiry its keys must live for its charge to be made: a window, a
-- period (at most a month), nothing for an all-time claim (r then stands for it).
local function hold_keep(c)
  if c.e then return c.window end
  if c.period then return 2764800 end
  return 0
end

-- Drop a window's events at or before now - window and take them off u; return u.
local function window_used(u, e, used, now, window)
  used = tonumber(used or '0')
  local start = now - window
  local gone = redis.call('ZRANGEBYSCORE', e, '-inf', start)
  if #gone > 0 then
    for _, member in ipairs(gone) do used = used - amount_of(member) end
    redis.call('ZREMRANGEBYSCORE', e, '-inf', start)
    if used > 0 then redis.call('HSET', u, 'u', used) else
      redis.call('HDEL', u, 'u')
      used = 0
    end
  end
  return used
end

-- Let key live at least until `at` (Unix seconds), never shorter than it already would. The
-- time is rounded up to the next second, so that a busy key's expiry moves once a second, not
-- on every call (keys live up to a second longer than they must).
local function keep_until(key, at)
  local ms = math.ceil(at) * 1000
  if redis.call('PEXPIRETIME', key) < ms then redis.call('PEXPIREAT', key, ms) end
end
"""

RESERVE: Final = (
    _COMMON
    + _WRITES
    + r"""
local head = split(ARGV[1])
local now, now_text = clock(head[1])
local id = head[2]
local input, most, least = tonumber(head[3]), tonumber(head[4]), tonumber(head[5])
local lease, rate_in, rate_out = tonumber(head[6]), tonumber(head[7]), tonumber(head[8])
local ttl = head[9] == '1'
local grace, tag = tonumber(head[10]), head[11]
-- A reserve sent with a history load counts the session as empty: it holds nothing when the
-- session exists (its last key), and the client reserves again for the real prompt.
if head[12] == '1' and redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {'skip', now_text} end
local n = unpack_claims()
local given = {}
for text in string.gmatch(ARGV[3], '[^\n]+') do given[#given + 1] = text end
local units, limits, windows, periods, used, reserved, terms = {}, {}, {}, {}, {}, {}, {}
local us, hs, es, cs = {}, {}, {}, {}

local k = 1
for i = 1, n do
  local f, u, h, e, next_k, period = claim(i, k, 3, 4)
  k = next_k
  units[i], limits[i], us[i], hs[i], es[i] = f[1], tonumber(f[2]), u, h, e
  local c = {e = e, tag = tag, grace = grace}
  if e then
    windows[i] = tonumber(f[3])
    c.window = windows[i]
  end
  if period then
    local _
    periods[i], _, c.start = pick(f, period, now)
    if not periods[i] then return {'clock', now_text} end
    c.period = periods[i]
  end
  cs[i] = c
end
for i = 1, n do
  local stored = redis.call('HMGET', us[i], 'u', 'r', 'p', 'd')
  reserved[i] = held(us[i], hs[i], stored[2], now, cs[i])
  if reserved[i] ~= tonumber(stored[2] or '0') then
    -- expired holds were charged: to u, and for a calendar claim perhaps into a new period (p)
    stored = redis.call('HMGET', us[i], 'u', 'r', 'p', 'd')
  end
  terms[i] = stored[4]
  if windows[i] then
    used[i] = window_used(us[i], es[i], stored[1], now, windows[i])
  elseif periods[i] and not in_period(stored[3], periods[i]) then
    used[i] = 0
  else
    used[i] = tonumber(stored[1] or '0')
  end
end

-- A refusal: what the client needs to build the error. Events (oldest first) explain a
-- windowed claim: all of them for a rate limit, the oldest for a budget.
local function refuse(kind, i)
  local reply = {'refuse', now_text, kind, i, used[i], reserved[i]}
  if windows[i] then
    local after = '(' .. string.format('%.17g', now - windows[i])
    local events
    if kind == 'rate' then
      events = redis.call('ZRANGEBYSCORE', es[i], after, '+inf', 'WITHSCORES')
    else
      events = redis.call('ZRANGEBYSCORE', es[i], after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    end
    for j = 1, #events, 2 do
      reply[#reply + 1] = events[j + 1]
      reply[#reply + 1] = amount_of(events[j])
    end
  end
  return reply
end

for i = 1, n do
  if units[i] == 'r' and used[i] + reserved[i] + 1 > limits[i] then
    if windows[i] then return refuse('rate', i) end
    return refuse('budget', i)
  end
end

-- (+ 0 turns a -0 from ceil into 0: redis.call would send "-0", which is no integer)
local function usd_hold(grant)
  return math.ceil(input * rate_in + grant * rate_out - 0.000001) + 0
end
local grant, tightest, tightest_room, dollars = most, 0, math.huge, false
for i = 1, n do
  local room = nil
  if units[i] == 't' then
    room = limits[i] - used[i] - reserved[i] - input
  elseif units[i] == 'u' then
    dollars = true
    local left = limits[i] - used[i] - reserved[i]
    if rate_out > 0 then
      room = (left - input * rate_in) / rate_out
    elseif usd_hold(0) <= left then
      room = math.huge
    else
      room = -math.huge
    end
  end
  if room and room < tightest_room then tightest, tightest_room = i, room end
end
if tightest_room < grant then
  if tightest_room > -math.huge then grant = math.floor(tightest_room) else grant = -1 end
end
if dollars and grant >= least then
  -- the room was a float and the hold is rounded up: lower the grant until every hold fits
  for i = 1, n do
    if units[i] == 'u' then
      local left = limits[i] - used[i] - reserved[i]
      local fits = false
      for _ = 1, 4 do
        if usd_hold(grant) <= left then
          fits = true
          break
        end
        grant = grant - 1
      end
      if not fits then grant = -1 end
      if grant < least then
        tightest = i
        break
      end
    end
  end
end
if grant < least then return refuse('budget', tightest) end

local expires = now + lease
local amounts = {}
for i = 1, n do
  local amount
  if units[i] == 't' then amount = input + grant
  elseif units[i] == 'r' then amount = 1
  else amount = usd_hold(grant) end
  redis.call('ZADD', hs[i], expires, id .. ':' .. int(amount))
  redis.call('HINCRBY', us[i], 'r', amount)
  if terms[i] ~= given[i] then redis.call('HSET', us[i], 'd', given[i]) end
  if ttl then
    local keep = expires + hold_keep(cs[i])
    if reserved[i] > 0 then
      -- live holds: the set has its expiry already; GT only ever moves it later
      redis.call('PEXPIREAT', hs[i], math.ceil(keep) * 1000, 'GT')
    else
      redis.call('PEXPIREAT', hs[i], math.ceil(keep) * 1000)  -- a new set
    end
    if windows[i] or periods[i] then keep_until(us[i], keep) end
    if windows[i] then keep_until(es[i], keep) end
  end
  amounts[i] = int(amount)
end
return {'ok', now_text, grant, table.concat(amounts, ' ')}
"""
)
"""Reserve. ``ARGV[1]``: now, reservation id, input tokens, max and min output tokens, lease,
the two rates (nano-dollars per token), ttl flag, the settled grace (seconds a charge is
remembered), the key tag ``{T}``, and optionally a guard flag: ``1`` when the last key is one
whose existence cancels the reserve (reply ``skip``, nothing written). ``ARGV[2]``: per claim
(``|`` between claims): unit (``t``, ``r``, ``u``), limit (ledger units), window, then the
period candidates if any. ``ARGV[3]``: per claim (a newline between claims), its terms (JSON,
stored as ``d`` for listing). Expired holds of the claims are charged first. Replies ``ok``,
the time, the grant, and the amounts held (space-separated, in the claims' order)."""

SETTLE: Final = (
    _COMMON
    + _WRITES
    + r"""
local head = split(ARGV[1])
local now, now_text = clock(head[1])
local id = head[2]
local live_hold = tonumber(head[3]) > now  -- the hold's lease (renewals only extend it)
local ttl = head[4] == '1'
local grace, tag = tonumber(head[5]), head[6]
local marker = KEYS[1]
local n = unpack_claims()
local claims = {}
local k = 2
for i = 1, n do
  local f, u, h, e, next_k, period = claim(i, k, 1, 4)
  k = next_k
  local c = {f = f, u = u, h = h, e = e, tag = tag, grace = grace}
  if e then c.window = tonumber(f[1]) end
  if period then
    c.period, c.reset, c.start = pick(f, period, now)
    if not c.period then return {'clock', now_text} end
  end
  claims[i] = c
end
local kind = redis.call('TYPE', marker)['ok']
if kind == 'string' or (kind == 'hash' and redis.call('HEXISTS', marker, 's') == 1) then
  return {'repeat', now_text}  -- (a string: the marker of an earlier version)
end
local function add(c, u, amount, member)
  if c.e then
    window_used(u, c.e, redis.call('HGET', u, 'u'), now, c.window)
    redis.call('ZADD', c.e, now, member)
    redis.call('HINCRBY', u, 'u', amount)
    if ttl then
      keep_until(u, now + c.window)
      keep_until(c.e, now + c.window)
    end
  elseif c.period then
    if in_period(redis.call('HGET', u, 'p'), c.period) then
      redis.call('HINCRBY', u, 'u', amount)
    else
      redis.call('HSET', u, 'p', c.period, 'u', amount)
    end
    if ttl then keep_until(u, c.reset) end
  else
    redis.call('HINCRBY', u, 'u', amount)
  end
end
for i = 1, n do
  local c = claims[i]
  local u, held_amount, amount = c.u, c.f[2], tonumber(c.f[3])
  local member = id .. ':' .. held_amount
  local stored = redis.call('HMGET', u, 'r', 'u')
  local r = tonumber(stored[1] or '0')
  local live, written = false, false
  if r ~= 0 and live_hold and redis.call('ZREM', c.h, member) == 1 then
    -- The common case, in fewer calls: this hold is live. Other holds of the key that
    -- expired are charged by the next reserve, at their expiry as here (usage counts them).
    local left = math.max(r - tonumber(held_amount), 0)
    local total = tonumber(stored[2] or '0') + amount
    if left > 0 and not c.e and not c.period and total < 9007199254740992 then
      -- an all-time claim with other holds live: the hold and the use in one write (totals
      -- past 2^53 go by HINCRBY below, exact)
      redis.call('HSET', u, 'r', left, 'u', total)
      written = true
    else
      live = true
      if left > 0 then redis.call('HSET', u, 'r', left) else redis.call('HDEL', u, 'r') end
    end
  else
    held(u, c.h, redis.call('HGET', u, 'r'), now, c)  -- charges an expired hold, this one too
    if redis.call('ZREM', c.h, member) == 1 then
      live = true
      if redis.call('HINCRBY', u, 'r', 0 - tonumber(held_amount)) <= 0 then
        redis.call('HDEL', u, 'r')
      end
    end
  end
  if written then
    -- done above
  elseif live then
    if amount > 0 then add(c, u, amount, id .. ':' .. int(amount)) end
  else
    -- Charged at expiry: the real amount replaces the charge (never below zero). A charge
    -- forgotten (or made when its hold set had expired whole) was the hold, time unknown.
    local record = redis.call('HGET', marker, u)
    local charged, ts = tonumber(held_amount), nil
    if record then
      local fields = split(record)
      charged, ts = tonumber(fields[1]), tonumber(fields[2])
    end
    local diff = amount - charged
    local done = false
    if c.e then
      window_used(u, c.e, redis.call('HGET', u, 'u'), now, c.window)
      local member = id .. ':' .. int(charged)
      if ts and ts > now - c.window and redis.call('ZREM', c.e, member) == 1 then
        if amount > 0 then redis.call('ZADD', c.e, ts, id .. ':' .. int(amount)) end
        redis.call('HINCRBY', u, 'u', diff)
        done = true
      end
    elseif c.period then
      if ts and charged > 0 and ts >= c.start and in_period(redis.call('HGET', u, 'p'), c.period)
      then
        local left = tonumber(redis.call('HGET', u, 'u') or '0') + diff
        redis.call('HSET', u, 'u', math.max(left, 0))
        done = true
      end
    else
      local left = tonumber(redis.call('HGET', u, 'u') or '0') + diff
      if left > 0 then redis.call('HSET', u, 'u', left) else redis.call('HDEL', u, 'u') end
      done = true
    end
    if not done and diff > 0 then add(c, u, diff, id .. '+:' .. int(diff)) end
  end
end
redis.call('DEL', marker)
redis.call('HSET', marker, 's', '1')
redis.call('PEXPIRE', marker, math.ceil(grace * 1000))
return {'ok', now_text}
"""
)
"""Settle. ``KEYS[1]``: the reservation's marker. ``ARGV[1]``: now, reservation id, its expiry,
ttl flag, seconds to remember it (the settled grace), the key tag. ``ARGV[2]``: per claim
(``|`` between claims): window, amount held, amount settled, then the period candidates if
any. Expired holds of the claims are charged first; a settle whose hold was charged replaces
the charge."""

CHARGE: Final = (
    _COMMON
    + _WRITES
    + r"""
local head = split(ARGV[1])
local now, now_text = clock(head[1])
local id = head[2]
local ttl = head[3] == '1'
local grace, tag = tonumber(head[4]), head[5]
local marker = KEYS[1]
local n = #ARGV - 1
local claims = {}
local k = 2
for i = 1, n do
  local f, u, h, e, next_k, period = claim(i, k, 1, 3)
  k = next_k
  local c = {f = f, u = u, e = e, tag = tag, grace = grace}
  if e then c.window = tonumber(f[1]) end
  if period then
    c.period, c.reset, c.start = pick(f, period, now)
    if not c.period then return {'clock', now_text} end
  end
  claims[i] = c
end
-- Settled already (its real use recorded) or charged already: nothing to do.
if redis.call('EXISTS', marker) == 1 then return {'repeat', now_text} end
for i = 1, n do
  local c = claims[i]
  local amount = tonumber(c.f[2])
  if c.e then window_used(c.u, c.e, redis.call('HGET', c.u, 'u'), now, c.window) end
  charge(c.u, c, id .. ':' .. int(amount), amount, now, now)
  if ttl then
    if c.e then
      keep_until(c.u, now + c.window)
      keep_until(c.e, now + c.window)
    elseif c.period then
      keep_until(c.u, c.reset)
    end
  end
end
if n == 0 then
  redis.call('HSET', marker, 's', '1')  -- nothing to charge: remember the id as settled
  redis.call('PEXPIRE', marker, math.ceil(grace * 1000))
end
return {'ok', now_text}
"""
)
"""Charge a hold Redis never held (made by a process's local fallback while Redis was away) as
if it had expired unsettled now: each amount counts as used now, and the id's marker records
the charge, so that a later settle of the id replaces it exactly once. A no-op when the id is
known already (settled or charged). ``KEYS[1]``: the id's marker. ``ARGV[1]``: now, the id, ttl
flag, seconds to remember it (the settled grace), the key tag. Per claim: window, amount, then
the period candidates if any."""

RENEW: Final = (
    _COMMON
    + r"""
local head = split(ARGV[1])
local now, now_text = clock(head[1])
local id, lease, ttl = head[2], tonumber(head[3]), head[4] == '1'
local renewed = 0
for i = 1, #KEYS / 2 do
  local u, h = KEYS[2 * i - 1], KEYS[2 * i]
  local f = split(ARGV[1 + i])
  local member = id .. ':' .. f[1]
  local score = redis.call('ZSCORE', h, member)
  if score and tonumber(score) > now then
    local until_ = math.max(tonumber(score), now + lease)
    redis.call('ZADD', h, until_, member)
    if ttl then
      local keep = math.ceil(until_ + tonumber(f[2])) * 1000
      for _, key in ipairs({h, u}) do
        if redis.call('PEXPIRETIME', key) > 0 and redis.call('PEXPIRETIME', key) < keep then
          redis.call('PEXPIREAT', key, keep)
        end
      end
    end
    renewed = renewed + 1
  end
end
return {'ok', now_text, renewed}
"""
)
"""Renew. Per claim ``KEYS``: ``u``, ``h``. ``ARGV[1]``: now, reservation id, lease, ttl flag.
Per claim: the amount held and how long its keys must outlive the hold (window or period)."""

USAGE: Final = (
    _COMMON
    + r"""
local now, now_text = clock(ARGV[1])
local n = #ARGV - 1
local reply = {'ok', now_text}
local k = 1
for i = 1, n do
  local f, u, h, e, next_k, period = claim(i, k, 1, 2)
  k = next_k
  local pid, start_of_period = nil, nil
  if period then
    local _
    pid, _, start_of_period = pick(f, period, now)
    if not pid then return {'clock', now_text} end
  end
  local stored = redis.call('HMGET', u, 'u', 'r', 'p')
  local reserved = tonumber(stored[2] or '0')
  local used, oldest = tonumber(stored[1] or '0'), ''
  if pid and not in_period(stored[3], pid) then used = 0 end
  -- Holds that expired unsettled count as used at their expiry (their charge is written by
  -- the next write to the key).
  local charged = 0
  if reserved ~= 0 then
    if redis.call('EXISTS', h) == 0 then
      if not e and not pid then charged = reserved end  -- expired whole: see held()
      reserved = 0
    end
    local gone = redis.call('ZRANGEBYSCORE', h, '-inf', now, 'WITHSCORES')
    for j = 1, #gone, 2 do
      local amount, ts = amount_of(gone[j]), tonumber(gone[j + 1])
      reserved = reserved - amount
      if e then
        if ts > now - tonumber(f[1]) then charged = charged + amount end
      elseif pid then
        if ts >= start_of_period then charged = charged + amount end
      else
        charged = charged + amount
      end
    end
  end
  if e then
    local start = now - tonumber(f[1])
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', e, '-inf', start)) do
      used = used - amount_of(member)
    end
    local after = '(' .. string.format('%.17g', start)
    local first = redis.call('ZRANGEBYSCORE', e, after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #first > 0 then oldest = first[2] end
  end
  used = used + charged
  reply[#reply + 1] = used
  reply[#reply + 1] = reserved
  reply[#reply + 1] = oldest
end
return reply
"""
)
"""Read each claim's used, reserved and oldest in-window event, writing nothing. ``ARGV[1]``:
now. Per claim: window, then the period candidates if any."""
