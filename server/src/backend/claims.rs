//! Which fresh id a tagged create or rotate got on this node (memory-only
//! mode), so that the same write sent again completes or replays that one
//! instead of making a second session, and whether a create made its
//! session (so that a repeat after the session ended does not bring it
//! back). With Redis, the claim lives in Redis
//! instead (see `replication`), where every node sees it.
//!
//! Claims are kept in two generations of plain maps per shard: new claims
//! go to the current one, and when a claim arrives after it is
//! [`CLAIM_TTL`] old (or full) it becomes the previous one and the
//! previous one is dropped whole. A claim is thus remembered for at least
//! `CLAIM_TTL` (unless more than the cap arrive within it), until two
//! generations on; a quiet shard keeps its last claims until new ones
//! come. About 45 bytes each, at most twice the cap held (a general-purpose
//! cache with per-entry expiry took 365 bytes per claim: 73 bytes per
//! session after a million creates).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sessiond_proto::SessionId;
use sessiond_proto::wire::RESEND_WINDOW;

/// How long a claim is remembered at least: twice as long as a client may
/// re-send a write whose answer was lost.
pub const CLAIM_TTL: Duration = Duration::from_secs(2 * RESEND_WINDOW.as_secs());
/// Most claims one generation holds, over all shards; past it the oldest
/// generation goes early.
const MAX_CLAIMS: usize = 200_000;
/// Independently locked shards (tags are random, so they spread evenly).
const SHARDS: usize = 16;

/// Recent tagged creates and rotations of this node.
#[derive(Debug, Clone)]
pub struct Claims {
    shards: Arc<[Mutex<Generations>]>,
}

/// One shard's claims: the id and whether the write made its session.
#[derive(Debug)]
struct Generations {
    current: HashMap<u64, (SessionId, bool)>,
    previous: HashMap<u64, (SessionId, bool)>,
    current_since: Instant,
}

/// What [`Claims::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No earlier attempt of the write claimed an id: it takes the fresh one.
    Fresh(SessionId),
    /// An earlier attempt claimed this id.
    Earlier {
        /// The id claimed.
        id: SessionId,
        /// An attempt made the session (see [`Claims::made`]).
        made: bool,
    },
}

impl Claim {
    /// The id the write is to use.
    pub fn id(self) -> SessionId {
        match self {
            Self::Fresh(id) | Self::Earlier { id, .. } => id,
        }
    }
}

impl Default for Claims {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Generations {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                        current_since: now,
                    })
                })
                .collect(),
        }
    }
}

impl Claims {
    /// The id the write `tag` is to use: `fresh`, unless an attempt of the
    /// same write claimed one before.
    pub fn claim(&self, tag: u64, fresh: SessionId) -> Claim {
        let mut shard = self.shards[tag as usize % SHARDS].lock();
        if let Some(&(id, made)) = shard.current.get(&tag).or_else(|| shard.previous.get(&tag)) {
            return Claim::Earlier { id, made };
        }
        let now = Instant::now();
        if now.duration_since(shard.current_since) >= CLAIM_TTL
            || shard.current.len() >= MAX_CLAIMS / SHARDS
        {
            shard.previous = std::mem::take(&mut shard.current);
            shard.current_since = now;
        }
        shard.current.insert(tag, (fresh, false));
        Claim::Fresh(fresh)
    }

    /// Records that the write `tag` made the session it claimed an id for.
    pub fn made(&self, tag: u64) {
        let mut shard = self.shards[tag as usize % SHARDS].lock();
        let Generations {
            current, previous, ..
        } = &mut *shard;
        if let Some((_, made)) = current.get_mut(&tag).or_else(|| previous.get_mut(&tag)) {
            *made = true;
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
        assert_eq!(claims.claim(7, b), Claim::Earlier { id: a, made: false });
        assert_eq!(claims.claim(8, b), Claim::Fresh(b));
        claims.made(7);
        assert_eq!(claims.claim(7, b), Claim::Earlier { id: a, made: true });
    }

    #[test]
    fn a_claim_outlives_one_full_generation_and_not_two() {
        let claims = Claims::default();
        let first = SessionId::random();
        let per_generation = (MAX_CLAIMS / SHARDS) as u64;
        // Tags of shard 0 only: 0, 16, 32, ...
        let tag = |n: u64| n * SHARDS as u64;
        assert_eq!(claims.claim(tag(0), first).id(), first);
        for n in 1..per_generation {
            claims.claim(tag(n), SessionId::random());
        }
        // The first generation is full: the next claim starts a new one,
        // and the first claim is still known from the previous one.
        claims.claim(tag(per_generation), SessionId::random());
        assert_eq!(claims.claim(tag(0), SessionId::random()).id(), first);
        for n in per_generation + 1..2 * per_generation + 1 {
            claims.claim(tag(n), SessionId::random());
        }
        // Two generations on, it is gone: the tag claims a fresh id.
        let fresh = SessionId::random();
        assert_eq!(claims.claim(tag(0), fresh), Claim::Fresh(fresh));
    }
}
