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

/// The id a tagged write is to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The tag is new: the write uses the fresh id it offered.
    Fresh(SessionId),
    /// The same write came before and took this id.
    Again(SessionId),
}

impl Claim {
    /// The id, fresh or claimed before.
    pub fn id(self) -> SessionId {
        match self {
            Self::Fresh(id) | Self::Again(id) => id,
        }
    }
}

impl Claims {
    /// Claims `fresh` for the write `tag`, unless it already claimed an id.
    pub fn claim(&self, tag: u64, fresh: SessionId) -> Claim {
        let entry = self.ids.entry(tag).or_insert(fresh);
        if entry.is_fresh() {
            Claim::Fresh(fresh)
        } else {
            Claim::Again(entry.into_value())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_keeps_the_first_id_it_claimed() {
        let claims = Claims::default();
        let (a, b) = (SessionId::random(), SessionId::random());
        assert_eq!(claims.claim(7, a), Claim::Fresh(a));
        assert_eq!(claims.claim(7, b), Claim::Again(a));
        assert_eq!(claims.claim(8, b), Claim::Fresh(b));
    }
}
