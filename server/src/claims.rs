//! Which fresh id a tagged create or rotate got on this node (memory-only
//! mode), so that the same write sent again completes or replays that one
//! instead of making a second session. With Redis, the claim lives in Redis
//! instead (see `replication`), where every node sees it.

use std::time::Duration;

use sessiond_proto::SessionId;
use sessiond_proto::wire::RESEND_WINDOW;

/// How long a claim is remembered: twice as long as a client may re-send a
/// write whose answer was lost.
pub const CLAIM_TTL: Duration = Duration::from_secs(2 * RESEND_WINDOW.as_secs());
/// Most claims held; the oldest go first.
const MAX_CLAIMS: u64 = 200_000;

/// Recent tagged creates and rotations of this node.
#[derive(Debug, Clone)]
pub struct Claims {
    ids: moka::sync::Cache<u64, SessionId>,
}

impl Default for Claims {
    fn default() -> Self {
        Self {
            ids: moka::sync::Cache::builder()
                .max_capacity(MAX_CLAIMS)
                .time_to_live(CLAIM_TTL)
                .build(),
        }
    }
}

impl Claims {
    /// The id the write `tag` is to use: `fresh`, unless an attempt of the
    /// same write claimed one before.
    pub fn claim(&self, tag: u64, fresh: SessionId) -> SessionId {
        self.ids.entry(tag).or_insert(fresh).into_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_keeps_the_first_id_it_claimed() {
        let claims = Claims::default();
        let (a, b) = (SessionId::random(), SessionId::random());
        assert_eq!(claims.claim(7, a), a);
        assert_eq!(claims.claim(7, b), a);
        assert_eq!(claims.claim(8, b), b);
    }
}
