//! The Lua scripts that make each registry write atomic on the server.
//!
//! Owns: script sources. Must not touch: connections (see `conn.rs` for how they run).
//!
//! Session scripts take the user's hash as KEYS[1]. With a single Redis server they also
//! get the edge set and the counter (KEYS[2], KEYS[3]) and update them in the same
//! script; the old edge's set, known only from the stored value, is addressed by name
//! (`rk:edge:{<id>}:sessions`, see `keys.rs`), which a standalone server allows. On Redis
//! Cluster those keys live in other slots, so the caller updates them with separate
//! commands around the script (see `registry.rs`). Stored values start with
//! `\1<edge> <conn>\n` (see `codec.rs`), matched here as strings.

use std::sync::OnceLock;

/// A script's source and its SHA1, which `EVALSHA` names it by.
pub(crate) struct Lua {
    pub(crate) src: &'static str,
    sha: OnceLock<String>,
}

impl Lua {
    const fn new(src: &'static str) -> Lua {
        Lua { src, sha: OnceLock::new() }
    }

    pub(crate) fn sha(&self) -> &str {
        self.sha.get_or_init(|| redis::Script::new(self.src).get_hash().to_owned())
    }
}

/// KEYS: user hash [, new edge set, counter]. ARGV: resource, value, new member,
/// bare JID (published), "1" to keep an existing entry (resync), full JID.
/// Returns {1, old value or nil} when written, {0, current value} when kept.
pub(crate) static INSERT: Lua = Lua::new(
    r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and ARGV[5] == '1' then return {0, old} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if #KEYS == 3 then
  redis.call('SADD', KEYS[2], ARGV[3])
  if old then
    local e, c = string.match(old, '^[\1\2](%d+) (%d+)\n')
    if e then
      local set = 'rk:edge:{' .. e .. '}:sessions'
      local m = ARGV[6] .. '\n' .. c
      if set ~= KEYS[2] or m ~= ARGV[3] then redis.call('SREM', set, m) end
    end
  else
    redis.call('INCR', KEYS[3])
  end
end
redis.call('PUBLISH', 'rk:inv', ARGV[4])
return {1, old}
",
);

/// KEYS: user hash [, edge set, counter]. ARGV: resource, edge, conn, member, bare JID.
/// Deletes the entry only if it is still at (edge, conn); returns it, or nil.
/// The member is dropped from the edge set either way: it names exactly this location.
pub(crate) static REMOVE: Lua = Lua::new(
    r"
if #KEYS == 3 then redis.call('SREM', KEYS[2], ARGV[4]) end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
local e, c = string.match(cur, '^[\1\2](%d+) (%d+)\n')
if e ~= ARGV[2] or c ~= ARGV[3] then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
if #KEYS == 3 then redis.call('DECR', KEYS[3]) end
redis.call('PUBLISH', 'rk:inv', ARGV[5])
return cur
",
);

/// KEYS: user hash. ARGV: resource, expected value, new value, bare JID.
/// Compare-and-set: {1, nil} when the entry matched (written if it changed),
/// {0, current value or nil} otherwise.
pub(crate) static UPDATE: Lua = Lua::new(
    r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == ARGV[2] then
  if ARGV[3] ~= ARGV[2] then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    redis.call('PUBLISH', 'rk:inv', ARGV[4])
  end
  return {1, false}
end
return {0, cur}
",
);

/// KEYS: purged marker, epoch record. ARGV: epoch, ttl ms, "1" when this caller already
/// had this epoch accepted. Returns 'purged' or 'ok' (and refreshes the epoch record).
/// An accepted epoch whose record vanished means the edge was silent longer than its ttl:
/// it is treated as purged (and marked so) because a purge may run at any moment.
pub(crate) static HEARTBEAT: Lua = Lua::new(
    r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return 'purged' end
if ARGV[3] == '1' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 'purged'
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 'ok'
",
);

/// KEYS: the edges sorted set. ARGV: edge id. Scores with the Redis server's clock, so
/// edges and routers never compare their own clocks.
pub(crate) static TOUCH_EDGE: Lua = Lua::new(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
return 1
",
);

/// KEYS: the edges sorted set. ARGV: timeout ms. Edges whose last heartbeat is older.
pub(crate) static DEAD_EDGES: Lua = Lua::new(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - tonumber(ARGV[1])))
",
);

/// KEYS: purge lock, epoch record, purged marker, edge set, purging set.
/// ARGV: lock token, lock ms. nil when another caller holds the purge; otherwise marks
/// the edge's epoch purged, moves the edge set into the purging set (merging what an
/// unfinished earlier purge left there) and returns {epoch or '0', members}.
pub(crate) static CLAIM_PURGE: Lua = Lua::new(
    r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local ep = redis.call('GET', KEYS[2])
if ep then redis.call('SET', KEYS[3], ep) end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('SUNIONSTORE', KEYS[5], KEYS[5], KEYS[4])
  redis.call('DEL', KEYS[4])
end
return {ep or '0', redis.call('SMEMBERS', KEYS[5])}
",
);
