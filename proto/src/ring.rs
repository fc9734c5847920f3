//! Rendezvous (highest-random-weight) hashing of session ids onto nodes.
//!
//! Each node has a 64-bit seed (a hash of its address); a session's owner
//! is the node with the highest score for that session, and its failover
//! order is the nodes by descending score. Adding or removing a node moves
//! only the sessions whose highest score changes: that node's share.

use crate::SessionId;

/// A node's seed from its name (its address as the client was given it).
pub fn node_seed(name: &str) -> u64 {
    // FNV-1a, then mixed: stable across processes and platforms.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(hash)
}

/// The score of `id` on the node with `seed`.
pub fn score(seed: u64, id: &SessionId) -> u64 {
    let value = id.as_u128();
    mix(seed ^ (value as u64)) ^ mix(seed.rotate_left(29) ^ ((value >> 64) as u64))
}

/// The index of the node that owns `id` in `ring` (`None` for an empty ring).
pub fn owner(ring: &[u64], id: &SessionId) -> Option<usize> {
    ring.iter()
        .enumerate()
        .max_by_key(|&(index, &seed)| (score(seed, id), std::cmp::Reverse(index)))
        .map(|(index, _)| index)
}

/// Whether the node at `index` owns `id`, as [`owner`] says, but cheaper:
/// it stops at the first node that outscores it, after two scores on
/// average for an id it does not own.
pub fn owns(ring: &[u64], index: usize, id: &SessionId) -> bool {
    let Some(&seed) = ring.get(index) else {
        return false;
    };
    let mine = score(seed, id);
    ring.iter().enumerate().all(|(other, &seed)| {
        let theirs = score(seed, id);
        other == index || theirs < mine || (theirs == mine && other > index)
    })
}

/// The nodes of `ring` in `id`'s preference order: owner first.
pub fn preference(ring: &[u64], id: &SessionId) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ring.len()).collect();
    order.sort_by_key(|&index| std::cmp::Reverse(score(ring[index], id)));
    order
}

/// SplitMix64's finaliser: a cheap, well-spread 64-bit mix.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(names: &[&str]) -> Vec<u64> {
        names.iter().map(|name| node_seed(name)).collect()
    }

    #[test]
    fn sessions_spread_evenly() {
        let ring = ring(&["10.0.0.1:7701", "10.0.0.2:7701", "10.0.0.3:7701"]);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[owner(&ring, &SessionId::random()).unwrap_or(0)] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_share() {
        let full = ring(&["a:1", "b:1", "c:1", "d:1"]);
        let without_c = [full[0], full[1], full[3]];
        let ids: Vec<_> = (0..10_000).map(|_| SessionId::random()).collect();
        for id in &ids {
            let before = owner(&full, id).unwrap_or(0);
            let after = owner(&without_c, id).unwrap_or(0);
            let after_in_full = [0, 1, 3][after];
            if before != 2 {
                assert_eq!(before, after_in_full, "a session not on c moved");
            }
        }
    }

    #[test]
    fn owns_agrees_with_owner() {
        let distinct = ring(&["a", "b", "c", "d", "e"]);
        let ties = vec![7, 7, 9, 7];
        for ring in [distinct, ties] {
            for _ in 0..2_000 {
                let id = SessionId::random();
                let owner = owner(&ring, &id);
                for index in 0..ring.len() {
                    assert_eq!(owns(&ring, index, &id), owner == Some(index));
                }
                assert!(!owns(&ring, ring.len(), &id));
            }
        }
    }

    #[test]
    fn preference_starts_with_the_owner_and_lists_every_node() {
        let ring = ring(&["a", "b", "c"]);
        let id = SessionId::random();
        let order = preference(&ring, &id);
        assert_eq!(order[0], owner(&ring, &id).unwrap_or(usize::MAX));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2]);
    }
}
