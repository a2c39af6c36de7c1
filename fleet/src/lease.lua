-- A fleet's capacity budget for one model: backstop_resilience::fleet::LeaseBudget::lease,
-- step by step (a test holds the two to each other). Atomic: Redis runs a script alone.
--
-- KEYS[1]  the levels:  hash r, t (requests, tokens), at (ms of the last refill)
-- KEYS[2]  the holders: hash holder -> "rate_r rate_t until_ms"
-- ARGV     holder, ask_r, ask_t, rate_r, rate_t, ttl_ms, span_s[, now_ms (tests only)]
-- returns  { grant_r, grant_t, holders } as strings (Lua numbers would come back as integers)
local holder = ARGV[1]
local ask_r, ask_t = tonumber(ARGV[2]), tonumber(ARGV[3])
local rate_r, rate_t = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl, span = tonumber(ARGV[6]), tonumber(ARGV[7])
local now = tonumber(ARGV[8])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

redis.call('HSET', KEYS[2], holder, string.format('%.17g %.17g %d', rate_r, rate_t, now + ttl))
local total_r, total_t, holders = 0, 0, 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local r, t, untl = string.match(all[i + 1], '^(%S+) (%S+) (%S+)$')
  if not untl or tonumber(untl) <= now then
    redis.call('HDEL', KEYS[2], all[i])
  else
    total_r, total_t, holders = total_r + tonumber(r), total_t + tonumber(t), holders + 1
  end
end

local cap_r, cap_t = total_r * span, total_t * span
local levels = redis.call('HMGET', KEYS[1], 'r', 't', 'at')
local level_r, level_t
if not levels[3] then
  level_r, level_t = cap_r, cap_t
else
  local elapsed = math.max(now - tonumber(levels[3]), 0) / 1000
  level_r = math.min(tonumber(levels[1]) + elapsed * total_r, cap_r)
  level_t = math.min(tonumber(levels[2]) + elapsed * total_t, cap_t)
end
local grant_r = math.min(ask_r, math.max(level_r, 0))
local grant_t = math.min(ask_t, math.max(level_t, 0))
level_r, level_t = level_r - grant_r, level_t - grant_t
redis.call('HSET', KEYS[1], 'r', string.format('%.17g', level_r), 't', string.format('%.17g', level_t), 'at', now)
-- A model nobody leases any more leaves nothing behind.
redis.call('PEXPIRE', KEYS[1], 60000)
redis.call('PEXPIRE', KEYS[2], 60000)
return { string.format('%.17g', grant_r), string.format('%.17g', grant_t), tostring(holders) }
