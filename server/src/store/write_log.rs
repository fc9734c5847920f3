//! Which writes produced a session's latest versions, so that a write sent
//! again after its answer was lost is applied at most once.
//!
//! Every write that raises a session's version records its tag (0 for a
//! write without one) in the same atomic step. The log keeps the tags of
//! the [`WRITE_LOG_LEN`] latest versions, newest first, and the time a tag
//! last fell out of it (the horizon). A re-sent write is then judged:
//! - its tag is in the log: it was applied, at the version the log says;
//! - a conditional write (expected version `e`) could only have produced
//!   version `e + 1`: if the session is still at `e` it was not applied, if
//!   `e + 1` is in the log under another tag it was not applied (a true
//!   conflict), and if `e + 1` fell out of the log nobody can tell;
//! - an unconditional write was not applied if no tag fell out of the log
//!   since its first attempt was sent (less the allowed clock skew between
//!   nodes), otherwise nobody can tell.
//!
//! A first attempt can be late too: held up in a stalled node while the
//! client re-sent it to another, which applied it, and later writes pushed
//! its tag out of the log. The log therefore also keeps the fence: the
//! latest first-send time of any re-sent write applied to the session. An
//! unconditional first attempt sent no later than the fence, to a session
//! whose log lost a tag since then, may be such a late copy: nobody can
//! tell. (A conditional one is stopped by its expected version.)
//!
//! The Redis scripts keep the same log in the session's hash (fields `w`,
//! `h` and `f`, see `backend::redis::scripts`) and judge by the same rules.

use sessiond_proto::wire::WriteTag;

/// How many of a session's latest versions the log remembers by tag.
pub const WRITE_LOG_LEN: usize = 4;

/// Clock difference between nodes that the horizon check allows for.
pub const CLOCK_SKEW_MS: u64 = 1_000;

/// The tags of a session's latest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteLog {
    /// `tags[i]` produced version `v - i`, where `v` is the session's
    /// version (0: a write without a tag).
    tags: [u64; WRITE_LOG_LEN],
    /// When a tag last fell out of the log (ms since the Unix epoch; 0:
    /// none ever has).
    horizon_ms: u64,
    /// The latest first-send time of a re-sent write applied to the
    /// session (ms since the Unix epoch; 0: none).
    fence_ms: u64,
}

/// What to do with a write, given the session's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not applied before: apply it (the version check still decides).
    Apply,
    /// Already applied; it produced this version.
    Replay {
        /// The version the first application produced.
        version: u64,
    },
    /// Re-sent, and the log no longer reaches back far enough to tell
    /// whether the first attempt was applied.
    Indeterminate,
    /// The tag is the one that created the session (only a create makes
    /// version 1): a change of the session sent with the create's key is
    /// another write reusing it, never a repeat.
    Reused,
}

impl WriteLog {
    /// A log from its parts (as the Redis hash stores them).
    pub fn from_parts(tags: [u64; WRITE_LOG_LEN], horizon_ms: u64, fence_ms: u64) -> Self {
        Self {
            tags,
            horizon_ms,
            fence_ms,
        }
    }

    /// The tags, newest first.
    pub fn tags(&self) -> &[u64; WRITE_LOG_LEN] {
        &self.tags
    }

    /// When a tag last fell out of the log (0: never).
    pub fn horizon_ms(&self) -> u64 {
        self.horizon_ms
    }

    /// The latest first-send time of a re-sent write applied (0: none).
    pub fn fence_ms(&self) -> u64 {
        self.fence_ms
    }

    /// The log of a session created by the write `tag` (version 1).
    pub fn created(tag: Option<u64>) -> Self {
        let mut log = Self::default();
        log.tags[0] = tag.unwrap_or(0);
        log
    }

    /// Records that `write` produced `new_version` at `now_ms`.
    pub fn record(&mut self, write: Option<WriteTag>, new_version: u64, now_ms: u64) {
        if new_version > WRITE_LOG_LEN as u64 {
            self.horizon_ms = now_ms;
        }
        self.tags.rotate_right(1);
        self.tags[0] = write.map_or(0, |write| write.id);
        if let Some(write) = write.filter(|write| write.id != 0)
            && write.resent_after_ms.is_some()
        {
            self.fence_ms = self.fence_ms.max(first_sent(write, now_ms));
        }
    }

    /// The version the write `tag` produced, if the log still has it.
    /// `version` is the session's current version.
    pub fn find(&self, tag: u64, version: u64) -> Option<u64> {
        let known = (version as usize).min(WRITE_LOG_LEN);
        self.tags[..known]
            .iter()
            .position(|&recorded| recorded == tag)
            .map(|age| version - age as u64)
    }

