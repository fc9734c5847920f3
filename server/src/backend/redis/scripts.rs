//! The Lua scripts that make every Redis-side operation on a session one
//! atomic step, and their typed results.
//!
//! Layout: one Redis hash per session at `<prefix><id>` with the fields
//! `v` (version), `d` (data, the JSON text), `c` (created, ms), `u`
//! (updated, ms), `t` (idle TTL, ms), `w` (the write log: the hex tags of
//! the writes that produced the latest versions, newest first, see
//! `store::WriteLog`), `h` (the log's horizon, ms), `f` (its fence, ms;
//! absent is 0), `o` (the hex ids of the nodes that may hold a cached
//! copy), `p` (the user it belongs to, empty for none) and `a` (the
//! latest announcement of a change to other cachers, `<ms>:<nodes>`:
//! Redis's clock and the hex ids told; absent: none yet); the key's
//! PEXPIREAT is the session's expiry. The fields stay readable by the
//! scripts that check versions; Redis stores the hash compactly (one
//! listpack) only while each field fits its `hash-max-listpack-value`,
//! which the data outgrows at Redis's default (see `settings`).

use bytes::Bytes;
use redis::{FromRedisValue, ParsingError, Script, Value};
use sessiond_proto::{SessionId, UserName};

use super::invalidation::HEARTBEAT_TRUST;
use super::script_call::ScriptCall;
use crate::store::{Session, WRITE_LOG_LEN, WriteLog};

/// A session's key in Redis.
pub fn key(prefix: &str, id: &SessionId) -> String {
    format!("{prefix}{id}")
}

/// The key that marks a deleted session for a while, so a write-behind
/// write of it that was still queued somewhere cannot bring it back (in
/// the session key's own hash slot, for Redis Cluster: a key with a hash
/// tag keeps it, any other becomes the tag).
pub fn tombstone(key: &str) -> String {
    if hash_tag(key).is_some() {
        format!("{key}:gone")
    } else {
        format!("{{{key}}}:gone")
    }
}

/// The part of `key` Redis Cluster hashes instead of the whole key: what
/// lies between its first `{` and the first `}` after it, when not empty.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let inside = &key[open + 1..];
    let close = inside.find('}')?;
    (close > 0).then(|| &inside[..close])
}

/// Whether every session key under `prefix` can share a hash slot with its
/// tombstone: the prefix holds a hash tag, or no `}` that would end the
/// tag `tombstone` makes of a whole key early.
pub fn prefix_keeps_tombstones_in_slot(prefix: &str) -> bool {
    hash_tag(prefix).is_some() || !prefix.contains('}')
}

/// The shortest life of a deleted session's tombstone, which otherwise
/// lives as long as the session's idle TTL: as long as any write of it
/// made before the delete could keep it alive, however long a node's
/// write-behind queue holds that write (Redis away from that node, its
/// Cluster master down). The floor covers short TTLs and the nodes'
/// clocks against Redis's.
const TOMBSTONE_MS: u64 = 120_000;

