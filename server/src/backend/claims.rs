//! Which fresh id a tagged create or rotate got on this node (memory-only
//! mode), so that the same write sent again completes or replays that one
//! instead of making a second session, whether a create made its session
//! (so that a repeat after the session ended does not bring it back), and
//! which kind of write claimed it (a write of the other kind with the same
//! tag is a reused key, never a repeat). With Redis, the claim lives in
//! Redis instead (see `replication`), where every node sees it.
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

use super::api::BackendError;

/// How long a claim is remembered at least: twice as long as a client may
/// re-send a write whose answer was lost.
pub const CLAIM_TTL: Duration = Duration::from_secs(2 * RESEND_WINDOW.as_secs());
/// Most claims one generation holds, over all shards; past it the oldest
/// generation goes early.
const MAX_CLAIMS: usize = 200_000;
/// Independently locked shards (a power of two).
const SHARDS: usize = 16;

/// The id a rotation of `id` moves the session to: `claimed` (the fresh id,
/// or the one its tag claimed first), unless that is `id` itself: the key
/// already moved a session to this id, and this is another write reusing
/// it (on the id it made), never a repeat. (Needed for a claim that does
/// not name the session it moved: one a node from before origins wrote in
/// Redis.)
pub fn rotation_target(id: &SessionId, claimed: SessionId) -> Result<SessionId, BackendError> {
    if claimed == *id {
        return Err(BackendError::KeyReused);
    }
    Ok(claimed)
}

/// Recent tagged creates and rotations of this node.
#[derive(Debug, Clone)]
pub struct Claims {
    shards: Arc<[Mutex<Generations>]>,
}

/// One shard's claims.
#[derive(Debug)]
struct Generations {
    current: HashMap<u64, Claimed>,
    previous: HashMap<u64, Claimed>,
    current_since: Instant,
}

/// One claim: a create's id and whether it made its session, or a
/// rotation's (boxed: rotations are few, and a create's claim stays small).
#[derive(Debug)]
enum Claimed {
    Create { id: SessionId, made: bool },
    Rotation(Box<Moved>),
}

/// What a rotation's claim names: the session it moves, and where to.
#[derive(Debug)]
struct Moved {
    origin: SessionId,
    to: SessionId,
}

/// The kind of write that claims an id for its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimedBy {
    /// A create: the id of the session it makes.
    Create,
    /// A rotation of the session `origin`: the id it moves it to.
    Rotation {
        /// The session the rotation moves.
        origin: SessionId,
    },
}

impl Claimed {
    fn new(by: ClaimedBy, id: SessionId) -> Self {
        match by {
            ClaimedBy::Create => Self::Create { id, made: false },
            ClaimedBy::Rotation { origin } => Self::Rotation(Box::new(Moved { origin, to: id })),
        }
    }

    /// What an attempt of the write `by` finds in this claim.
    fn found_by(&self, by: ClaimedBy) -> Claim {
        match (self, by) {
            (&Self::Create { id, made }, ClaimedBy::Create) => Claim::Earlier { id, made },
            (Self::Rotation(moved), ClaimedBy::Rotation { origin }) if moved.origin == origin => {
                Claim::Earlier {
                    id: moved.to,
                    made: false,
                }
            }
            _ => Claim::Reused,
        }
    }
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
    /// A write of the other kind, or a rotation of another session,
    /// claimed the tag: its key was reused.
    Reused,
}

