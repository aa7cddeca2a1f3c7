-- herdgate fleet admission: renew one instance's leases on every node, atomically.
-- Doorman-style capacity leases: each node's hash maps instance -> "share_ppm:demand_ppm:expiry_ms";
-- the live shares of a node always sum to at most 1e6 ppm (the node's whole rate).
-- Mirrored in crates/core/src/fleet/grant.rs (the storm simulator's model): change both;
-- tests/logic/fleet_grant.rs fails when they give different grants.
--
-- KEYS[1]      members sorted set (score: membership expiry, ms)
-- KEYS[2..]    one hash per node
-- ARGV[1]      this instance's id
-- ARGV[2]      lease ttl (ms): how long a granted share stays reserved without renewal
-- ARGV[3]      member ttl (ms)
-- ARGV[4]      members this instance expects (the live count it last saw): after Redis lost its
--              state (restart, failover), members not yet back are still admitting their
--              fallback share 1/E, so 1/E is kept aside for each until it renews
-- ARGV[5..]    this instance's demand per node, in ppm of the node's rate (same order as KEYS[2..])
-- Returns      { live members, granted share ppm per node... }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local lease_ttl = tonumber(ARGV[2])
local member_ttl = tonumber(ARGV[3])
local expected = math.max(1, tonumber(ARGV[4]) or 1)
local FULL = 1000000

redis.call('ZADD', KEYS[1], now + member_ttl, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], member_ttl * 2)
local out = { redis.call('ZCARD', KEYS[1]) }

for i = 2, #KEYS do
  local key = KEYS[i]
  local mine = math.max(0, math.floor(tonumber(ARGV[i + 3]) or 0))
  local flat = redis.call('HGETALL', key)
  local held = 0          -- shares held by the other live instances
  local demands = {}      -- demands of the instances that have one (me included)
  local idle = 0          -- instances with no demand (me included)
  if mine > 0 then demands[#demands + 1] = mine else idle = idle + 1 end
  for j = 1, #flat, 2 do
    local who = flat[j]
    if who ~= me then
      local s, d, e = string.match(flat[j + 1], '^(%d+):(%d+):(%d+)$')
      s = tonumber(s); d = tonumber(d); e = tonumber(e)
      if s == nil or e <= now then
        redis.call('HDEL', key, who)
      else
        held = held + s
        if d > 0 then demands[#demands + 1] = d else idle = idle + 1 end
      end
    end
  end
  local n = #demands + idle
  if n < expected then
    held = held + (expected - n) * math.floor(FULL / expected)
  end
  local want
  if #demands == 0 then
    -- Nobody has demand: an equal split, ready for the next storm.
    want = math.floor(FULL / n)
  else
    -- Idle instances keep a standby quarter of an equal share; the rest is shared among the
    -- instances with demand by max-min fairness (water filling): nobody gets more than an
    -- equal part of what is left unless others need less, so one hammered instance cannot
    -- starve the others. What nobody needs is split equally among them.
    local standby = math.floor(FULL / (4 * n))
    local cap = FULL - standby * idle
    if mine == 0 then
      want = standby
    else
      table.sort(demands)
      local left, k, level = cap, #demands, 0
      for _, d in ipairs(demands) do
        level = math.floor(left / k)
        if d > level then break end
        left = left - d
        k = k - 1
      end
      if k == 0 then
        -- Every demand fits: each gets its demand plus an equal part of the rest.
        want = mine + math.floor(left / #demands)
      else
        level = math.floor(left / k)
        want = math.min(mine, level)
      end
    end
  end
  local grant = math.max(0, math.min(want, FULL - held))
  redis.call('HSET', key, me, grant .. ':' .. mine .. ':' .. (now + lease_ttl))
  redis.call('PEXPIRE', key, member_ttl * 2)
  out[#out + 1] = grant
end
return out