/// Reads a session with its expiry, and (unless ARGV[1] is '') records
/// the node ARGV[1] as holding a cached copy, unless [`MAX_CACHERS`] other
/// nodes are recorded already: a node never listed is never told of a
/// write, so it must not keep the copy. `WHEN_FULL` is what is done with a
/// full list `nodes`: [`FIND_LAPSED`] in the plain read, [`DROP_LAPSED`]
/// in the one that makes room.
/// Returns nil, or `[v, d, c, u, t, pexpiretime, w, h, p, f, recorded]`
/// (`recorded`: 1 when ARGV[1] is listed; 2 when it is not, but the list
/// holds nodes without a heartbeat key, which the other read would drop).
/// `DATA` is the field of the data: `'d'`, or a field no session has for a
/// read of the rest alone (`d` then ''), a listing's.
const READ: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', DATA, 'c', 'u', 't', 'w', 'h', 'o', 'p', 'f', 'a')
if not r[1] then return false end
local recorded = 0
if ARGV[1] ~= '' then
  local o = r[8] or ''
  if string.find(',' .. o .. ',', ',' .. ARGV[1] .. ',', 1, true) then
    recorded = 1
  else
    local nodes = {}
    for node in string.gmatch(o, '[^,]+') do nodes[#nodes + 1] = node end
    if #nodes >= MAX_CACHERS and ARGV[2] ~= '' then
      WHEN_FULL
    end
    if #nodes < MAX_CACHERS then
      table.insert(nodes, 1, ARGV[1])
      redis.call('HSET', KEYS[1], 'o', table.concat(nodes, ','))
      recorded = 1
    end
  end
end
return {r[1], r[2] or '', r[3], r[4], r[5], redis.call('PEXPIRETIME', KEYS[1]), r[6] or '', r[7] or '0',
  r[9] or '', r[10] or '0', recorded}
";

/// In the plain read, with a full list: whether a listed node's heartbeat
/// key (ARGV[2] and its id) is gone (`recorded` 2).
const FIND_LAPSED: &str = r"
      for _, node in ipairs(nodes) do
        if redis.call('EXISTS', ARGV[2] .. node) == 0 then
          recorded = 2
          break
        end
      end
";

/// In the read that makes room: drops the listed nodes whose heartbeat key
/// is gone: dead, restarted under a new id, or only seeming so (frozen, cut
/// off, the key evicted). A dropped node may still hold a copy, so it is
/// told as a write's cachers are: the invalidation ARGV[4] is published on
/// the channel ARGV[3] and the announcement recorded in `a` (with the
/// nodes a recent one told), so a write in the next moments waits for
/// them too.
const DROP_LAPSED: &str = r"
      local alive, gone = {}, {}
      for _, node in ipairs(nodes) do
        if redis.call('EXISTS', ARGV[2] .. node) == 1 then
          alive[#alive + 1] = node
        else
          gone[#gone + 1] = node
        end
      end
      if #gone > 0 then
        local pending = told(r[11])
        for node in string.gmatch(pending or '', '[^,]+') do gone[#gone + 1] = node end
        redis.call('HSET', KEYS[1], 'a', announcement(gone))
        redis.call('PUBLISH', ARGV[3], ARGV[4])
      end
      nodes = alive
";

/// The most nodes recorded as holding a cached copy of one session (a
/// write waits for each one's ack); further nodes read it through.
pub const MAX_CACHERS: usize = 8;

/// What [`STORE_ANY`] answers when the key held a later version than the
/// write sent again: nothing stored.
pub const STORE_ANY_SUPERSEDED: i64 = 4;
/// What [`STORE_ANY`] answers when the expiry has passed by Redis's clock:
/// nothing stored.
pub const STORE_ANY_EXPIRED: i64 = 5;

/// Lua helpers of the scripts that write (and of the read that drops
/// cachers): `now_ms()` (Redis's clock);
/// `announcement(nodes)`, the record of an invalidation sent to `nodes`
/// now ('0' for none); `told(record)`, the nodes of a recorded one that
/// may still be owed an ack (made less than `RECALL_MS` ago), or nil (a
/// tombstone's record may go on after a space, see [`DELETE`]);
/// `cachers(listed, record, writer)`, the nodes a change must be announced
/// to and acked by: those of the cacher list `listed` and those `told`
/// by `record`, less `writer`; `recall(record, channel, message)`, for a
/// replay: publishes `message` again when `record` was `told` to nodes,
/// and returns them ('' for none); and `emit(stream, retention, kind, id,
/// user, old_id)`, which appends one event (nothing when `stream` is nil:
/// the log is off).
/// The log's expiry index holds `<id>:<user>` scored by the key's expiry.
const EVENTS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local function announcement(nodes)
  if #nodes == 0 then return '0' end
  return now_ms() .. ':' .. table.concat(nodes, ',')
end
local function told(record)
  local at, nodes = string.match(record or '', '^(%d+):([^ ]+)')
  if at and now_ms() - tonumber(at) < RECALL_MS then return nodes end
  return nil
end
local function cachers(listed, record, writer)
  local nodes = {}
  for node in string.gmatch(listed or '', '[^,]+') do
    if node ~= writer then nodes[#nodes + 1] = node end
  end
  local extra = record and told(record)
  if extra then
    local seen = {[writer] = true}
    for _, node in ipairs(nodes) do seen[node] = true end
    for node in string.gmatch(extra, '[^,]+') do
      if not seen[node] then
        seen[node] = true
        nodes[#nodes + 1] = node
      end
    end
  end
  return nodes
end
local function recall(record, channel, message)
  local nodes = told(record)
  if not nodes then return '' end
  redis.call('PUBLISH', channel, message)
  return nodes
end
local function emit(stream, retention, kind, id, user, old)
  if not stream then return end
  local fields = {'k', kind, 'i', id, 'u', user or '', 't', now_ms()}
  if old then
    fields[#fields + 1] = 'o'
    fields[#fields + 1] = old
  end
  redis.call('XADD', stream, 'MAXLEN', '~', retention, '*', unpack(fields))
end
";

/// Stores a whole session if its key is free: 1, or 0 when taken, or -1
/// when its tombstone (KEYS[2]) is there: an earlier attempt of the same
/// create made it and it was deleted since, which a repeat must not undo.
/// With the event log (KEYS[3] stream, KEYS[4] expiry index), indexes its
/// expiry and appends `created`.
/// ARGV: v, d, c, u, t, expires_at, w, h, o, p, f, retention.
const STORE_NEW: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 'c', ARGV[3], 'u', ARGV[4], 't', ARGV[5],
  'w', ARGV[7], 'h', ARGV[8], 'o', ARGV[9], 'p', ARGV[10], 'f', ARGV[11])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
if KEYS[3] then
  local id = string.sub(KEYS[1], -22)
  redis.call('ZADD', KEYS[4], ARGV[6], id .. ':' .. ARGV[10])
  emit(KEYS[3], ARGV[12], 'created', id, ARGV[10])
end
return 1
";

/// Stores a whole session unconditionally: the copy a rotation makes under
/// the new id, or a write-behind write. KEYS: session, its tombstone, and
/// with the event log the stream and the expiry index (written as
/// [`WRITE`] writes it: only when it lacks the session or holds a later
/// expiry).
/// ARGV: v, d, c, u, t, expires_at, w, h, o, p, f; 12 channel and 13
/// message to announce the write on ('' for none), published when nodes
/// other than the writer (ARGV 9) may hold a copy, as [`WRITE`] finds them
/// (the cacher list, and the nodes a recent announcement told), or when
/// the key is new (a list that went with it is unknown); 14 '1' to
/// store nothing (0) when the session was deleted lately (its tombstone is
/// there), nor when it belongs to a user and its key is gone (expired, or
/// lost with Redis's data: a user's session is created in Redis with its
/// index entry, never by a queued write, which would bring it back
/// unindexed, out of reach of a revocation); 15 the event to append if the
/// key is new ('' for none);
/// 16 retention; 17 the event to append if the key held an older version
/// ('' for none); 18 (optional) for a write sent again after a failure
/// that may have stored it, its version: nothing is stored (4) when the key
/// holds a later one, written on it since. Nothing is stored either (5)
/// when the expiry has passed by Redis's clock: a write held in a node's
/// queue past it would end the session, which other nodes may have kept in
/// use, under older data. Over a key of the same idle TTL, the expiry only
/// moves later (`GT`): another node may have slid it since the write was
/// made (a read, a touch), and the session was in use then; a write that
/// sets another TTL sets its expiry. Returns 2 when it appended the first
/// event, 3 the second, else 1.
const STORE_ANY: &str = r"
if ARGV[14] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if tonumber(ARGV[6]) <= now_ms() then return 5 end
local cur = redis.call('HMGET', KEYS[1], 'v', 'o', 'a', 't')
local before = cur[1]
if not before and ARGV[14] == '1' and ARGV[10] ~= '' then return 0 end
local resent = ARGV[18]
if resent and resent ~= '' and before and tonumber(before) > tonumber(resent) then return 4 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 'c', ARGV[3], 'u', ARGV[4], 't', ARGV[5],
  'w', ARGV[7], 'h', ARGV[8], 'o', ARGV[9], 'p', ARGV[10], 'f', ARGV[11])
if before and cur[4] == ARGV[5] then
  redis.call('PEXPIREAT', KEYS[1], ARGV[6], 'GT')
else
  redis.call('PEXPIREAT', KEYS[1], ARGV[6])
end
if ARGV[12] ~= '' and (not before or #cachers(cur[2], cur[3], ARGV[9]) > 0) then
  redis.call('PUBLISH', ARGV[12], ARGV[13])
end
if KEYS[3] then
  local id = string.sub(KEYS[1], -22)
  local member = id .. ':' .. ARGV[10]
  local indexed = before and redis.call('ZSCORE', KEYS[4], member)
  if not indexed or tonumber(indexed) > tonumber(ARGV[6]) then
    redis.call('ZADD', KEYS[4], ARGV[6], member)
  end
  if not before and ARGV[15] ~= '' then
    emit(KEYS[3], ARGV[16], ARGV[15], id, ARGV[10])
    return 2
  end
  if before and ARGV[17] ~= '' and tonumber(before) < tonumber(ARGV[1]) then
    emit(KEYS[3], ARGV[16], ARGV[17], id, ARGV[10])
    return 3
  end
end
return 1
";

/// Writes data (mode 'w') or only refreshes the expiry and TTL (mode 't'),
/// checking the expected version atomically; judges a tagged write against
/// the write log first (the same rules as `store::WriteLog::judge`); makes
/// the writer the only node recorded with a cached copy, and announces the
/// change to the nodes that may hold a copy or may still owe an ack to a
/// recent one (recording it in `a`). The expiry index is written only
/// when it lacks the session or holds a later expiry (a shorter TTL, or a
/// writer whose clock is behind): an entry earlier than the key's expiry
/// is rescored by [`REAP`] when it comes due, one step per session per TTL
/// instead of a reordering per write. Fields are written
/// from the argument strings where they can be (a Lua number passed to
/// Redis is formatted with `printf`, a cost per field).
/// ARGV: 1 expected ('' = any), 2 data, 3 now, 4 ttl ('' = keep), 5 max
/// lifetime ('' = none), 6 channel, 7 message, 8 mode, 9 tag ('' = none),
/// 10 resent after ms ('' = first attempt), 11 allowed clock skew ms,
/// 12 writer node, 13 '1' to log data writes as `updated`, 14 retention,
/// 15 when the first attempt was sent (client's clock, ms; '0' = unknown;
/// when unknown or further ahead of now than the skew, now less ARGV 10,
/// or now for a first attempt, stands in), 16 '1' when the tag is the
/// node's own for a write the client sent untagged: it only finds the same
/// command run before (re-sent by the Redis client after its connection
/// dropped), it judges nothing else.
/// With the event log, KEYS[2] is the stream and KEYS[3] the expiry index.
/// Returns {-1} (missing, or past the writer's max lifetime: the key is
/// left to the nodes without that cap, as a read leaves it), {-2, v}
/// (version mismatch), {-3, v, nodes}
/// (already applied, at version v; the `recall` of the latest
/// announcement), {-4} (cannot tell whether it was applied), {-5} (the tag
/// created the session: a reused key, as `store::Verdict::Reused`), or
/// {v, c, u, t, expires_at, w, h, f, other cachers, user}, with the data
/// appended for a touch.
const WRITE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'c', 't', 'u', 'w', 'h', 'o', 'p', 'f', 'a')
if not cur[1] then return {-1} end
local v = tonumber(cur[1])
local log = cur[5] or ''
local horizon = tonumber(cur[6] or '0')
local fence = tonumber(cur[9] or '0')
local now = tonumber(ARGV[3])
local sent = tonumber(ARGV[15])
local resent = now - (ARGV[10] ~= '' and tonumber(ARGV[10]) or 0)
if sent == 0 or sent > now + tonumber(ARGV[11]) then
  sent = resent
end
if ARGV[9] ~= '' then
  local age = 0
  for tag in string.gmatch(log, '[^,]+') do
    if age >= v then break end
    if tag == ARGV[9] then
      if v - age == 1 then return {-5} end
      return {-3, v - age, recall(cur[10], ARGV[6], ARGV[7])}
    end
    age = age + 1
  end
  if ARGV[10] ~= '' then
    local covered
    if ARGV[1] ~= '' then
      local e = tonumber(ARGV[1])
      covered = v <= e or v - e - 1 < LOG_LEN
    else
      covered = horizon < math.min(sent, resent) - tonumber(ARGV[11])
    end
    if not covered then return {-4} end
  elseif ARGV[1] == '' and ARGV[16] ~= '1' and fence >= sent
      and horizon + tonumber(ARGV[11]) >= sent then
    return {-4}
  end
end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= v then return {-2, v} end
local created = tonumber(cur[2])
local ttl = tonumber(cur[3])
if ARGV[4] ~= '' then ttl = tonumber(ARGV[4]) end
local exp = now + ttl
if ARGV[5] ~= '' then exp = math.min(exp, created + tonumber(ARGV[5])) end
if exp <= now then return {-1} end
local updated = tonumber(cur[4])
local ttl_text = ARGV[4] ~= '' and ARGV[4] or cur[3]
if ARGV[8] == 'w' then
  v = v + 1
  updated = now
  local entries = {ARGV[9] ~= '' and ARGV[9] or '0'}
  for tag in string.gmatch(log, '[^,]+') do
    if #entries >= LOG_LEN then break end
    entries[#entries + 1] = tag
  end
  log = table.concat(entries, ',')
  local horizon_text = cur[6] or '0'
  if v > LOG_LEN then
    horizon = now
    horizon_text = ARGV[3]
  end
  redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2], 'u', ARGV[3], 't', ttl_text, 'w', log,
    'h', horizon_text, 'o', ARGV[12])
  if ARGV[10] ~= '' and sent > fence then
    fence = sent
    redis.call('HSET', KEYS[1], 'f', fence)
  end
else
  redis.call('HSET', KEYS[1], 't', ttl_text, 'o', ARGV[12])
end
local others = cachers(cur[7], cur[10], ARGV[12])
redis.call('PEXPIREAT', KEYS[1], exp)
if #others > 0 then
  redis.call('HSET', KEYS[1], 'a', announcement(others))
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
if KEYS[2] then
  local member = string.sub(KEYS[1], -22) .. ':' .. (cur[8] or '')
  local indexed = redis.call('ZSCORE', KEYS[3], member)
  if not indexed or tonumber(indexed) > exp then
    redis.call('ZADD', KEYS[3], exp, member)
  end
  if ARGV[8] == 'w' and ARGV[13] == '1' then
    emit(KEYS[2], ARGV[14], 'updated', string.sub(KEYS[1], -22), cur[8] or '')
  end
end
local answer = {v, created, updated, ttl, exp, log, horizon, fence, table.concat(others, ','),
  cur[8] or ''}
if ARGV[8] == 't' then answer[11] = redis.call('HGET', KEYS[1], 'd') end
return answer
";

/// Deletes a session (only at version ARGV[3] unless it is ''), announcing
/// it when nodes other than ARGV[4] may hold a copy (or always, when ARGV[4]
/// is ''). Leaves a tombstone (KEYS[2]) holding the announcement to other
/// cachers (as `a` in the hash; '0' for none) and, for a rotation, a space
/// and the id it moved to (see [`rotated_to`]), for the session's idle TTL
/// (at least [`TOMBSTONE_MS`]). Returns {1, other cachers,
/// user} when deleted; when not there, {0, nodes, ''}, the `recall` of its
/// deletion's announcement, leaving a tombstone ('0') if there was none
/// (a write-behind node's create of it may still be queued: the tombstone
/// refuses it when it comes); at another version {0, '', ''}. With
/// the event log (KEYS[3] stream, KEYS[4] expiry index) appends ARGV[5]
/// (`deleted`, `revoked`, `evicted`, or `rotated` with the new id in
/// ARGV[6] and its user in ARGV[8]); ARGV[7] is the retention.
const DELETE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'v', 'o', 'p', 'a', 't')
if not r[1] then
  local gone = redis.call('GET', KEYS[2])
  if not gone and ARGV[3] == '' then redis.call('SET', KEYS[2], '0', 'PX', TOMBSTONE_MS) end
  return {0, recall(gone, ARGV[1], ARGV[2]), ''}
end
if ARGV[3] ~= '' and r[1] ~= ARGV[3] then return {0, '', ''} end
local others = cachers(r[2], r[4], ARGV[4])
redis.call('DEL', KEYS[1])
local moved = ARGV[6] ~= '' and (' ' .. ARGV[6]) or ''
redis.call('SET', KEYS[2], announcement(others) .. moved, 'PX', math.max(TOMBSTONE_MS, tonumber(r[5] or '0')))
if KEYS[3] then
  local id = string.sub(KEYS[1], -22)
  redis.call('ZREM', KEYS[4], id .. ':' .. (r[3] or ''))
  if ARGV[6] ~= '' then
    emit(KEYS[3], ARGV[7], ARGV[5], ARGV[6], ARGV[8], id)
  else
    emit(KEYS[3], ARGV[7], ARGV[5], id, r[3] or '')
  end
end
if #others > 0 or ARGV[4] == '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return {1, table.concat(others, ','), r[3] or ''}
";

/// Takes back the copy a rotation made under a new id (KEYS[1]) when the
/// move cannot finish (the old id went, or kept changing): the key and,
/// with the event log (KEYS[2] stream, KEYS[3] expiry index), its expiry
/// index entry, so it is never reported `expired`; no event, no tombstone
/// (the id never held a session anyone was told of). Returns 1 when there
/// was a copy.
const RETRACT: &str = r"
local user = redis.call('HGET', KEYS[1], 'p')
if not user then return 0 end
redis.call('DEL', KEYS[1])
if KEYS[3] then redis.call('ZREM', KEYS[3], string.sub(KEYS[1], -22) .. ':' .. user) end
return 1
";

/// The id a session was moved to by the rotation that deleted it, from its
/// tombstone's text (`None` for any other deletion).
pub fn rotated_to(tombstone: &str) -> Option<SessionId> {
    let (_, moved) = tombstone.split_once(' ')?;
    moved.parse().ok()
}

/// For a replay: the `recall` (publishing ARGV[2] on the channel ARGV[1])
/// of the latest announcement of a change of a session, a write's (`a` of
/// the hash KEYS[1]) or, once it is gone, its deletion's (its tombstone
/// KEYS[2]).
const RECALL: &str = r"
return recall(redis.call('HGET', KEYS[1], 'a') or redis.call('GET', KEYS[2]), ARGV[1], ARGV[2])
";

/// Pushes a session's expiry later (never earlier) and, with the event log
/// (KEYS[2], the expiry index), its place in the index. ARGV: expires_at,
/// the idle TTL it was slid by. Returns -1, pushing nothing, when the
/// session has another TTL by now (a write changed it, perhaps shortened
/// it, after the slide) or is gone; otherwise whether the expiry moved.
pub const REFRESH: &str = r"
if redis.call('HGET', KEYS[1], 't') ~= ARGV[2] then return -1 end
local pushed = redis.call('PEXPIREAT', KEYS[1], ARGV[1], 'GT')
if pushed == 1 and KEYS[2] then
  local user = redis.call('HGET', KEYS[1], 'p') or ''
  redis.call('ZADD', KEYS[2], 'GT', ARGV[1], string.sub(KEYS[1], -22) .. ':' .. user)
end
return pushed
";

/// Finds sessions whose time has come in the expiry index (KEYS[1]) and,
/// for each whose key is gone or past its expiry, deletes the key, removes
/// the entry and its user's index entry (`<prefix>user:<user>`, unless
/// added after the expiry) and appends `expired` to the stream (KEYS[2]),
/// all in one step: two nodes reaping at once never both report one
/// session, and a user who never comes back leaves no index behind. Also
/// trims the stream by age; when that leaves it empty, notes in KEYS[3]
/// its newest id and the entries ever added (`<id> <added>`): the last
/// entry dropped, which no entry kept tells once others follow.
/// ARGV: key prefix, batch, retention, max age ms.
/// Returns {sessions reported, events the stream holds}.
const REAP: &str = r"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local reaped = 0
for i = 1, #due, 2 do
  local member = due[i]
  local id = string.sub(member, 1, 22)
  local user = string.sub(member, 24)
  local key = ARGV[1] .. id
  local expires = redis.call('PEXPIRETIME', key)
  if expires == -2 or (expires >= 0 and expires <= now) then
    if expires ~= -2 then redis.call('DEL', key) end
    redis.call('ZREM', KEYS[1], member)
    if user ~= '' then
      -- Out of its user's index too (an id added again since it expired,
      -- by a retried create, stays).
      local index = ARGV[1] .. 'user:' .. user
      local added = redis.call('ZSCORE', index, id)
      if added and tonumber(added) <= tonumber(due[i + 1]) then redis.call('ZREM', index, id) end
    end
    emit(KEYS[2], ARGV[3], 'expired', id, user)
    reaped = reaped + 1
  elseif expires == -1 then
    redis.call('ZREM', KEYS[1], member)
  else
    redis.call('ZADD', KEYS[1], expires, member)
  end
end
-- A max age longer than the time since 1970 trims nothing (a stream id
-- is never negative).
local oldest_kept = now - tonumber(ARGV[4])
local trimmed = 0
if oldest_kept > 0 then
  trimmed = redis.call('XTRIM', KEYS[2], 'MINID', oldest_kept .. '-0')
end
local length = redis.call('XLEN', KEYS[2])
if trimmed > 0 and length == 0 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  redis.call('SET', KEYS[3], fields['last-generated-id'] .. ' ' .. (fields['entries-added'] or ''))
end
return {reaped, length}
";

/// A page of the event log's stream KEYS[1] and what `XINFO STREAM` says
/// of it, in one step (a trim between the two would drop entries after the
/// cursor unseen): up to ARGV[2] entries from ARGV[1] (an exclusive start,
/// `(<id>`; none when ARGV[2] is '0'), and the note of the stream's last
/// emptying, KEYS[2] (see [`REAP`]), and the stream's epoch, KEYS[3], set
/// to ARGV[3] when there is none. Returns {info, entries, note, epoch}, or
/// {nil, {}, nil, epoch} when the stream does not exist.
const EVENTS_PAGE: &str = r"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, {}, false, epoch} end
local entries = {}
if ARGV[2] ~= '0' then entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2]) end
return {redis.call('XINFO', 'STREAM', KEYS[1]), entries, redis.call('GET', KEYS[2]), epoch}
";

/// The scripts, loaded once (Redis caches them by SHA).
#[derive(Debug)]
pub struct Scripts {
    pub read: Script,
    pub read_pruning: Script,
    /// [`READ`] without the data (ARGV[1] must be '': nothing recorded).
    pub read_summary: Script,
    pub store_new: Script,
    pub store_any: Script,
    pub write: Script,
    pub delete: Script,
    pub recall: Script,
    pub retract: Script,
    pub reap: Script,
    pub events_page: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        // Twice the trust: a margin for Redis's clock against the nodes'.
        let recall_ms = (2 * HEARTBEAT_TRUST.as_millis()).to_string();
        let with_events = |body: &str| format!("{EVENTS}{body}").replace("RECALL_MS", &recall_ms);
        let write = WRITE.replace("LOG_LEN", &WRITE_LOG_LEN.to_string());
        let delete = DELETE.replace("TOMBSTONE_MS", &TOMBSTONE_MS.to_string());
        let max_cachers = MAX_CACHERS.to_string();
        let read = |when_full: &str, data: &str| {
            READ.replace("WHEN_FULL", when_full)
                .replace("MAX_CACHERS", &max_cachers)
                .replace("DATA", data)
        };
        Self {
            read: Script::new(&read(FIND_LAPSED, "'d'")),
            read_pruning: Script::new(&with_events(&read(DROP_LAPSED, "'d'"))),
            read_summary: Script::new(&read(FIND_LAPSED, "'-'")),
            store_new: Script::new(&with_events(STORE_NEW)),
            store_any: Script::new(&with_events(STORE_ANY)),
            write: Script::new(&with_events(&write)),
            delete: Script::new(&with_events(&delete)),
            recall: Script::new(&with_events(RECALL)),
            retract: Script::new(RETRACT),
            reap: Script::new(&with_events(REAP)),
            events_page: Script::new(EVENTS_PAGE),
        }
    }
}

