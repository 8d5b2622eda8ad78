//! Bad input to `pgha create postgres` and friends: a clear one-line error that says
//! what and where, nothing half-made, and the corrected command then succeeds.

use pgha_e2e::{Cluster, free_port};

fn create_args<'a>(
    pgdata: &'a str,
    port: &'a str,
    monitor: &'a str,
    name: &'a str,
) -> Vec<&'a str> {
    vec![
        "create",
        "postgres",
        "--pgdata",
        pgdata,
        "--pgport",
        port,
        "--hostname",
        "127.0.0.1",
        "--dbname",
        "appdb",
        "--monitor",
        monitor,
        "--name",
        name,
    ]
}

fn assert_refused(c: &Cluster, args: &[&str], expect: &str) -> String {
    let (ok, _out, err) = c.pgha(args).unwrap();
    assert!(!ok, "pgha {args:?} should have failed");
    assert!(
        err.contains(expect),
        "error for {args:?} should mention {expect:?}, got: {err}"
    );
    let first = err.lines().next().unwrap_or_default().to_string();
    println!("{args:?}\n  -> {first}");
    err
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_nothing_behind() {
    let c = Cluster::start().unwrap();
    let base = c.path().to_path_buf();
    let pgdata = base.join("node_a").display().to_string();
    let port = free_port().to_string();
    let cfg_dir = base.join("node_a.pgha");

    // Monitor unreachable.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let err = assert_refused(
        &c,
        &create_args(&pgdata, &port, &dead, "node_a"),
        "unreachable",
    );
    assert!(err.contains(&dead), "{err}");
    assert!(
        !cfg_dir.exists(),
        "config written although registration failed"
    );

    // A Postgres bin directory that does not exist.
    let mut args = create_args(&pgdata, &port, &c.join_url, "node_a");
    args.extend(["--pg-bin-dir", "/nonexistent/bin"]);
    assert_refused(&c, &args, "--pg-bin-dir /nonexistent/bin");

    // Port in use.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    assert_refused(
        &c,
        &create_args(&pgdata, &busy_port, &c.join_url, "node_a"),
        "already in use",
    );
    drop(busy);

    // PGDATA that holds another cluster.
    let foreign = base.join("foreign");
    std::fs::create_dir_all(foreign.join("base")).unwrap();
    std::fs::write(foreign.join("PG_VERSION"), "15\n").unwrap();
    let foreign_s = foreign.display().to_string();
    assert_refused(
        &c,
        &create_args(&foreign_s, &port, &c.join_url, "node_x"),
        "pgha did not create",
    );
    assert!(
        foreign.join("PG_VERSION").exists(),
        "foreign PGDATA touched"
    );

    // Unknown flag.
    let mut args = create_args(&pgdata, &port, &c.join_url, "node_a");
    args.push("--frobnicate");
    assert_refused(&c, &args, "--frobnicate");

    // Nothing of the above was registered.
    let st = c.state().unwrap();
    assert!(
        st.nodes.is_empty(),
        "half-made nodes registered: {:?}",
        st.nodes
    );

    // The corrected command succeeds; re-running it says it is already done.
    c.pgha_ok(&create_args(&pgdata, &port, &c.join_url, "node_a"))
        .unwrap();
    assert!(cfg_dir.join("config.json").exists());
    let (ok, _, err) = c
        .pgha(&create_args(&pgdata, &port, &c.join_url, "node_a"))
        .unwrap();
    assert!(ok && err.contains("already node"), "{err}");

    // A second node with a name already taken.
    let pgdata_b = base.join("node_b").display().to_string();
    let port_b = free_port().to_string();
    let err = assert_refused(
        &c,
        &create_args(&pgdata_b, &port_b, &c.join_url, "node_a"),
        "already taken",
    );
    assert!(err.contains("node_a"), "{err}");
    assert!(!base.join("node_b.pgha").exists());
    c.pgha_ok(&create_args(&pgdata_b, &port_b, &c.join_url, "node_b"))
        .unwrap();
    assert_eq!(c.state().unwrap().nodes.len(), 2);

    // Without the join secret, the default formation admits nobody.
    let pgdata_c = base.join("node_c").display().to_string();
    assert_refused(
        &c,
        &create_args(
            &pgdata_c,
            &free_port().to_string(),
            &c.monitor_url,
            "node_c",
        ),
        "join secret",
    );
    assert!(!base.join("node_c.pgha").exists());

    // Read commands without a monitor say where to look.
    let (ok, _, err) = c.pgha(&["show", "state"]).unwrap();
    assert!(!ok && err.contains("--monitor"), "{err}");
    let (ok, _, err) = c.pgha(&["show", "state", "--monitor", &dead]).unwrap();
    assert!(!ok && err.contains("unreachable"), "{err}");
}