    /// Judges `write` against a session at `version` whose log this is.
    /// `expected` is the caller's expected version, if the write is
    /// conditional.
    pub fn judge(
        &self,
        version: u64,
        write: Option<WriteTag>,
        expected: Option<u64>,
        now_ms: u64,
    ) -> Verdict {
        let Some(write) = write.filter(|write| write.id != 0) else {
            return Verdict::Apply;
        };
        match self.find(write.id, version) {
            Some(1) => return Verdict::Reused,
            Some(produced) => return Verdict::Replay { version: produced },
            None => {}
        }
        let Some(after_ms) = write.resent_after_ms else {
            return self.judge_first_attempt(write, expected, now_ms);
        };
        let covered = match expected {
            // It could only have produced `expected + 1`.
            Some(expected) => version <= expected || version - expected - 1 < WRITE_LOG_LEN as u64,
            // The client's stamp bounds it too: a re-send held up in a
            // stalled node reaches the session long after it was sent,
            // and `after_ms` alone would date the write that much later.
            None => {
                let first_sent = first_sent(write, now_ms).min(now_ms.saturating_sub(after_ms));
                self.horizon_ms < first_sent.saturating_sub(CLOCK_SKEW_MS)
            }
        };
        if covered {
            Verdict::Apply
        } else {
            Verdict::Indeterminate
        }
    }

    /// A first attempt whose tag the log does not hold: applied, unless it
    /// is unconditional, was sent no later than the fence and a tag fell out
    /// of the log since (it may be the late copy of a re-sent write).
    fn judge_first_attempt(&self, write: WriteTag, expected: Option<u64>, now_ms: u64) -> Verdict {
        let sent = first_sent(write, now_ms);
        let maybe_late_copy = expected.is_none()
            && self.fence_ms >= sent
            && self.horizon_ms.saturating_add(CLOCK_SKEW_MS) >= sent;
        if maybe_late_copy {
            Verdict::Indeterminate
        } else {
            Verdict::Apply
        }
    }
}

