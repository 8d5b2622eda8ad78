//! The primary's lease, kept on the agent's side (docs/src/design.md §5 rule 2).
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
/// does (`senders_known`: the agent knows which those are, from an answer since it
/// started, or from its state file when its Postgres kept running through an agent
/// restart: [`LeaseSenders`]). A standby that reconnects while this primary is cut from the controller does
/// not: the controller may have seen that standby report, a moment earlier, that it no
/// longer streamed from here, counted this lease as run out on that word and promoted
/// another node; a stream it cannot have seen must not keep this primary writable.
/// Before the first answer since the agent started (a reboot with the controller
/// down), every stream counts, so that a primary restarted during a controller outage
/// keeps serving through its standbys (docs/src/design.md §5 rule 4).
pub fn standby_renews(
    pid: i32,
    senders_known: bool,
    senders_at_last_answer: &std::collections::HashSet<i32>,
) -> bool {
    !senders_known || senders_at_last_answer.contains(&pid)
}

/// The WAL senders of the last answered report, kept in the agent's state file with
/// the Postgres they belong to (its postmaster's pid and start time): an agent that
/// restarts while Postgres runs on (an upgrade, a crash), with the controller out of
/// reach, goes on counting only those streams. Without them every stream would count,
/// and a standby that reconnected to this old primary after the controller had
/// promoted another node (on that standby's word that it had stopped streaming) would
/// keep it writable. After a reboot the postmaster is another: the file's list is
/// not used and every stream counts (docs/src/design.md §5 rule 4).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseSenders {
    /// `<pid>:<start time>` of the postmaster (`postmaster.pid` lines 1 and 3).
    pub postmaster: String,
    pub pids: Vec<i32>,
}

/// Whether a WAL sender's `application_name` is one of the formation's standbys
/// (`pgha_standby_<id>` of a peer; of any node before the first assignment). Only those
/// renew a primary's lease: a consumer outside the formation (`pg_receivewal`, a standby
/// formation's leader) may still reach a primary the controller and its standbys have
/// written off.
pub fn is_formation_standby(application_name: &str, peers: Option<&[pgha_api::PeerNode]>) -> bool {
    match peers {
        Some(peers) => peers
            .iter()
            .any(|p| pgha_api::standby_application_name(p.node_id) == application_name),
        None => application_name.starts_with("pgha_standby_"),
    }
}

/// Recent WAL positions, each with the last moment it was still the position: what
/// dates a standby's reply.
///
/// Kept per WAL sender, of what it had *sent* (`sent_lsn`): a standby whose reply says it
/// wrote past `S`, where `S` was the sent position at time `T`, received bytes sent after
/// `T`, so it heard from this primary after `T`, and `T` is the renewal. A reply that only
/// repeats an old position (the standby's link from here is cut, its status replies
/// still arrive) renews nothing. The sent position, not the insert one, so that a standby
/// slow to write or replay still renews as long as it receives. The standby dates its
/// contacts by when it last *received* from us (`ReceiverWatch`), so the controller's
/// count of this lease never starts before ours. An idle primary writes a small
/// heartbeat transaction so that there is WAL to prove (the agent's `heartbeat`; it is
/// timed by the insert position, kept in a `WalMarks` too).
#[derive(Debug, Default)]
pub struct WalMarks {
    /// Increasing positions, each with the latest time it was seen as the insert position.
    marks: std::collections::VecDeque<(std::time::Instant, pgha_api::Lsn)>,
}

/// Marks older than this cannot renew a lease of any sensible length.
const MARKS_KEPT: Duration = Duration::from_secs(30);

impl WalMarks {
    pub fn note(&mut self, at: std::time::Instant, insert: pgha_api::Lsn) {
        match self.marks.back_mut() {
            Some((t, l)) if *l == insert => *t = at,
            // A lower position: a new WAL history (this node was a standby since).
            Some((_, l)) if *l > insert => {
                self.marks.clear();
                self.marks.push_back((at, insert));
            }
            _ => self.marks.push_back((at, insert)),
        }
        while self.marks.len() > 1
            && self
                .marks
                .front()
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) > MARKS_KEPT)
        {
            self.marks.pop_front();
        }
    }

    /// Forgets every mark (the node is no longer a primary).
    pub fn clear(&mut self) {
        self.marks.clear();
    }

    /// When a standby that flushed up to `flush` last certainly heard from us.
    pub fn renewal(&self, flush: pgha_api::Lsn) -> Option<std::time::Instant> {
        self.marks
            .iter()
            .rev()
            .find(|(_, l)| *l < flush)
            .map(|(t, _)| *t)
    }

    /// When the insert position last moved (the primary's own WAL, or a heartbeat).
    pub fn last_moved(&self) -> Option<std::time::Instant> {
        let n = self.marks.len();
        (n >= 2).then(|| self.marks[n - 2].0)
    }
}

