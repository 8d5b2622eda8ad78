//! The primary's lease, kept on the agent's side (DESIGN §5 rule 2).
//!
//! Two edges make it safe against the controller's count:
//! - it is anchored at the *send* time of the report the controller answered, never at
//!   the answer's arrival: the controller counts from when it received the report, which
//!   is later, so the agent's lease always ends first;
//! - only an answer of the current term renews it: an answer the agent refuses (an older
//!   term, from a controller restored from an older copy) says nothing about its role.
//!
//! And the fence does not wait for the loop: [`Watchdog`] is a task of its own with the
//! lease's deadline, which stops Postgres when the deadline passes even while the loop is
//! stuck in a step (`pg_promote` may wait 60 s; a `CHECKPOINT` on a slow disk longer).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// When an answer renews the lease: at the time its request was sent, and only when it
/// is of the current term (`None`: the lease is not renewed).
pub fn renewal<T: Copy>(sent: T, answer_term: u64, max_term: u64) -> Option<T> {
    (answer_term >= max_term).then_some(sent)
}

/// Whether a reply of the standby streaming through WAL sender `pid` renews the lease.
///
/// Only a connection that already streamed when the last answered report was sent
/// does. A standby that reconnects while this primary is cut from the controller does
/// not: the controller may have seen that standby report, a moment earlier, that it no
/// longer streamed from here, counted this lease as run out on that word and promoted
/// another node; a stream it cannot have seen must not keep this primary writable.
/// Before the first answer since the agent started (a reboot with the controller
/// down), every stream counts, so that a primary restarted during a controller outage
/// keeps serving through its standbys (DESIGN §5 rule 4).
pub fn standby_renews(
    pid: i32,
    contacted_since_start: bool,
    senders_at_last_answer: &std::collections::HashSet<i32>,
) -> bool {
    !contacted_since_start || senders_at_last_answer.contains(&pid)
}

/// How often the watchdog looks at a deadline that is not near (it also wakes at the
/// deadline itself).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// A task that runs `fence` once when the armed deadline passes without being extended.
pub struct Watchdog {
    deadline: Arc<Mutex<Option<Instant>>>,
    fired: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    pub fn spawn<F, Fut>(fence: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let deadline: Arc<Mutex<Option<Instant>>> = Arc::default();
        let fired: Arc<AtomicBool> = Arc::default();
        let (d, f) = (deadline.clone(), fired.clone());
        let task = tokio::spawn(async move {
            loop {
                let now = Instant::now();
                let armed = *d.lock().unwrap_or_else(|e| e.into_inner());
                match armed {
                    Some(at) if now >= at => {
                        *d.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        if !f.swap(true, Ordering::SeqCst) {
                            tracing::warn!(
                                "lease expired while the agent loop was busy: fencing (stopping Postgres) from the watchdog"
                            );
                            fence().await;
                        }
                    }
                    Some(at) => tokio::time::sleep_until(at.min(now + IDLE_POLL)).await,
                    None => tokio::time::sleep(IDLE_POLL).await,
                }
            }
        });
        Watchdog {
            deadline,
            fired,
            task,
        }
    }

    /// Sets (or clears) the deadline; called by the loop at every tick with what the lease
    /// allows now.
    pub fn arm(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }

    /// Whether the watchdog fenced since the last call (the loop then records the fence).
    pub fn take_fired(&self) -> bool {
        self.fired.swap(false, Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn only_a_current_term_answer_renews_the_lease_from_its_send_time() {
        // (sent, answer term, highest term seen) -> renewed at
        for (sent, term, max, want) in [
            (100, 3, 3, Some(100)),
            (100, 4, 3, Some(100)),
            (100, 2, 3, None),
            (0, 1, 1, Some(0)),
        ] {
            assert_eq!(renewal(sent, term, max), want, "{sent} {term} {max}");
        }
    }

    #[test]
    fn only_a_stream_the_controller_could_have_seen_renews_the_lease() {
        let at_answer: std::collections::HashSet<i32> = [101, 102].into();
        assert!(standby_renews(101, true, &at_answer));
        assert!(
            !standby_renews(103, true, &at_answer),
            "a reconnection after the last answer"
        );
        assert!(
            standby_renews(103, false, &at_answer),
            "restarted with the controller down: every stream counts"
        );
    }

    fn counting() -> (Arc<AtomicU32>, Watchdog) {
        let n = Arc::new(AtomicU32::new(0));
        let c = n.clone();
        let w = Watchdog::spawn(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        (n, w)
    }

    async fn advance(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn fences_once_when_the_loop_stops_extending_the_deadline() {
        let (n, w) = counting();
        // A loop that renews every second never fences.
        for _ in 0..10 {
            w.arm(Some(Instant::now() + Duration::from_millis(3000)));
            advance(1000).await;
        }
        assert_eq!(n.load(Ordering::SeqCst), 0);
        // The loop is stuck in a step (armed 1 s ago): the deadline passes 2 s from now,
        // the watchdog fences once.
        advance(1900).await;
        assert_eq!(n.load(Ordering::SeqCst), 0, "fenced before the deadline");
        advance(200).await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        advance(5000).await;
        assert_eq!(n.load(Ordering::SeqCst), 1, "fenced twice");
        assert!(w.take_fired());
        assert!(!w.take_fired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cleared_deadline_never_fences() {
        let (n, w) = counting();
        w.arm(Some(Instant::now() + Duration::from_millis(500)));
        advance(100).await;
        w.arm(None);
        advance(10_000).await;
        assert_eq!(n.load(Ordering::SeqCst), 0);
        assert!(!w.take_fired());
    }
}
