//! Several "VMs" on one machine: one network namespace per host (each node, the
//! controller, the client), joined by veth pairs to a bridge that lives in a namespace
//! of its own (the "switch"). Nothing is added to the machine's own namespace: every
//! address and link exists only inside namespaces this harness made, and they all go
//! away with it (also when a test panics: `Drop`).
//!
//! The faults VMs have are harness calls: cut a link both ways or one way (nftables
//! `drop` rules in the host's namespace, so packets vanish as on a real partition and
//! TCP waits for its timeouts), isolate a host, slow and lossy links (`tc netem`), heal.
//!
//! Names are `pgha-<pid>-<n>-<host>`: a namespace left by a test process that was killed
//! (a nextest timeout) is found by its dead PID and removed, with the processes inside it
//! (they are ours: only this harness makes namespaces with that prefix).

use anyhow::{Context, bail};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "pgha-";
/// The private subnet of every harness network (each lives in its own namespaces, so
/// two tests running at once cannot collide).
const SUBNET: [u8; 3] = [10, 213, 0];

/// The harness network's addresses, as CIDR.
pub fn subnet() -> String {
    format!("{}.{}.{}.0/24", SUBNET[0], SUBNET[1], SUBNET[2])
}

/// One host of the network.
#[derive(Debug, Clone)]
pub struct Host {
    /// The harness's name for it: "client", "ctl", "n1", ...
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// The network: a switch namespace with a bridge, and the hosts.
pub struct Net {
    switch: String,
    pub hosts: Vec<Host>,
}

/// Why the multi-host tests cannot run here (None: they can).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "nft", "tc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    None
}

/// Runs a command to completion; an error carries its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS program args...`
fn in_ns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Removes the namespaces of harness runs whose test process is gone, killing what
/// still runs inside them.
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
            continue;
        }
        remove_ns(ns);
    }
}

/// Kills every process in namespace `ns`, then deletes it.
fn remove_ns(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

impl Net {
    /// Makes the switch and one host per name (addresses 10.213.0.2, .3, ...).
    pub fn create(names: &[&str]) -> anyhow::Result<Net> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let base = format!(
            "{PREFIX}{}-{}-",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{base}switch");
        run("ip", &["netns", "add", &switch])?;
        let mut net = Net {
            switch: switch.clone(),
            hosts: vec![],
        };
        in_ns(&switch, "ip", &["link", "add", "br0", "type", "bridge"])?;
        in_ns(&switch, "ip", &["link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{base}{name}");
            run("ip", &["netns", "add", &ns])?;
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 2 + i as u8);
            net.hosts.push(Host {
                name: name.to_string(),
                ns: ns.clone(),
                addr,
            });
            // The pair is made inside the switch (never in the machine's namespace),
            // one end moved into the host as eth0.
            let port = format!("p{i}");
            in_ns(
                &switch,
                "ip",
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            in_ns(
                &switch,
                "ip",
                &["link", "set", &port, "master", "br0", "up"],
            )?;
            in_ns(&ns, "ip", &["link", "set", "lo", "up"])?;
            in_ns(
                &ns,
                "ip",
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            )?;
            in_ns(&ns, "ip", &["link", "set", "eth0", "up"])?;
            // The table the nemeses write their rules into.
            net.nft(
                &ns,
                "add table inet pgha\n\
                 add chain inet pgha input { type filter hook input priority 0; }\n\
                 add chain inet pgha output { type filter hook output priority 0; }\n",
            )?;
        }
        Ok(net)
    }

    /// Feeds an nftables script to `nft -f -` inside `ns`.
    fn nft(&self, ns: &str, script: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {ns} refused {script:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in this network"))
    }

    /// Moves the calling thread into `name`'s namespace: sockets it opens, threads and
    /// processes it starts afterwards live there (a tokio runtime built afterwards too).
    pub fn enter(&self, name: &str) -> anyhow::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{}", self.host(name).ns))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the client's namespace")?;
        Ok(())
    }

    /// A command that runs inside `name`'s namespace (it joins it between fork and exec).
    pub fn command(&self, name: &str, program: &std::path::Path) -> anyhow::Result<Command> {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::open(format!("/run/netns/{}", self.host(name).ns))?;
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe (a raw syscall); the file is opened before fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Cuts the link between `a` and `b` both ways.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        let (ha, hb) = (self.host(a), self.host(b));
        self.nft(
            &ha.ns,
            &format!(
                "add rule inet pgha output ip daddr {} drop\nadd rule inet pgha input ip saddr {} drop\n",
                hb.addr, hb.addr
            ),
        )
    }

    /// Drops what `from` sends to `to`; the other way still flows.
    pub fn cut_one_way(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let (hf, ht) = (self.host(from), self.host(to));
        self.nft(
            &hf.ns,
            &format!("add rule inet pgha output ip daddr {} drop\n", ht.addr),
        )
    }

    /// Cuts `name` from every other host.
    pub fn isolate(&self, name: &str) -> anyhow::Result<()> {
        let others: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.name != name)
            .map(|h| h.name.clone())
            .collect();
        for o in others {
            self.cut(name, &o)?;
        }
        Ok(())
    }

    /// Every link slow and lossy, on what each host sends: `tc netem delay 200ms 50ms
    /// loss 5%` where the kernel has netem; where it has not (some VM kernels ship
    /// without `sch_netem`), 5% random loss by nftables and a 1 Mbit/s token bucket
    /// (`tbf`, up to 300 ms of queueing). Returns what it applied, for the test's output.
    pub fn slow_and_lossy(&self) -> anyhow::Result<String> {
        let netem = ["delay", "200ms", "50ms", "loss", "5%"];
        let tc = |h: &Host, kind: &[&str]| {
            let mut args = vec!["qdisc", "replace", "dev", "eth0", "root"];
            args.extend_from_slice(kind);
            in_ns(&h.ns, "tc", &args)
        };
        let first = &self.hosts[0];
        if tc(first, &[&["netem"][..], &netem[..]].concat()).is_ok() {
            for h in &self.hosts[1..] {
                tc(h, &[&["netem"][..], &netem[..]].concat())?;
            }
            return Ok("tc netem delay 200ms ± 50ms, 5% loss, every host".into());
        }
        for h in &self.hosts {
            self.nft(
                &h.ns,
                "add rule inet pgha output numgen random mod 100 < 5 drop\n",
            )?;
            tc(
                h,
                &[
                    "tbf", "rate", "1mbit", "burst", "16kbit", "latency", "300ms",
                ],
            )?;
        }
        Ok("5% loss (nftables) and 1 Mbit/s with up to 300 ms queueing (tbf), every host: this kernel has no netem".into())
    }

    /// Removes every fault: the cut rules and the netem queues.
    pub fn heal(&self) -> anyhow::Result<()> {
        for h in &self.hosts {
            self.nft(
                &h.ns,
                "flush chain inet pgha input\nflush chain inet pgha output\n",
            )?;
            // No netem queue is not an error.
            let _ = in_ns(&h.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            remove_ns(&h.ns);
        }
        remove_ns(&self.switch);
    }
}