/// A standby's side of the same count: when its WAL receiver last *received WAL* from
/// each upstream, which is what the controller waits out before it counts the old
/// primary's lease as run out. WAL, not any message: a primary whose postmaster and
/// agent hang while its WAL sender runs on still sends keepalives (they move
/// `last_msg_receipt_time`), but no heartbeat, and it cannot be reached: dated by
/// messages, its standby would look served forever and the primary would never be
/// failed over. A live primary's agent writes a heartbeat every half second when idle,
/// so a served standby sees WAL at least that often. The primary cannot date a renewal
/// after WAL the standby received (its renewals come from replies past a sent mark).
#[derive(Debug, Default)]
pub struct ReceiverWatch {
    /// The upstream of the last sample, what the receiver had written then, and when
    /// WAL from it last arrived.
    streaming: Option<Streaming>,
}

#[derive(Debug, Clone)]
struct Streaming {
    sender: (String, u16),
    written: pgha_api::Lsn,
    flushed: pgha_api::Lsn,
    wal_at: std::time::Instant,
}

/// One sample of `pg_stat_wal_receiver` while it streams.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverSample {
    pub sender: (String, u16),
    /// Age of `last_msg_receipt_time` (None: nothing received yet).
    pub receipt_age: Option<Duration>,
    /// `written_lsn`, read with the receipt time.
    pub written: pgha_api::Lsn,
    /// `flushed_lsn`, read with the receipt time.
    pub flushed: pgha_api::Lsn,
}

impl ReceiverWatch {
    /// The contact to record for this tick: (upstream, when last heard from), if any.
    /// `received` is `pg_last_wal_receive_lsn()` now (None: Postgres did not answer).
    pub fn contact(
        &mut self,
        now: std::time::Instant,
        sample: Option<ReceiverSample>,
        received: Option<pgha_api::Lsn>,
    ) -> Option<((String, u16), std::time::Instant)> {
        if let Some(s) = sample {
            // The last message came after the newest WAL: dating WAL by it is late,
            // never early (the controller waits longer, never less).
            let last_message = s
                .receipt_age
                .and_then(|a| now.checked_sub(a))
                .unwrap_or(now)
                .min(now);
            let wal_at = match &self.streaming {
                // Same upstream, nothing new written: only keepalives since.
                Some(prev) if prev.sender == s.sender && s.written <= prev.written => prev.wal_at,
                // New WAL since the last sample, or a new stream (its connection was
                // accepted: the upstream's postmaster was alive then).
                _ => last_message,
            };
            self.streaming = Some(Streaming {
                sender: s.sender.clone(),
                written: s.written,
                flushed: s.flushed,
                wal_at,
            });
            return Some((s.sender, wal_at));
        }
        let Streaming {
            sender, flushed, ..
        } = self.streaming.take()?;
        // The receiver stopped since the last sample. Nothing new flushed since: the
        // last sample's receipt stands. Otherwise (or unknown) it may have received up
        // to its end: now.
        if received.is_some_and(|r| r <= flushed) {
            None
        } else {
            Some((sender, now))
        }
    }
}

