//! A group of three controllers on a real three-member etcd cluster (`create monitor
//! --store etcd`): the leader killed or frozen, etcd losing quorum, and the fence that
//! refuses a deposed controller's writes. Nodes and clients use the group's URL (every
//! controller named) and find the leader themselves.

use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, WriteProbe};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// Runs `f` on a fresh group of three controllers; logs printed on failure.
async fn group(f: impl AsyncFnOnce(&mut Cluster) -> anyhow::Result<()>) {
    let mut c = Cluster::start_group(3).expect("starting three controllers on etcd");
    let r = f(&mut c).await;
    c.check(r);
}

/// Reads the state for `d` and fails if any node's reported or assigned state, or the
/// term, moves away from `want`.
fn hold_steady(
    c: &Cluster,
    want: &[(&str, pgha_api::NodeState)],
    term: u64,
    d: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        if let Ok(st) = c.state() {
            anyhow::ensure!(st.term == term, "the term moved: {} -> {}", term, st.term);
            for (name, s) in want {
                let n = st
                    .nodes
                    .iter()
                    .find(|n| n.name == *name)
                    .ok_or_else(|| anyhow::anyhow!("{name} is gone"))?;
                anyhow::ensure!(
                    n.reported_state == *s && n.assigned_state == *s,
                    "{name} moved: {}/{} ({})",
                    n.reported_state,
                    n.assigned_state,
                    st.summary
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// kill -9 of the leading controller in steady state: a follower leads within a few
/// seconds, no node changes state, writes go on; the group still acts (a switchover
/// through the group URL), and the killed controller comes back as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_no_node_changes_state() {
    group(async |c| {
        c.bootstrap_two()?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, T).await?;
        let leader = c.wait_for_leader(None, T).await?;
        let term = c.state()?.term;
        let t0 = Instant::now();
        c.kill_controller(leader);
        let next = c
            .wait_for_leader(Some(leader), Duration::from_secs(30))
            .await?;
        println!(
            "controller {leader} killed; controller {next} leads after {:?}",
            t0.elapsed()
        );
        let st = c.state()?;
        let port = format!(":{}", c.controller_port(next));
        assert!(
            st.leader.as_deref().is_some_and(|l| l.contains(&port)),
            "show state names the leader ({port}): {:?}",
            st.leader
        );
        // Past the new leader's warm-up (one failure timeout), nothing moved.
        hold_steady(
            c,
            &[("node_a", Primary), ("node_b", Secondary)],
            term,
            Duration::from_secs(12),
        )?;
        probe.wait_for_more(20, T).await?;
        let (ok, _, err) = c.pgha(&["perform", "switchover", "--monitor", &c.join_url])?;
        assert!(ok, "switchover through the group URL: {err}");
        c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
        c.start_controller(leader)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(c.leader_index().await, Some(next), "the old leader follows");
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

/// The leader frozen (SIGSTOP) past its lease while another controller takes over and
/// switches over, then thawed: it answers as a follower, assigns nothing, and the
/// formation keeps the new leader's decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_thaws_as_a_follower_and_changes_nothing() {
    group(async |c| {
        c.bootstrap_two()?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        let leader = c.wait_for_leader(None, T).await?;
        c.freeze_controller(leader, true);
        let next = c
            .wait_for_leader(Some(leader), Duration::from_secs(30))
            .await?;
        let (ok, _, err) = c.pgha(&["perform", "switchover", "--monitor", &c.join_url])?;
        assert!(ok, "switchover under the new leader: {err}");
        let st = c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
        c.freeze_controller(leader, false);
        // The thawed controller finds its lease deadline behind it: it neither answers
        // as leader nor writes; the formation stays as the new leader made it.
        hold_steady(
            c,
            &[("node_b", Primary), ("node_a", Secondary)],
            st.term,
            Duration::from_secs(8),
        )?;
        assert_eq!(c.leader_index().await, Some(next));
        let client = pgha_api::client::MonitorClient::new(
            &c.controller_read_url(leader),
            Duration::from_secs(2),
        )?;
        let e = client.state("default").await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(pgha_api::routes::ErrorCode::NotLeader),
            "the thawed controller refuses: {e}"
        );
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

/// etcd loses one member (the group goes on), then quorum: the controllers stop
/// deciding (none leads), the primary keeps taking writes, and no node changes state;
/// with quorum back a controller leads again and nothing failed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_losing_quorum_stops_decisions_not_the_data_plane() {
    group(async |c| {
        c.bootstrap_two()?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        let term = c.state()?.term;
        let etcd = c.etcd.as_mut().expect("a group has etcd");
        etcd.kill(0);
        // One member down: quorum holds, a controller leads.
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.wait_for_leader(None, Duration::from_secs(30)).await?;
        hold_steady(
            c,
            &[("node_a", Primary), ("node_b", Secondary)],
            term,
            Duration::from_secs(3),
        )?;
        let etcd = c.etcd.as_mut().expect("a group has etcd");
        etcd.kill(1);
        // Quorum lost: within a lease TTL (5 s) and a keep-alive, nobody leads.
        let t0 = Instant::now();
        while c.leader_index().await.is_some() {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(20),
                "a controller still leads without etcd quorum"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("no leader {:?} after quorum was lost", t0.elapsed());
        let before = probe.acked();
        tokio::time::sleep(Duration::from_secs(10)).await;
        anyhow::ensure!(
            probe.acked() > before + 100,
            "the primary stopped taking writes without the controllers"
        );
        let etcd = c.etcd.as_mut().expect("a group has etcd");
        etcd.restart(0)?;
        etcd.restart(1)?;
        etcd.wait_healthy(0, Duration::from_secs(30))?;
        c.wait_for_leader(None, Duration::from_secs(30)).await?;
        hold_steady(
            c,
            &[("node_a", Primary), ("node_b", Secondary)],
            term,
            Duration::from_secs(12),
        )?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

/// The fence itself, against real etcd: controllers take the leader key in turn (each
/// one's lease left to expire), and in every round the deposed one's state save and
/// event append are refused by etcd, leave nothing behind, and depose it locally,
/// while the current leader's writes land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_controllers_writes_are_always_refused() {
    use pgha_controller::config::EtcdSettings;
    use pgha_controller::leader::Leadership;
    use pgha_controller::records::{DurableState, FormationRecord};
    use pgha_controller::store::Store;
    use pgha_controller::store::etcd::{Campaign, Etcd, EtcdStore};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let cluster = pgha_e2e::etcd::EtcdCluster::start(dir.path(), 1).unwrap();
    let settings = EtcdSettings {
        endpoints: vec![cluster.endpoints()],
        prefix: "/fence-test/".into(),
        ca_file: None,
        user: None,
        password_file: None,
        cert_file: None,
        key_file: None,
        insecure: false,
        lease_ttl_s: 2,
    };
    let etcd = Etcd::connect(&settings).unwrap();
    let state = |n: u64| {
        let mut st = DurableState {
            next_node_id: n,
            ..Default::default()
        };
        st.formations
            .insert("f".into(), FormationRecord::new("f", &format!("db{n}")));
        st
    };
    let event = |id: u64| pgha_api::Event {
        id,
        time_ms: id,
        formation: "f".into(),
        node_id: None,
        node_name: None,
        reported_state: None,
        assigned_state: None,
        rule: "test".into(),
        description: format!("event {id}"),
        inputs: None,
        actor: None,
    };
    let mut stale: Option<(Arc<Leadership>, EtcdStore)> = None;
    for round in 1..=4u64 {
        let leadership = Arc::new(Leadership::follower());
        let campaign = tokio::spawn(
            Campaign {
                etcd: etcd.clone(),
                leadership: leadership.clone(),
                own_url: format!("http://controller-{round}"),
                lease_ttl_s: 2,
                on_elected: Arc::new(|| Ok(())),
            }
            .run(),
        );
        let t0 = Instant::now();
        while !leadership.is_leader(pgha_controller::now_ms()) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "round {round}: no win"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut store = EtcdStore::new(etcd.clone(), leadership.clone());
        if let Some((old, mut old_store)) = stale.take() {
            assert_ne!(old.fence(), 0, "the stale one still believes it leads");
            let e = old_store.save(&state(1000 + round)).unwrap_err();
            assert!(
                matches!(e, pgha_controller::store::StoreError::NotLeader),
                "{e}"
            );
            assert!(old_store.append_events(&[event(9_000 + round)]).is_err());
            assert_eq!(old.fence(), 0, "a refused write deposes it");
        }
        store.save(&state(round)).unwrap();
        store.append_events(&[event(round)]).unwrap();
        let back = store.load().unwrap();
        assert_eq!(
            back.next_node_id, round,
            "the leader's write is what etcd holds"
        );
        let events = store.load_events().unwrap();
        assert!(events.iter().all(|e| e.id < 9_000), "no stale event landed");
        // This leader stops keeping its lease alive (a frozen or dead VM); the next
        // round's controller takes the key once it expires.
        campaign.abort();
        stale = Some((leadership, store));
    }
}

/// Waits until `pred` holds for the formation's state (polling through the group URL).
fn wait_until(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&pgha_api::FormationStatus) -> bool,
) -> anyhow::Result<pgha_api::FormationStatus> {
    let t0 = Instant::now();
    loop {
        if let Ok(st) = c.state()
            && pred(&st)
        {
            return Ok(st);
        }
        anyhow::ensure!(t0.elapsed() < timeout, "not {what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exactly one node reports a writable state.
fn one_primary(st: &pgha_api::FormationStatus) -> anyhow::Result<String> {
    let writable: Vec<&str> = st
        .nodes
        .iter()
        .filter(|n| n.reported_state.is_writable())
        .map(|n| n.name.as_str())
        .collect();
    anyhow::ensure!(writable.len() == 1, "writable nodes: {writable:?}");
    Ok(writable[0].to_string())
}

/// The leading controller killed in the middle of a failover (the primary's VM is lost,
/// the standby's promotion under way): the next leader finishes it from the state in
/// etcd; one primary, every acknowledged write, and the old primary rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_failover_leaves_one_primary_and_every_write() {
    group(async |c| {
        c.bootstrap_two()?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, T).await?;
        let leader = c.wait_for_leader(None, T).await?;
        let a = c.index("node_a");
        c.kill_vm(a)?;
        let st = wait_until(c, "a failover under way", T, |st| {
            st.nodes
                .iter()
                .any(|n| n.name == "node_b" && n.assigned_state != Secondary)
        })?;
        let phase = st
            .nodes
            .iter()
            .find(|n| n.name == "node_b")
            .map(|n| n.assigned_state);
        c.kill_controller(leader);
        println!("leader killed with node_b assigned {phase:?}");
        c.wait_for_leader(Some(leader), Duration::from_secs(30))
            .await?;
        // Alone, node_b serves as wait_primary until node_a is back.
        let primary = c.wait_new_primary(&["node_a"], T)?;
        anyhow::ensure!(primary == "node_b");
        c.start_agent(a)?;
        let st = c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
        anyhow::ensure!(one_primary(&st)? == "node_b");
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

/// The leading controller killed right after it started a switchover (the primary
/// draining): the next leader finishes or undoes it; either way one primary, every
/// acknowledged write, both nodes back in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_switchover_leaves_one_primary_and_every_write() {
    group(async |c| {
        c.bootstrap_two()?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, T).await?;
        let leader = c.wait_for_leader(None, T).await?;
        let client = pgha_api::client::MonitorClient::new(&c.join_url, Duration::from_secs(5))?;
        client.switchover("default", None).await?;
        c.kill_controller(leader);
        c.wait_for_leader(Some(leader), Duration::from_secs(30))
            .await?;
        let st = wait_until(c, "one primary and one secondary again", T, |st| {
            let count = |s| {
                st.nodes
                    .iter()
                    .filter(|n| n.reported_state == s && n.assigned_state == s)
                    .count()
            };
            count(Primary) == 1 && count(Secondary) == 1
        })?;
        let primary = one_primary(&st)?;
        println!("after the leader died mid-switchover, {primary} is primary");
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

/// A running formation on the file store moves into etcd (`pgha migrate`, the monitor
/// stopped meanwhile): nodes keep their roles, ids and credentials, the term stays,
/// writes go on, and the migrated controller leads and acts (a switchover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_formation_migrates_from_the_file_store_to_etcd() {
    pgha_e2e::scenario(async |c| {
        c.bootstrap_two()?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        let before = c.state()?;
        let dir = c.monitor_dir().display().to_string();
        // A running monitor is refused: its state would move under it.
        let etcd = pgha_e2e::etcd::EtcdCluster::start(&c.path().join("etcd"), 3)?;
        let endpoints = etcd.endpoints();
        c.etcd = Some(etcd);
        let (ok, _, err) = c.pgha(&["migrate", "--dir", &dir, "--etcd-endpoints", &endpoints])?;
        anyhow::ensure!(!ok && err.contains("must be stopped"), "{err}");
        c.kill_monitor();
        let out = c.pgha_ok(&["migrate", "--dir", &dir, "--etcd-endpoints", &endpoints]);
        let (_, _, err) = c.pgha(&["migrate", "--dir", &dir, "--etcd-endpoints", &endpoints])?;
        out?;
        anyhow::ensure!(err.contains("in etcd already"), "a second migrate: {err}");
        c.start_monitor()?;
        c.wait_for_leader(None, Duration::from_secs(30)).await?;
        let after = c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        anyhow::ensure!(after.term == before.term, "the term moved");
        anyhow::ensure!(after.leader.is_some(), "show state names the leader");
        for (b, a) in before.nodes.iter().zip(&after.nodes) {
            anyhow::ensure!(b.name == a.name && b.node_id == a.node_id, "{b:?} vs {a:?}");
        }
        // As after any controller restart, the nodes' health is known again from
        // fresh reports before a switchover is accepted: a probe alone makes a node
        // look healthy in show state, but a switchover needs its agent's word.
        wait_until(c, "every node healthy and reporting again", T, |st| {
            st.nodes
                .iter()
                .all(|n| n.health == pgha_api::Health::Good && n.report_age_ms.is_some())
        })?;
        c.pgha_ok(&["perform", "switchover", "--monitor", &c.join_url])?;
        c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}
