//! The bounded wait for a free upstream slot (`--max-conns`, `--queue`,
//! `--queue-timeout`): requests that find every upstream at its cap wait
//! here, at most `--queue` of them, each at most `--queue-timeout`.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Requests waiting for a slot, and the signal that one was freed.
#[derive(Debug, Default)]
pub struct Capacity {
    queued: AtomicUsize,
    freed: Notify,
}

impl Capacity {
    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// A slot was freed: wakes one waiter, if any waits.
    pub fn freed(&self) {
        if self.queued() > 0 {
            self.freed.notify_one();
        }
    }

    /// An upstream joined or came back: wakes every waiter (each looks for
    /// room again; those that find none wait on).
    pub fn room_made(&self) {
        if self.queued() > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Joins the queue unless `max` requests wait already; the place is
    /// given up when the returned guard drops.
    pub fn join(&self, max: usize) -> Option<QueuePlace<'_>> {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()?;
        Some(QueuePlace(self))
    }
}

/// A request's place in the queue.
#[derive(Debug)]
pub struct QueuePlace<'a>(&'a Capacity);

impl QueuePlace<'_> {
    /// Resolves when a slot may have been freed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.freed.notified()
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
