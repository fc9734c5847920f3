//! The cap on client connections open at once (`--max-client-conns`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Client connections open now, and the most there may be.
#[derive(Debug)]
pub struct ClientSlots {
    open: AtomicUsize,
    max: usize,
}

impl ClientSlots {
    /// A cap of `max` connections, none open.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot for one more connection, unless `max` are open.
    pub fn acquire(self: &Arc<Self>) -> Option<ClientSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        Some(ClientSlot(self.clone()))
    }
}

/// One client connection's place under the cap, given back when dropped:
/// held by whatever still serves the connection (its requests, or the
/// tunnel an upgrade made of it).
#[derive(Debug)]
pub struct ClientSlot(Arc<ClientSlots>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_the_cap_and_come_back_when_dropped() {
        let slots = ClientSlots::new(2);
        let first = slots.acquire().expect("a first slot");
        let second = slots.acquire().expect("a second slot");
        assert!(slots.acquire().is_none());
        drop(first);
        let third = slots.acquire().expect("the first slot's place");
        assert!(slots.acquire().is_none());
        drop((second, third));
        assert_eq!(slots.open.load(Ordering::Acquire), 0);
    }
}