/// A tag or node id as the scripts store it.
pub fn hex(value: u64) -> String {
    format!("{value:x}")
}

/// Node ids from their stored text (`a,b,c`).
pub fn node_ids(text: &str) -> Vec<u64> {
    text.split(',')
        .filter_map(|node| u64::from_str_radix(node, 16).ok())
        .collect()
}

/// A write log from its stored fields.
fn write_log(tags: &str, horizon_ms: u64, fence_ms: u64) -> WriteLog {
    let mut parsed = [0; WRITE_LOG_LEN];
    for (slot, tag) in parsed.iter_mut().zip(tags.split(',')) {
        *slot = u64::from_str_radix(tag, 16).unwrap_or(0);
    }
    WriteLog::from_parts(parsed, horizon_ms, fence_ms)
}

/// The stored text of the tags of a session at `version` (only the
/// versions the log covers).
fn log_tags(log: &WriteLog, version: u64) -> String {
    let known = (version as usize).min(WRITE_LOG_LEN);
    let tags: Vec<String> = log.tags()[..known].iter().map(|&tag| hex(tag)).collect();
    tags.join(",")
}

/// What [`WRITE`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// No such session in Redis.
    Missing,
    /// The session is at `current`, not the expected version.
    Mismatch {
        /// The version in Redis.
        current: u64,
    },
    /// The same tagged write was applied before, producing `version`.
    Replayed {
        /// The version it produced.
        version: u64,
        /// The nodes the latest announcement of a change went to, if they
        /// may still be owed an ack (it was published again to them).
        told: Vec<u64>,
    },
    /// A re-sent write whose first attempt may or may not have landed.
    Indeterminate,
    /// The write's tag created the session: a reused key.
    Reused,
    /// Written.
    Done {
        /// New (or, for a touch, unchanged) version.
        version: u64,
        /// Creation time.
        created_at_ms: u64,
        /// Last data write.
        updated_at_ms: u64,
        /// Idle TTL now in force.
        ttl_ms: u64,
        /// New expiry.
        expires_at_ms: u64,
        /// The write log after the write.
        writes: WriteLog,
        /// Other nodes that may have held a cached copy.
        others: Vec<u64>,
        /// The user the session belongs to.
        user: Option<UserName>,
        /// The session's data, for a touch.
        data: Option<Bytes>,
    },
}

