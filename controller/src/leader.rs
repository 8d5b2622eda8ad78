//! Which controller decides. With the file store there is one controller and it always
//! leads ([`Leadership::sole`]). With the etcd store several controllers share one
//! store and exactly one leads: it holds an etcd lease and the leader key under it
//! (`store::etcd::campaign`). Two things keep a deposed controller harmless:
//!
//! - the **fence**: the create revision of our leader key, compared by every write
//!   transaction, so a write after another controller took the key is refused by etcd
//!   itself (the store then clears the fence);
//! - the **local lease deadline**: the controller answers and decides only while its
//!   own clock says the lease cannot have run out (the time a keep-alive was *sent* plus
//!   the TTL, less a margin). A controller frozen past its lease (SIGSTOP, a VM pause)
//!   finds the deadline behind it when it thaws and refuses before it answers anything,
//!   so it cannot hand out a stale assignment from memory either.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// What this controller knows about who leads.
#[derive(Debug, Default)]
pub struct Leadership {
    /// The create revision of our leader key while we lead; 0 when we do not.
    fence: AtomicI64,
    /// Monotonic ms until which our lease surely holds (u64::MAX for the sole leader).
    valid_until_ms: AtomicU64,
    /// Base URL of the controller that leads, as its leader key says (ours included).
    leader_url: Mutex<Option<String>>,
    /// Whether several controllers share the store (etcd).
    shared_store: bool,
}

impl Leadership {
    /// The one controller of a file store: it always leads.
    pub fn sole() -> Self {
        Leadership {
            fence: AtomicI64::new(1),
            valid_until_ms: AtomicU64::new(u64::MAX),
            leader_url: Mutex::new(None),
            shared_store: false,
        }
    }

    /// A controller of a shared store: a follower until it wins the leader key.
    pub fn follower() -> Self {
        Leadership {
            shared_store: true,
            ..Default::default()
        }
    }

    /// Whether this controller may decide and answer now.
    pub fn is_leader(&self, now_ms: u64) -> bool {
        self.fence() != 0 && now_ms < self.valid_until_ms.load(Ordering::SeqCst)
    }

    /// The fence writes compare (0: not leading, every write is refused).
    pub fn fence(&self) -> i64 {
        self.fence.load(Ordering::SeqCst)
    }

    /// Won the leader key at `revision`; answers start once [`Leadership::extend`]
    /// gives the lease a deadline.
    pub fn won(&self, revision: i64) {
        self.fence.store(revision, Ordering::SeqCst);
    }

    /// The lease holds until `until_ms` (monotonic).
    pub fn extend(&self, until_ms: u64) {
        self.valid_until_ms.store(until_ms, Ordering::SeqCst);
    }

    /// Lost the leader key (a refused write, an expired lease, etcd unreachable past
    /// the deadline): stop deciding at once.
    pub fn step_down(&self) {
        self.fence.store(0, Ordering::SeqCst);
        self.valid_until_ms.store(0, Ordering::SeqCst);
    }

    /// A write at `fence` was refused: another controller leads. Clears the fence only if
    /// it is still the one refused (a later win keeps its own).
    pub fn deposed(&self, fence: i64) {
        if self
            .fence
            .compare_exchange(fence, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.valid_until_ms.store(0, Ordering::SeqCst);
        }
    }

    pub fn set_leader_url(&self, url: Option<String>) {
        *self.leader_url.lock().unwrap_or_else(|e| e.into_inner()) = url;
    }

    pub fn leader_url(&self) -> Option<String> {
        self.leader_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn shared_store(&self) -> bool {
        self.shared_store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_answers_only_inside_its_lease_and_a_refusal_deposes_only_its_own_term() {
        let l = Leadership::follower();
        assert!(!l.is_leader(0));
        l.won(42);
        assert!(!l.is_leader(0), "no deadline yet: not answering");
        l.extend(5_000);
        assert!(l.is_leader(4_999));
        assert!(!l.is_leader(5_000), "a thawed leader past its deadline");
        l.deposed(41);
        assert_eq!(l.fence(), 42, "a refusal of an older term changes nothing");
        l.deposed(42);
        assert!(!l.is_leader(0));
        assert_eq!(l.fence(), 0);
        let sole = Leadership::sole();
        assert!(sole.is_leader(u64::MAX - 1));
    }
}