impl Claim {
    /// The id the write is to use; a reused key is refused.
    pub fn id(self) -> Result<SessionId, BackendError> {
        match self {
            Self::Fresh(id) | Self::Earlier { id, .. } => Ok(id),
            Self::Reused => Err(BackendError::KeyReused),
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
    /// The shard of `tag`, by its top bits: an HTTP key's tag is its FNV-1a
    /// hash, whose low bits depend only on the low bits of the key's bytes
    /// (keys differing in the others would share one shard).
    fn shard(&self, tag: u64) -> &Mutex<Generations> {
        &self.shards[(tag >> (u64::BITS - SHARDS.ilog2())) as usize]
    }

    /// The id the write `tag` (a write of the kind `by`) is to use:
    /// `fresh`, unless an attempt of the same write claimed one before.
    pub fn claim(&self, tag: u64, fresh: SessionId, by: ClaimedBy) -> Claim {
        let mut shard = self.shard(tag).lock();
        if let Some(earlier) = shard.current.get(&tag).or_else(|| shard.previous.get(&tag)) {
            return earlier.found_by(by);
        }
        let now = Instant::now();
        if now.duration_since(shard.current_since) >= CLAIM_TTL
            || shard.current.len() >= MAX_CLAIMS / SHARDS
        {
            shard.previous = std::mem::take(&mut shard.current);
            shard.current_since = now;
        }
        shard.current.insert(tag, Claimed::new(by, fresh));
        Claim::Fresh(fresh)
    }

    /// Records that the write `tag` made the session it claimed an id for.
    pub fn made(&self, tag: u64) {
        let mut shard = self.shard(tag).lock();
        let Generations {
            current, previous, ..
        } = &mut *shard;
        if let Some(Claimed::Create { made, .. }) =
            current.get_mut(&tag).or_else(|| previous.get_mut(&tag))
        {
            *made = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: ClaimedBy = ClaimedBy::Create;

    #[test]
    fn a_tag_keeps_the_first_id_it_claimed() {
        let claims = Claims::default();
        let (a, b) = (SessionId::random(), SessionId::random());
        assert_eq!(claims.claim(7, a, CREATE), Claim::Fresh(a));
        assert_eq!(
            claims.claim(7, b, CREATE),
            Claim::Earlier { id: a, made: false }
        );
        assert_eq!(claims.claim(8, b, CREATE), Claim::Fresh(b));
        claims.made(7);
        assert_eq!(
            claims.claim(7, b, CREATE),
            Claim::Earlier { id: a, made: true }
        );
    }

    #[test]
    fn a_tag_claimed_by_one_kind_of_write_is_reused_by_the_other() {
        let claims = Claims::default();
        let (a, b) = (SessionId::random(), SessionId::random());
        let rotation = ClaimedBy::Rotation {
            origin: SessionId::random(),
        };
        assert_eq!(claims.claim(7, a, CREATE), Claim::Fresh(a));
        assert_eq!(claims.claim(7, b, rotation), Claim::Reused);
        assert_eq!(claims.claim(8, b, rotation), Claim::Fresh(b));
        assert_eq!(claims.claim(8, a, CREATE), Claim::Reused);
        assert!(matches!(Claim::Reused.id(), Err(BackendError::KeyReused)));
    }

    #[test]
    fn a_rotations_tag_is_reused_by_a_rotation_of_another_session() {
        let claims = Claims::default();
        let (origin, other, to) = (
            SessionId::random(),
            SessionId::random(),
            SessionId::random(),
        );
        let of = |origin| ClaimedBy::Rotation { origin };
        assert_eq!(claims.claim(9, to, of(origin)), Claim::Fresh(to));
        let again = claims.claim(9, SessionId::random(), of(origin));
        assert_eq!(
            again,
            Claim::Earlier {
                id: to,
                made: false
            }
        );
        assert_eq!(
            claims.claim(9, SessionId::random(), of(other)),
            Claim::Reused
        );
    }

    #[test]
    fn tags_alike_in_their_low_bits_spread_over_the_shards() {
        let claims = Claims::default();
        let shards: std::collections::HashSet<*const Mutex<Generations>> = (0..SHARDS as u64)
            .map(|n| claims.shard(n << 60 | 5) as *const _)
            .collect();
        assert_eq!(shards.len(), SHARDS);
    }

    #[test]
    fn a_claim_outlives_one_full_generation_and_not_two() {
        let claims = Claims::default();
        let first = SessionId::random();
        let per_generation = (MAX_CLAIMS / SHARDS) as u64;
        // Tags of shard 0 only: the top bits clear.
        let tag = |n: u64| n;
        assert_eq!(claims.claim(tag(0), first, CREATE), Claim::Fresh(first));
        for n in 1..per_generation {
            claims.claim(tag(n), SessionId::random(), CREATE);
        }
        // The first generation is full: the next claim starts a new one,
        // and the first claim is still known from the previous one.
        claims.claim(tag(per_generation), SessionId::random(), CREATE);
        assert_eq!(
            claims.claim(tag(0), SessionId::random(), CREATE),
            Claim::Earlier {
                id: first,
                made: false
            }
        );
        for n in per_generation + 1..2 * per_generation + 1 {
            claims.claim(tag(n), SessionId::random(), CREATE);
        }
        // Two generations on, it is gone: the tag claims a fresh id.
        let fresh = SessionId::random();
        assert_eq!(claims.claim(tag(0), fresh, CREATE), Claim::Fresh(fresh));
    }
}
