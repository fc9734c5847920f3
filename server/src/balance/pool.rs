//! Round-robin over the upstreams in rotation: an atomic counter, no lock
//! and no stickiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::upstream::Upstream;

/// The upstreams and the rotation counter.
#[derive(Debug)]
pub struct Pool {
    upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool over `upstreams`.
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Self {
        Self {
            upstreams,
            next: AtomicUsize::new(0),
        }
    }

    /// Every upstream.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The next upstream in rotation among those up and not in `tried`:
    /// the turn counter picks among the candidates, so when one upstream is
    /// down the others share its load evenly.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let candidates = || {
            (0..self.upstreams.len())
                .filter(|index| self.upstreams[*index].is_up() && !tried.contains(index))
        };
        let count = candidates().count();
        if count == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        candidates().nth(turn % count)
    }

    /// The upstream at `index`.
    pub fn get(&self, index: usize) -> &Arc<Upstream> {
        &self.upstreams[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::upstream::UpstreamUrl;

    fn pool(count: u16) -> Pool {
        Pool::new(
            (1..=count)
                .map(|port| {
                    Arc::new(Upstream::new(
                        UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
                    ))
                })
                .collect(),
        )
    }

    #[test]
    fn rotation_is_exact_and_skips_down_upstreams() {
        let pool = pool(3);
        let picks: Vec<_> = (0..6).filter_map(|_| pool.pick(&[])).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        pool.get(1).eject("down");
        let picks: Vec<_> = (0..6).filter_map(|_| pool.pick(&[])).collect();
        assert_eq!(picks.iter().filter(|&&index| index == 0).count(), 3);
        assert_eq!(picks.iter().filter(|&&index| index == 2).count(), 3);
        assert_eq!(pool.pick(&[0, 2]), None);
    }
}
