//! The memory copy of a session whose change is on its way to Redis: the
//! change may run there even if this node never learns its outcome (the
//! answer was lost, or the caller stopped waiting: an HTTP client that
//! hangs up drops its request's future, and the binary protocol's
//! connection drops its in-flight requests when the client leaves), so the
//! copy from before the change must not be served once it is in doubt.

use sessiond_proto::SessionId;

use crate::store::Store;

/// Drops the memory copy of a session when dropped unsettled.
#[must_use = "dropping it at once drops the copy"]
pub(super) struct CopyInDoubt<'a> {
    store: &'a Store,
    id: SessionId,
    settled: bool,
}

impl<'a> CopyInDoubt<'a> {
    /// The copy of `id` in `store`, in doubt from now on.
    pub(super) fn new(store: &'a Store, id: &SessionId) -> Self {
        Self {
            store,
            id: *id,
            settled: false,
        }
    }

    /// The change's outcome is known: the caller updates the copy.
    pub(super) fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for CopyInDoubt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.store.delete(&self.id);
        }
    }
}
