//! The upstreams in rotation and the choice among them: round-robin by an
//! atomic counter over a membership list that is swapped whole when it
//! changes (no lock on the request path), thinned for slow-starting
//! upstreams and skipping upstreams at `--max-conns`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::capacity::Capacity;
use super::upstream::{InFlight, Upstream, UpstreamUrl};

/// What [`Pool::pick`] found.
#[derive(Debug)]
pub enum Pick {
    /// An upstream, its slot taken.
    Chosen(InFlight),
    /// Upstreams are in rotation but every one is at `--max-conns`.
    Full,
    /// No upstream is in rotation (or all were tried).
    Nothing,
}

/// What [`Pool::add`] did.
#[derive(Debug)]
pub enum Joined {
    /// A new member, slow-starting.
    New(Arc<Upstream>),
    /// A draining member, taken back.
    TakenBack,
    /// A member already, not draining.
    Present,
}

/// The upstreams and the rotation counter.
#[derive(Debug)]
pub struct Pool {
    members: ArcSwap<Vec<Arc<Upstream>>>,
    /// Serializes membership changes (never taken on the request path).
    edits: Mutex<()>,
    next: AtomicUsize,
    capacity: Arc<Capacity>,
    slow_start: Duration,
    max_conns: Option<u64>,
}

impl Pool {
    /// A pool over `urls`, all at full share from the start.
    pub fn new(urls: &[UpstreamUrl], slow_start: Duration, max_conns: Option<u64>) -> Self {
        let capacity = Arc::new(Capacity::default());
        let members = urls
            .iter()
            .map(|url| {
                Arc::new(Upstream::new(
                    url.clone(),
                    capacity.clone(),
                    slow_start,
                    false,
                ))
            })
            .collect();
        Self {
            members: ArcSwap::from_pointee(members),
            edits: Mutex::new(()),
            next: AtomicUsize::new(0),
            capacity,
            slow_start,
            max_conns,
        }
    }