/// When `write` was first sent: the client's stamp, unless it has none or
/// it is further ahead of `now_ms` than the allowed clock skew (a client
/// clock that far off must not fence the session's writes into the
/// future); then `resent_after_ms` before `now_ms` (now, for a first
/// attempt).
fn first_sent(write: WriteTag, now_ms: u64) -> u64 {
    let stamp = write.sent_at_ms;
    if stamp == 0 || stamp > now_ms.saturating_add(CLOCK_SKEW_MS) {
        now_ms.saturating_sub(write.resent_after_ms.unwrap_or(0))
    } else {
        stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(id: u64) -> Option<WriteTag> {
        sent_at(id, 0)
    }

    /// A first attempt the client says it sent at `sent_at_ms`.
    fn sent_at(id: u64, sent_at_ms: u64) -> Option<WriteTag> {
        Some(WriteTag {
            id,
            resent_after_ms: None,
            sent_at_ms,
        })
    }

    fn resent(id: u64, after_ms: u64) -> Option<WriteTag> {
        resent_stamped(id, after_ms, 0)
    }

    /// A re-sent write whose first attempt the client stamped `sent_at_ms`.
    fn resent_stamped(id: u64, after_ms: u64, sent_at_ms: u64) -> Option<WriteTag> {
        Some(WriteTag {
            id,
            resent_after_ms: Some(after_ms),
            sent_at_ms,
        })
    }

    /// A log after a create tagged 1 and writes tagged 2..=last at 1 s steps.
    fn log_through(last: u64) -> WriteLog {
        let mut log = WriteLog::created(Some(1));
        for tag in 2..=last {
            log.record(first(tag), tag, tag * 1000);
        }
        log
    }

    #[test]
    fn a_recorded_tag_replays_the_version_it_produced() {
        let log = log_through(3);
        assert_eq!(
            log.judge(3, first(3), None, 5_000),
            Verdict::Replay { version: 3 }
        );
        assert_eq!(
            log.judge(3, resent(2, 10), Some(1), 5_000),
            Verdict::Replay { version: 2 }
        );
        assert_eq!(log.judge(3, first(9), None, 5_000), Verdict::Apply);
    }

    #[test]
    fn the_creates_tag_on_a_change_of_its_session_is_reused() {
        let log = log_through(3);
        // Version 1 is only ever a create's.
        assert_eq!(log.judge(3, resent(1, 10), None, 5_000), Verdict::Reused);
        assert_eq!(log.judge(3, first(1), Some(3), 5_000), Verdict::Reused);
    }

    #[test]
    fn tags_fall_out_after_the_log_length_and_move_the_horizon() {
        let log = log_through(6);
        assert_eq!(log.find(2, 6), None);
        assert_eq!(log.find(3, 6), Some(3));
        assert_eq!(log.horizon_ms(), 6_000);
        assert_eq!(log_through(4).horizon_ms(), 0);
    }

    #[test]
    fn a_conditional_resend_is_judged_by_the_version_it_could_produce() {
        let log = log_through(6);
        // Still at the expected version: not applied.
        assert_eq!(log.judge(6, resent(99, 10), Some(6), 7_000), Verdict::Apply);
        // Version 4 (= 3 + 1) is in the log under another tag: a true conflict.
        assert_eq!(log.judge(6, resent(99, 10), Some(3), 7_000), Verdict::Apply);
        // Version 2 fell out of the log: nobody can tell.
        assert_eq!(
            log.judge(6, resent(99, 10), Some(1), 7_000),
            Verdict::Indeterminate
        );
        // A first attempt is never indeterminate.
        assert_eq!(log.judge(6, first(99), Some(1), 7_000), Verdict::Apply);
    }

    #[test]
    fn an_unconditional_resend_is_judged_by_the_horizon() {
        let log = log_through(6);
        // First sent long after the last tag fell out (6 s): not applied.
        assert_eq!(log.judge(6, resent(99, 500), None, 10_000), Verdict::Apply);
        // First sent before it (allowing for clock skew): unknown.
        assert_eq!(
            log.judge(6, resent(99, 3_500), None, 10_000),
            Verdict::Indeterminate
        );
        // A session that never dropped a tag covers every resend.
        assert_eq!(
            log_through(3).judge(3, resent(99, 60_000), None, 70_000),
            Verdict::Apply
        );
    }

    /// A re-send that reaches the session late (held up in a stalled node)
    /// is dated by the client's stamp of its first attempt, not by how
    /// long after that attempt it was re-sent.
    #[test]
    fn a_late_resend_is_judged_by_its_first_attempts_stamp() {
        let log = log_through(6);
        // Re-sent 300 ms after a first attempt at 2 s, read at 10 s.
        assert_eq!(
            log.judge(6, resent_stamped(99, 300, 2_000), None, 10_000),
            Verdict::Indeterminate
        );
        // The same re-send, its first attempt after the horizon.
        assert_eq!(
            log.judge(6, resent_stamped(99, 300, 8_000), None, 10_000),
            Verdict::Apply
        );
    }

    /// The late first attempt of a write re-sent and applied elsewhere,
    /// after later writes pushed its tag out, is not applied again.
    #[test]
    fn a_late_first_attempt_of_a_resent_write_is_indeterminate() {
        let mut log = WriteLog::created(Some(1));
        // Write 50, first sent at 10 s by the client's clock, re-sent and
        // applied at 10.4 s; writes 51..=54 follow, one a second.
        log.record(resent_stamped(50, 400, 10_000), 2, 10_400);
        for (version, tag) in (3..=6).zip(51..) {
            log.record(
                sent_at(tag, version * 1000 + 8_000),
                version,
                version * 1000 + 8_000,
            );
        }
        assert_eq!(log.fence_ms(), 10_000);
        assert_eq!(log.find(50, 6), None);
        // Its first attempt arrives at last.
        assert_eq!(
            log.judge(6, sent_at(50, 10_000), None, 15_000),
            Verdict::Indeterminate
        );
        // A conditional one would be stopped by its version instead.
        assert_eq!(
            log.judge(6, sent_at(50, 10_000), Some(1), 15_000),
            Verdict::Apply
        );
        // Writes sent after the fence are applied as usual.
        assert_eq!(
            log.judge(6, sent_at(60, 10_001), None, 15_000),
            Verdict::Apply
        );
        assert_eq!(log.judge(6, first(61), None, 15_000), Verdict::Apply);
    }

    /// A stamp from a clock far ahead (or absurd) does not fence the
    /// session into the future: the node's own time stands in for it.
    #[test]
    fn a_stamp_from_the_future_is_not_trusted() {
        let mut log = WriteLog::created(Some(1));
        log.record(resent_stamped(2, 300, u64::MAX), 2, 5_300);
        assert_eq!(log.fence_ms(), 5_000);
        let later = log_through(6).judge(6, sent_at(9, u64::MAX), None, 20_000);
        assert_eq!(later, Verdict::Apply);
    }

    /// Without any re-sent write the fence stays at 0: a busy session's
    /// first attempts are always applied.
    #[test]
    fn first_attempts_are_applied_while_no_resend_was() {
        let log = log_through(20);
        assert_eq!(log.fence_ms(), 0);
        assert_eq!(
            log.judge(20, sent_at(99, 19_000), None, 20_000),
            Verdict::Apply
        );
        assert_eq!(log.judge(20, sent_at(99, 1), None, 20_000), Verdict::Apply);
    }

    /// A fence with no tag lost since a write was sent stops nothing: its
    /// copy would still be in the log.
    #[test]
    fn the_fence_needs_a_lost_tag_since_the_send() {
        let mut log = WriteLog::created(Some(1));
        log.record(resent_stamped(2, 300, 5_000), 2, 5_300);
        assert_eq!(log.judge(2, sent_at(3, 4_900), None, 5_400), Verdict::Apply);
    }

    #[test]
    fn untagged_writes_take_a_place_in_the_log() {
        let mut log = WriteLog::created(None);
        log.record(first(7), 2, 1);
        log.record(None, 3, 2);
        assert_eq!(log.find(7, 3), Some(2));
        assert_eq!(log.find(0, 3), Some(3));
        assert_eq!(log.judge(3, resent(0, 1), None, 5), Verdict::Apply);
    }
}