impl FromRedisValue for WriteOutcome {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut fields: Vec<Value> = FromRedisValue::from_redis_value(value)?;
        let data = if fields.len() == 11 {
            fields.pop().map(Vec::<u8>::from_redis_value).transpose()?
        } else {
            None
        };
        let mut fields = Fields(fields.into_iter());
        let first = i64::from_redis_value(fields.next())?;
        Ok(match first {
            -1 => Self::Missing,
            -2 => Self::Mismatch {
                current: fields.unsigned()?,
            },
            -3 => Self::Replayed {
                version: fields.unsigned()?,
                told: node_ids(&String::from_redis_value(fields.next())?),
            },
            -4 => Self::Indeterminate,
            -5 => Self::Reused,
            version => {
                let (created_at_ms, updated_at_ms) = (fields.unsigned()?, fields.unsigned()?);
                let (ttl_ms, expires_at_ms) = (fields.unsigned()?, fields.unsigned()?);
                let tags = String::from_redis_value(fields.next())?;
                let (horizon_ms, fence_ms) = (fields.unsigned()?, fields.unsigned()?);
                let others = String::from_redis_value(fields.next())?;
                let user = String::from_redis_value(fields.next())?;
                Self::Done {
                    version: version.max(0) as u64,
                    created_at_ms,
                    updated_at_ms,
                    ttl_ms,
                    expires_at_ms,
                    writes: write_log(&tags, horizon_ms, fence_ms),
                    others: node_ids(&others),
                    user: user_name(&user),
                    data: data.map(Bytes::from),
                }
            }
        })
    }
}

