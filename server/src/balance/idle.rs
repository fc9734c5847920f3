//! A worker's idle upstream connections, by pool key: the newest goes out
//! first (it is the least likely to have been closed by the upstream), and
//! one idle past the idle timeout or found unusable is dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Pool key: the client connection's own key (0: shared) and the upstream.
pub type Key = (u64, u64);

/// Idle connections of one kind.
#[derive(Debug)]
pub struct Idle<T> {
    lists: HashMap<Key, Vec<(T, Instant)>>,
}

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Self {
            lists: HashMap::new(),
        }
    }
}

impl<T> Idle<T> {
    /// The newest connection under `key` idle less than `max_age` that
    /// `usable` accepts; older or unusable ones met on the way are dropped.
    pub fn take(
        &mut self,
        key: Key,
        max_age: Duration,
        mut usable: impl FnMut(&mut T) -> bool,
    ) -> Option<T> {
        let list = self.lists.get_mut(&key)?;
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() < max_age && usable(&mut conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` under `key`, idle from now.
    pub fn put(&mut self, key: Key, conn: T) {
        self.lists
            .entry(key)
            .or_default()
            .push((conn, Instant::now()));
    }

    /// Drops every connection idle `max_age` or longer, or not `usable`.
    pub fn sweep(&mut self, max_age: Duration, mut usable: impl FnMut(&mut T) -> bool) {
        for list in self.lists.values_mut() {
            list.retain_mut(|(conn, since)| since.elapsed() < max_age && usable(conn));
        }
        self.lists.retain(|_, list| !list.is_empty());
    }

    /// Drops every connection of the client connection keyed `owner`.
    pub fn forget(&mut self, owner: u64) {
        self.lists.retain(|(key, _), _| *key != owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_usable_young_connection_goes_out_first() {
        let mut idle = Idle::default();
        for conn in 1..=3 {
            idle.put((0, 7), conn);
        }
        idle.put((5, 7), 9);
        assert_eq!(
            idle.take((0, 7), Duration::from_secs(60), |_| true),
            Some(3)
        );
        // 2 is unusable and dropped on the way to 1.
        assert_eq!(
            idle.take((0, 7), Duration::from_secs(60), |c| *c != 2),
            Some(1)
        );
        assert_eq!(idle.take((0, 7), Duration::from_secs(60), |_| true), None);
        idle.forget(5);
        assert_eq!(idle.take((5, 7), Duration::from_secs(60), |_| true), None);
        idle.put((0, 1), 4);
        idle.sweep(Duration::ZERO, |_| true);
        assert!(idle.lists.is_empty());
    }
}
