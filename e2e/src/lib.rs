//! End-to-end harness: real `pgha` processes (monitor and agents) and real Postgres on
//! loopback ports, in a temp directory; a write probe that inserts unique ids through
//! the formation URI and checks afterwards that every acknowledged id survived.
//!
//! Processes are ended by PID (never by name), and only those this harness started.
//!
//! The `Cluster` is built here (monitor, nodes, the CLI); `faults` holds what breaks it
//! (kills, freezes, stalled WAL receivers), `reads` what a test looks at (state,
//! waits, URIs, connections, events, endpoints).

pub mod etcd;
mod faults;
pub mod probe;
mod reads;

use anyhow::{Context, bail};
use pgha_api::{FormationStatus, NodeState};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// One node: its agent process (when running) and PGDATA.
pub struct Node {
    pub name: String,
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
        let mut c = Cluster::empty()?;
        let port = c.monitor_port;
        let mon = c.monitor_dir();
        let mon_s = s(&mon);
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "create",
            "monitor",
            "--dir",
            &mon_s,
            "--hostname",
            "127.0.0.1",
            "--listen",
            &listen,
        ];
        // By default the API is HTTPS with a CA made by `create monitor` (nodes here run
        // Postgres without SSL, so no --ssl-self-signed: URIs keep sslmode=prefer).
        if !ssl {
            args.push("--no-ssl");
        }
        c.pgha_ok(&args)?;
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

    fn spawn(&self, name: &str, args: &[&str]) -> anyhow::Result<Child> {
        let log = self.log(name)?;
        Command::new(pgha_bin())
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

    /// Runs `pgha ARGS` to completion and returns (success, stdout, stderr).
    pub fn pgha(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new(pgha_bin())
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
        let child = self.spawn(&name, &["run", "--dir", &s(&dir)])?;
        *self.controller_child(i) = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
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
        format!("{userinfo}@127.0.0.1:{port}#{pin}")
    }

    /// The tutorial's start: node_a (single), then node_b; waits for primary + secondary.
    pub fn bootstrap_two(&mut self) -> anyhow::Result<()> {
        let t = Duration::from_secs(120);
        self.add_node("node_a")?;
        self.wait_for(&[("node_a", NodeState::Single)], t)?;
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

    /// Fails the test with the cluster's logs when `r` is an error.
    pub fn check(&self, r: anyhow::Result<()>) {
        if let Err(e) = r {
            self.dump_logs();
            panic!("{e:#}");
        }
    }

    /// `pgha create postgres` for a new node, then starts its agent.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<usize> {
        self.add_node_with(name, &[])
    }

    /// `add_node` with extra `create postgres` flags.
    pub fn add_node_with(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<usize> {
        let port = free_port();
        let http_port = free_port();
        let pgdata = self.path().join(name);
        let http = http_port.to_string();
        self.pgha_ok(
            &[
                "create",
                "postgres",
                "--pgdata",
                &s(&pgdata),
                "--pgport",
                &port.to_string(),
                "--hostname",
                "127.0.0.1",
                "--dbname",
                "appdb",
                "--monitor",
                &self.join_url,
                "--name",
                name,
                "--no-ssl",
                "--http-port",
                &http,
            ]
            .into_iter()
            // trust (as the tutorial) unless the test picks its own --auth
            .chain(
                ["--auth", "trust"]
                    .into_iter()
                    .filter(|_| !extra.contains(&"--auth")),
            )
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )?;
        self.nodes.push(Node {
            name: name.to_string(),
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
        let child = self.spawn(&name, &["run", "--pgdata", &s(&self.nodes[i].pgdata)])?;
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
            let secret = self.monitor_dir().join("join-secrets/default.secret");
            text.replacen(
                "\nspec:\n",
                &format!(
                    "\nspec:\n  admission:\n    joinSecretFile: {}\n",
                    secret.display()
                ),
                1,
            )
        };
        std::fs::write(&tmp, lift_anti_flapping(&text))?;
        std::fs::rename(&tmp, dir.join(file))?;
        Ok(())
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
        if std::env::var("PGHA_KEEP").is_ok() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("PGHA_KEEP: leaving {}", dir.keep().display());
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}