/// The fields of a script's answer, in order (missing ones are nil).
struct Fields(std::vec::IntoIter<Value>);

impl Fields {
    fn next(&mut self) -> Value {
        self.0.next().unwrap_or(Value::Nil)
    }

    fn unsigned(&mut self) -> Result<u64, ParsingError> {
        Ok(i64::from_redis_value(self.next())?.max(0) as u64)
    }
}

/// A session as [`READ`] returns it.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub version: u64,
    pub data: Vec<u8>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub ttl_ms: u64,
    /// PEXPIRETIME: the key's expiry (negative when it has none).
    pub expires_at_ms: i64,
    pub writes: WriteLog,
    pub user: Option<UserName>,
    /// Whether the reader is recorded among the session's cachers (it may
    /// keep the copy).
    pub recorded: bool,
    /// Whether it is not, but the full cacher list holds nodes without a
    /// heartbeat key (a read that drops them would make room).
    pub lapsed_cachers: bool,
}

impl FromRedisValue for StoredSession {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let fields: Vec<Value> = FromRedisValue::from_redis_value(value)?;
        let mut fields = Fields(fields.into_iter());
        let version = fields.unsigned()?;
        let data = Vec::<u8>::from_redis_value(fields.next())?;
        let (created_at_ms, updated_at_ms) = (fields.unsigned()?, fields.unsigned()?);
        let ttl_ms = fields.unsigned()?;
        let expires_at_ms = i64::from_redis_value(fields.next())?;
        let tags = String::from_redis_value(fields.next())?;
        let horizon = fields.unsigned()?;
        let user = String::from_redis_value(fields.next())?;
        let fence = fields.unsigned()?;
        let recorded = fields.unsigned()?;
        Ok(Self {
            version,
            data,
            created_at_ms,
            updated_at_ms,
            ttl_ms,
            expires_at_ms,
            writes: write_log(&tags, horizon, fence),
            user: user_name(&user),
            recorded: recorded == 1,
            lapsed_cachers: recorded == 2,
        })
    }
}

