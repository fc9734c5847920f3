//! The memory budget: bytes are reserved before a write lands and released
//! when a session shrinks or leaves, so the total never passes the limit.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the bytes sessions use against an optional limit.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicU64,
    limit: Option<u64>,
}

impl MemoryBudget {
    /// A budget with `limit` bytes (`None`: unbounded, only counted).
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Takes `bytes` from the budget if they fit; returns whether they did.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let Some(limit) = self.limit else {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return true;
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes in use now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit() {
        let budget = MemoryBudget::new(Some(100));
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41));
        assert!(budget.try_reserve(40));
        assert_eq!(budget.used(), 100);
        budget.release(30);
        assert!(budget.try_reserve(30));
        assert!(!budget.try_reserve(1));
    }

    #[test]
    fn unbounded_budget_only_counts() {
        let budget = MemoryBudget::new(None);
        assert!(budget.try_reserve(u64::MAX / 2));
        assert_eq!(budget.used(), u64::MAX / 2);
    }
}
