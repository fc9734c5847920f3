//! Advice on the Redis server's settings, logged once Redis first answers:
//! what sessiond costs in Redis depends on them, and an operator reads the
//! log before the README.
//!
//! One setting matters: a session is one Redis hash whose `d` field is the
//! whole data, and Redis keeps a hash in its compact encoding (one
//! listpack) only while every field is at most `hash-max-listpack-value`
//! bytes, 64 by default. Above it each field is a hash table entry of its
//! own, which made a session of 512 bytes take 1,733 bytes of Redis memory
//! instead of 933 (BENCHMARKS.md, "Memory per session").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{FromRedisValue, Value};
use tokio_util::sync::CancellationToken;

use super::link::RedisLink;

/// The `hash-max-listpack-value` the README recommends: sessions of up to
/// 8 KiB stay compact.
pub const RECOMMENDED_HASH_VALUE_BYTES: u64 = 8192;
/// Below this limit most sessions' hashes are in the large encoding, and
/// the log says so.
const ADVISE_BELOW: u64 = 1024;
/// How often the adviser looks whether Redis answers yet.
const POLL: Duration = Duration::from_millis(250);

/// Waits until Redis answers (or `shutdown`), then reads its hash encoding
/// limit once and logs it, with a warning and the fix when it is low. A
/// Redis that refuses `CONFIG GET` (renamed, or denied by an ACL, as
/// managed services do) gets a debug line only.
pub async fn advise_on_hash_encoding(link: Arc<RedisLink>, shutdown: CancellationToken) {
    while !link.is_up() {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    // The setting's older name: Redis 7 takes both, Redis 6 only this one.
    let mut read = redis::cmd("CONFIG");
    read.arg("GET").arg("hash-max-ziplist-value");
    let reply = match link.on_any_server("CONFIG GET", read).await {
        Ok(reply) => reply,
        Err(err) => {
            tracing::debug!(error = %err, "could not read Redis's hash-max-listpack-value");
            return;
        }
    };
    match hash_value_limit(reply) {
        Some(limit) if limit < ADVISE_BELOW => tracing::warn!(
            hash_max_listpack_value = limit,
            "Redis keeps a session whose data is over {limit} bytes in its large hash \
             encoding, at about 1.8 times the memory of the compact one; \
             `CONFIG SET hash-max-listpack-value {RECOMMENDED_HASH_VALUE_BYTES}` on the \
             Redis server (and the same line in its redis.conf) keeps sessions of up to \
             8 KiB compact (README, \"Redis's memory per session\")"
        ),
        Some(limit) => tracing::info!(
            hash_max_listpack_value = limit,
            "Redis keeps sessions of up to {limit} bytes in its compact hash encoding"
        ),
        None => tracing::debug!("Redis did not say its hash-max-listpack-value"),
    }
}

/// The limit in a reply to `CONFIG GET hash-max-ziplist-value` (a name and
/// its value, as an array or a map), if it holds one.
fn hash_value_limit(reply: Value) -> Option<u64> {
    let settings = HashMap::<String, String>::from_redis_value(reply).ok()?;
    settings.into_values().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn the_limit_is_read_from_either_reply_shape() {
        let name = "hash-max-ziplist-value";
        assert_eq!(
            hash_value_limit(Value::Array(vec![bulk(name), bulk("64")])),
            Some(64)
        );
        assert_eq!(
            hash_value_limit(Value::Map(vec![(bulk(name), bulk("8192"))])),
            Some(8192)
        );
        assert_eq!(hash_value_limit(Value::Array(vec![])), None);
        assert_eq!(
            hash_value_limit(Value::Array(vec![bulk(name), bulk("lots")])),
            None
        );
    }
}