impl StoredSession {
    /// The session, or `None` when it has no expiry set (not written by us).
    pub fn into_session(self, id: SessionId) -> Option<Session> {
        Some(Session {
            id,
            data: Bytes::from(self.data),
            version: self.version,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            ttl_ms: self.ttl_ms,
            expires_at_ms: u64::try_from(self.expires_at_ms).ok()?,
            writes: self.writes,
            user: self.user,
        })
    }
}

/// What [`DELETE`] answered: whether it deleted, which other nodes may
/// have held a cached copy, and whose session it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Whether the key was deleted.
    pub deleted: bool,
    /// Other nodes that may have held a cached copy (for a session
    /// already gone, those its deletion told that may still be owed an
    /// ack: the script told them again).
    pub others: Vec<u64>,
    /// The user the session belonged to.
    pub user: Option<UserName>,
}

impl FromRedisValue for Deleted {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let (deleted, others, user): (i64, String, String) =
            FromRedisValue::from_redis_value(value)?;
        Ok(Self {
            deleted: deleted == 1,
            others: node_ids(&others),
            user: user_name(&user),
        })
    }
}

/// A stored user name (empty: none; anything unparsable: none).
fn user_name(text: &str) -> Option<UserName> {
    (!text.is_empty())
        .then(|| UserName::parse(text).ok())
        .flatten()
}