/// How often the watchdog looks at a deadline that is not near (it also wakes at the
/// deadline itself).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What this node knows of its lease's evidence, gathered at every tick: when a
/// formation standby last proved it received WAL written after a moment noted here
/// ([`WalMarks`], per WAL sender), which senders may renew it ([`standby_renews`]), and
/// as a standby, when its own receiver last received from each upstream
/// ([`ReceiverWatch`]). The agent reads `last_standby_seen` for its lease.
pub struct Evidence {
    /// When a formation standby last acknowledged WAL this node wrote after a moment
    /// it noted (or, after a start with the controller down, when Postgres came up).
    pub last_standby_seen: std::time::Instant,
    /// Postgres accepted connections at the previous tick.
    was_ready: bool,
    /// The primary's recent insert positions (when to write the idle heartbeat).
    pub wal_marks: WalMarks,
    /// Each WAL sender's sent positions: what a standby's reply proves.
    sent_marks: std::collections::HashMap<i32, WalMarks>,
    /// The WAL senders streaming at this tick, and those that were when the last report
    /// the controller answered was sent: only those renew the lease.
    streaming_senders: std::collections::HashSet<i32>,
    lease_senders: std::collections::HashSet<i32>,
    /// `lease_senders` is known: from an answer since the agent started, or restored.
    senders_known: bool,
    /// When the WAL receiver last received from its upstream, and from each address.
    receiver_watch: ReceiverWatch,
    pub last_streaming: Option<std::time::Instant>,
    pub streamed_from: std::collections::HashMap<(String, u16), std::time::Instant>,
}

impl Evidence {
    pub fn new(now: std::time::Instant) -> Self {
        Evidence {
            last_standby_seen: now,
            was_ready: false,
            wal_marks: Default::default(),
            sent_marks: Default::default(),
            streaming_senders: Default::default(),
            lease_senders: Default::default(),
            senders_known: false,
            receiver_watch: Default::default(),
            last_streaming: None,
            streamed_from: Default::default(),
        }
    }

    /// Takes in one tick's observation. `peers`: the formation's other nodes (only
    /// their streams renew the lease).
    pub fn track(&mut self, l: &crate::observation::Local, peers: Option<&[pgha_api::PeerNode]>) {
        // After a restart with the controller down, standbys need time to reconnect to
        // a Postgres that just came up: their lease counts from then. (Only then: once
        // the controller was reached, its view of our lease must stay conservative.)
        if l.ready && !self.was_ready && !self.senders_known {
            self.last_standby_seen = std::time::Instant::now();
        }
        self.was_ready = l.ready;
        match (l.in_recovery, l.wal_insert) {
            (Some(false), Some((at, lsn))) => self.wal_marks.note(at, lsn),
            (Some(true), _) => self.wal_marks.clear(),
            _ => {}
        }
        self.streaming_senders.clear();
        for s in &l.standbys {
            // Only the formation's own standbys renew the lease: a consumer outside it
            // (pg_receivewal, a standby formation's leader) may still reach a primary
            // the controller and its standbys have written off.
            if s.obs.state != "streaming" || !is_formation_standby(&s.obs.application_name, peers) {
                continue;
            }
            self.streaming_senders.insert(s.pid);
            let marks = self.sent_marks.entry(s.pid).or_default();
            // The reply read with this tick's sent position can only prove earlier marks.
            let renewal = s.write_lsn.and_then(|w| marks.renewal(w));
            if let Some((at, sent)) = s.sent {
                marks.note(at, sent);
            }
            if let Some(at) = renewal
                && at > self.last_standby_seen
                && standby_renews(s.pid, self.senders_known, &self.lease_senders)
            {
                self.last_standby_seen = at;
            }
        }
        let senders = &self.streaming_senders;
        self.sent_marks.retain(|pid, _| senders.contains(pid));
        if l.receiver_live() {
            self.last_streaming = Some(std::time::Instant::now());
        }
        let sample = l
            .wal_receiver_sender
            .clone()
            .zip(l.wal_receiver_flushed)
            .map(|(sender, flushed)| ReceiverSample {
                sender,
                receipt_age: l.wal_receipt_age,
                written: l.wal_receiver_written.unwrap_or(flushed),
                flushed,
            });
        let received = if l.ready { l.wal_received } else { None };
        if let Some((sender, at)) =
            self.receiver_watch
                .contact(std::time::Instant::now(), sample, received)
        {
            self.streamed_from.insert(sender, at);
        }
        self.streamed_from
            .retain(|_, t| t.elapsed() < std::time::Duration::from_secs(3600));
    }

    /// The senders streaming now: what a report sent now carries for [`Self::answered`].
    pub fn senders_now(&self) -> std::collections::HashSet<i32> {
        self.streaming_senders.clone()
    }

    /// The controller answered (in the current term) a report sent while `senders`
    /// streamed: from now on only those renew the lease ([`standby_renews`]).
    pub fn answered(&mut self, senders: std::collections::HashSet<i32>) {
        self.lease_senders = senders;
        self.senders_known = true;
    }