    /// Every upstream, draining ones included, in configuration order.
    pub fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.members.load_full()
    }

    /// The queue of requests waiting for a slot.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// The upstream at `url`, if it is a member.
    pub fn find(&self, url: &UpstreamUrl) -> Option<Arc<Upstream>> {
        self.members.load().iter().find(|u| u.url == *url).cloned()
    }

    /// Adds `url` at the end of the rotation, slow-starting, or takes it
    /// back if it is draining: under the edits' lock, so a drain that ends
    /// meanwhile either removed it first (it joins anew) or finds it taken
    /// back ([`remove_drained`](Self::remove_drained)).
    pub fn add(&self, url: &UpstreamUrl) -> Joined {
        let _edit = self.edits.lock();
        if let Some(existing) = self.find(url) {
            if !existing.is_draining() {
                return Joined::Present;
            }
            existing.set_draining(false);
            return Joined::TakenBack;
        }
        let upstream = Arc::new(Upstream::new(
            url.clone(),
            self.capacity.clone(),
            self.slow_start,
            true,
        ));
        let mut members = Vec::clone(&self.members.load());
        members.push(upstream.clone());
        self.members.store(Arc::new(members));
        self.capacity.room_made();
        Joined::New(upstream)
    }

    /// Removes `upstream` from the membership at the end of its drain (its
    /// in-flight requests go on); `false` when it was not a member or has
    /// been taken back.
    pub fn remove_drained(&self, upstream: &Arc<Upstream>) -> bool {
        let _edit = self.edits.lock();
        let members = self.members.load();
        if !upstream.is_draining() || !members.iter().any(|u| Arc::ptr_eq(u, upstream)) {
            return false;
        }
        let kept = members
            .iter()
            .filter(|u| !Arc::ptr_eq(u, upstream))
            .cloned()
            .collect();
        self.members.store(Arc::new(kept));
        upstream.leave();
        true
    }

    /// The next upstream in rotation among those routable, under their cap
    /// and not in `tried`: the turn counter picks among the candidates, so
    /// when one upstream is out the others share its load evenly. A
    /// slow-starting upstream keeps its turn with a probability equal to
    /// its weight, and otherwise passes it to the next candidate (it gets
    /// it back when every other candidate is full).
    ///
    /// When no upstream is up at all, the ones out of rotation (draining
    /// ones aside) are tried anyway, like nginx and Envoy's panic mode: a
    /// lone app server ejected for one failed connection, or a health
    /// check that fails everywhere at once (a wrong `--health-path`, a
    /// shared dependency), still gets the requests it can answer instead
    /// of a 503 for every one until the checks bring it back.
    pub fn pick(&self, tried: &[u64]) -> Pick {
        let members = self.members.load();
        let panic = !members.iter().any(|u| u.is_routable());
        let candidates = || {
            members.iter().filter(move |u| {
                (u.is_routable() || panic && !u.is_draining()) && !tried.contains(&u.id)
            })
        };
        let count = candidates().count();
        if count == 0 {
            return Pick::Nothing;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        // First pass: slow-starting upstreams keep their turn by chance;
        // second pass (all passed or full): any upstream with room.
        for thin in [true, false] {
            for offset in 0..count {
                let Some(upstream) = candidates().nth((turn + offset) % count) else {
                    break;
                };
                if thin {
                    let weight = upstream.weight();
                    if weight < 1.0 && fastrand::f64() >= weight {
                        continue;
                    }
                }
                if let Some(slot) = upstream.try_start(self.max_conns) {
                    if panic {
                        metrics::counter!("sessiond_balance_panic_picks_total").increment(1);
                    }
                    return Pick::Chosen(slot);
                }
            }
        }
        Pick::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(count: u16, max_conns: Option<u64>) -> Pool {
        let urls: Vec<UpstreamUrl> = (1..=count)
            .map(|port| UpstreamUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap())
            .collect();
        Pool::new(&urls, Duration::from_secs(3600), max_conns)
    }

    fn port(pick: Pick) -> Option<u16> {
        match pick {
            Pick::Chosen(slot) => slot.upstream().url.authority.port_u16(),
            Pick::Full | Pick::Nothing => None,
        }
    }

    /// A drain that ends as the upstream is taken back leaves it a member
    /// (the API answered that it was added).
    #[test]
    fn an_upstream_taken_back_is_not_removed_by_its_drains_end() {
        let pool = pool(2, None);
        let upstream = pool.upstreams()[1].clone();
        upstream.set_draining(true);
        assert!(matches!(pool.add(&upstream.url), Joined::TakenBack));
        assert!(!pool.remove_drained(&upstream));
        assert!(!upstream.has_left());
        assert!(matches!(pool.add(&upstream.url), Joined::Present));
        upstream.set_draining(true);
        assert!(pool.remove_drained(&upstream));
        assert!(upstream.has_left());
        assert!(pool.find(&upstream.url).is_none());
        assert!(matches!(pool.add(&upstream.url), Joined::New(_)));
    }

    #[test]
    fn rotation_is_exact_and_skips_down_upstreams() {
        let pool = pool(3, None);
        let picks: Vec<_> = (0..6).filter_map(|_| port(pool.pick(&[]))).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        pool.upstreams()[1].eject("down");
        let picks: Vec<_> = (0..6).filter_map(|_| port(pool.pick(&[]))).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 3);
        assert_eq!(picks.iter().filter(|&&p| p == 3).count(), 3);
        let tried: Vec<_> = [0, 2].iter().map(|&i| pool.upstreams()[i].id).collect();
        assert!(matches!(pool.pick(&tried), Pick::Nothing));
    }

    #[test]
    fn with_none_up_the_ejected_ones_are_tried_and_draining_ones_are_not() {
        let pool = pool(3, None);
        for upstream in pool.upstreams().iter() {
            upstream.eject("down");
        }
        pool.upstreams()[2].set_draining(true);
        let picks: Vec<_> = (0..4).filter_map(|_| port(pool.pick(&[]))).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 2, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&p| p == 2).count(), 2, "{picks:?}");
        let tried: Vec<_> = [0, 1].iter().map(|&i| pool.upstreams()[i].id).collect();
        assert!(matches!(pool.pick(&tried), Pick::Nothing));
    }

    #[test]
    fn an_added_upstream_starts_with_almost_no_share_and_a_cap_fills() {
        let pool = pool(2, Some(1));
        let added = UpstreamUrl::parse("http://127.0.0.1:9").unwrap();
        assert!(matches!(pool.add(&added), Joined::New(_)));
        assert!(
            matches!(pool.add(&added), Joined::Present),
            "a member is not added twice"
        );
        let mut slots = Vec::new();
        for _ in 0..2 {
            match pool.pick(&[]) {
                Pick::Chosen(slot) => slots.push(slot),
                other => panic!("expected a slot, got {other:?}"),
            }
        }
        let ports: Vec<_> = slots
            .iter()
            .filter_map(|s| s.upstream().url.authority.port_u16())
            .collect();
        assert!(!ports.contains(&9), "{ports:?}");
        // Both full upstreams are at their cap: only the ramping one is left.
        let Pick::Chosen(last) = pool.pick(&[]) else {
            panic!("the ramping upstream had room");
        };
        assert_eq!(last.upstream().url, added);
        assert!(matches!(pool.pick(&[]), Pick::Full));
        drop(last);
        let newcomer = pool.find(&added).unwrap();
        newcomer.set_draining(true);
        assert!(pool.remove_drained(&newcomer));
        assert!(newcomer.closed.is_cancelled());
        assert_eq!(pool.upstreams().len(), 2);
    }
}