/// The session hash's field that names its user (`""` for none): `p`, as
/// the scripts write it (`u` is the time it was last updated).
pub const USER_FIELD: &str = "p";

/// Adds the arguments that store a whole session to `call`: v, d, c, u,
/// t, expires_at, w, h, `cacher` (the node recorded as holding a copy), p
/// and f.
pub fn session_args(call: &mut ScriptCall<'_>, session: &Session, cacher: &str) {
    call.arg(session.version)
        .arg(session.data.as_ref())
        .arg(session.created_at_ms)
        .arg(session.updated_at_ms)
        .arg(session.ttl_ms)
        .arg(session.expires_at_ms)
        .arg(log_tags(&session.writes, session.version))
        .arg(session.writes.horizon_ms())
        .arg(cacher)
        .arg(session.user.as_ref().map_or("", UserName::as_str))
        .arg(session.writes.fence_ms());
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    #[test]
    fn only_a_rotations_tombstone_names_the_id_it_moved_to() {
        let moved = SessionId::random();
        assert_eq!(rotated_to(&format!("0 {moved}")), Some(moved));
        assert_eq!(
            rotated_to(&format!("1764800000000:a1,b2 {moved}")),
            Some(moved)
        );
        assert_eq!(rotated_to("0"), None);
        assert_eq!(rotated_to("1764800000000:a1,b2"), None);
        assert_eq!(rotated_to("0 not-an-id"), None);
    }

    #[test]
    fn a_tombstone_hashes_to_its_session_keys_slot() {
        for prefix in [
            "sessiond:",
            "{app}:",
            "x{app}y:",
            "a{b:",
            "{}:",
            "}{a}:",
            "{",
        ] {
            let key = format!("{prefix}tj1R00REFiH-lPX8Yo3RBA");
            let gone = tombstone(&key);
            assert_eq!(
                (Slot::for_key(&gone) == Slot::for_key(&key)),
                prefix_keeps_tombstones_in_slot(prefix),
                "prefix {prefix:?}: {key} and {gone}"
            );
        }
    }

    #[test]
    fn only_a_prefix_with_a_stray_closing_brace_is_refused() {
        assert!(prefix_keeps_tombstones_in_slot("sessiond:"));
        assert!(prefix_keeps_tombstones_in_slot("{app}:"));
        assert!(!prefix_keeps_tombstones_in_slot("{}:"));
        assert!(!prefix_keeps_tombstones_in_slot("app}:"));
        assert_eq!(tombstone("sessiond:abc"), "{sessiond:abc}:gone");
        assert_eq!(tombstone("{app}:abc"), "{app}:abc:gone");
    }
}