    /// The senders of the last answer as the state file keeps them, for `postmaster`
    /// (None when it changed since the list was kept).
    pub fn persisted(&self, postmaster: Option<String>) -> Option<LeaseSenders> {
        let mut pids: Vec<i32> = self.lease_senders.iter().copied().collect();
        pids.sort_unstable();
        Some(LeaseSenders {
            postmaster: postmaster.filter(|_| self.senders_known)?,
            pids,
        })
    }

    /// Takes up the senders the state file kept, when they belong to the Postgres
    /// running now (`postmaster`). Returns whether it did.
    pub fn restore(&mut self, kept: Option<&LeaseSenders>, postmaster: Option<&str>) -> bool {
        match kept {
            Some(k) if postmaster == Some(k.postmaster.as_str()) => {
                self.lease_senders = k.pids.iter().copied().collect();
                self.senders_known = true;
                // Postgres did not just come up: no fresh start for its standbys.
                self.was_ready = true;
                true
            }
            _ => false,
        }
    }
}

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

    #[test]
    fn only_the_formations_own_standbys_renew_the_lease() {
        let peer = |id| pgha_api::PeerNode {
            node_id: id,
            name: format!("node_{id}"),
            host: "10.0.0.5".into(),
            port: 5432,
            slot: true,
        };
        let peers = [peer(2), peer(3)];
        assert!(is_formation_standby("pgha_standby_3", Some(&peers)));
        for outside in [
            "pgha_standby_4",
            "pg_receivewal",
            "pgha_dr_dr_2",
            "walreceiver",
        ] {
            assert!(!is_formation_standby(outside, Some(&peers)), "{outside}");
        }
        assert!(
            is_formation_standby("pgha_standby_4", None),
            "before any assignment"
        );
        assert!(!is_formation_standby("pgha_dr_dr_2", None));
    }
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

    /// The known gap this closes: an agent restarted with Postgres running on, the
    /// controller out of reach, counted every stream for its lease (a standby that
    /// reconnected after the controller promoted another node kept it writable). The
    /// senders of the last answer survive in the state file for the same postmaster.
    #[test]
    fn the_senders_of_the_last_answer_survive_an_agent_restart_but_not_a_reboot() {
        let now = std::time::Instant::now();
        let mut before = Evidence::new(now);
        assert_eq!(
            before.persisted(Some("42:1700000000".into())),
            None,
            "no answer yet"
        );
        before.answered([102, 101].into());
        let kept = before.persisted(Some("42:1700000000".into())).unwrap();
        assert_eq!(kept.pids, vec![101, 102]);
        let json = serde_json::to_string(&kept).unwrap();
        let kept: LeaseSenders = serde_json::from_str(&json).unwrap();
        // The agent restarts, the same Postgres runs on: only 101 and 102 count.
        let mut after = Evidence::new(now);
        assert!(after.restore(Some(&kept), Some("42:1700000000")));
        assert!(standby_renews(
            101,
            after.senders_known,
            &after.lease_senders
        ));
        assert!(!standby_renews(
            103,
            after.senders_known,
            &after.lease_senders
        ));
        // After a reboot (another postmaster) the list is not used: every stream counts.
        let mut rebooted = Evidence::new(now);
        assert!(!rebooted.restore(Some(&kept), Some("77:1700000500")));
        assert!(standby_renews(
            103,
            rebooted.senders_known,
            &rebooted.lease_senders
        ));
        assert!(!rebooted.restore(Some(&kept), None));
    }

    fn lsn(n: u64) -> pgha_api::Lsn {
        pgha_api::Lsn(n)
    }

    #[test]
    fn a_reply_renews_the_lease_only_for_wal_sent_since() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = WalMarks::default();
        assert_eq!(m.renewal(lsn(100)), None, "no mark yet");
        m.note(at(0), lsn(100));
        m.note(at(100), lsn(100));
        m.note(at(200), lsn(150));
        m.note(at(300), lsn(150));
        m.note(at(400), lsn(150));
        // Flushed past 100: bytes written after 100 ms, when 100 was last the insert
        // position.
        assert_eq!(m.renewal(lsn(101)), Some(at(100)));
        assert_eq!(m.renewal(lsn(150)), Some(at(100)));
        // Past 150: written after 400 ms.
        assert_eq!(m.renewal(lsn(151)), Some(at(400)));
        // A reply repeating an old position (a standby cut from us, still replying)
        // proves nothing new.
        assert_eq!(m.renewal(lsn(100)), None);
        assert_eq!(m.last_moved(), Some(at(100)));
        // Idle since: the heartbeat is due once the position sat still long enough.
        m.note(at(2000), lsn(150));
        assert_eq!(m.last_moved(), Some(at(100)));
        // A lower position starts over (promoted from another history).
        m.note(at(3000), lsn(50));
        assert_eq!(
            m.renewal(lsn(151)),
            Some(at(3000)),
            "the old marks are gone"
        );
        assert_eq!(m.renewal(lsn(50)), None);
        // Old marks go.
        m.note(at(40_000), lsn(60));
        assert_eq!(m.renewal(lsn(51)), None);
    }

    #[test]
    fn a_standby_dates_its_contact_by_its_last_receipt() {
        let t0 = std::time::Instant::now() + Duration::from_secs(10);
        let up = ("10.0.0.2".to_string(), 5432);
        let sample = |age_ms: Option<u64>, flushed: u64| {
            Some(ReceiverSample {
                sender: up.clone(),
                receipt_age: age_ms.map(Duration::from_millis),
                written: lsn(flushed),
                flushed: lsn(flushed),
            })
        };
        let mut w = ReceiverWatch::default();
        assert_eq!(w.contact(t0, None, Some(lsn(5))), None, "never streamed");
        // Streaming, last message 300 ms ago.
        assert_eq!(
            w.contact(t0, sample(Some(300), 100), Some(lsn(100))),
            Some((up.clone(), t0 - Duration::from_millis(300)))
        );
        // Nothing received yet on a new connection: now.
        let mut fresh = ReceiverWatch::default();
        assert_eq!(
            fresh.contact(t0, sample(None, 100), Some(lsn(100))),
            Some((up.clone(), t0))
        );
        // The receiver timed out with nothing new: the last receipt stands.
        assert_eq!(w.contact(t0, None, Some(lsn(100))), None);
        assert_eq!(w.contact(t0, None, Some(lsn(100))), None);
        // It stopped after receiving more than the last sample saw: now.
        w.contact(t0, sample(Some(0), 100), Some(lsn(100)));
        assert_eq!(w.contact(t0, None, Some(lsn(120))), Some((up.clone(), t0)));
        // Postgres did not answer: now.
        w.contact(t0, sample(Some(0), 100), Some(lsn(100)));
        assert_eq!(w.contact(t0, None, None), Some((up.clone(), t0)));
    }

    /// The second review's partial freeze: the primary's postmaster and agent stopped,
    /// its WAL sender running on. Keepalives keep the receipt time fresh, but no WAL
    /// (no heartbeat) arrives: the contact stays where the last WAL came.
    #[test]
    fn keepalives_without_wal_are_no_contact() {
        let t0 = std::time::Instant::now() + Duration::from_secs(100);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let up = ("10.0.0.2".to_string(), 5432);
        let sample = |age_ms: u64, written: u64| {
            Some(ReceiverSample {
                sender: up.clone(),
                receipt_age: Some(Duration::from_millis(age_ms)),
                written: lsn(written),
                flushed: lsn(written),
            })
        };
        let mut w = ReceiverWatch::default();
        assert_eq!(
            w.contact(at(0), sample(10, 100), None),
            Some((up.clone(), at(0) - Duration::from_millis(10)))
        );
        // WAL (a heartbeat) at 500 ms.
        assert_eq!(
            w.contact(at(600), sample(100, 120), None),
            Some((up.clone(), at(500)))
        );
        // Then only keepalives, for 10 s: each sample's last message is fresh.
        for ms in (1000..10_000).step_by(500) {
            assert_eq!(
                w.contact(at(ms), sample(50, 120), None),
                Some((up.clone(), at(500))),
                "at {ms} ms"
            );
        }
        // WAL again.
        assert_eq!(
            w.contact(at(10_200), sample(0, 130), None),
            Some((up.clone(), at(10_200)))
        );
        // Another upstream (a new stream): dated by its first message.
        let other = ("10.0.0.3".to_string(), 5432);
        let s = ReceiverSample {
            sender: other.clone(),
            receipt_age: Some(Duration::from_millis(5)),
            written: lsn(130),
            flushed: lsn(130),
        };
        assert_eq!(
            w.contact(at(11_000), Some(s), None),
            Some((other, at(10_995)))
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
