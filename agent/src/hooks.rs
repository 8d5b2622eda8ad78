//! Commands the node's operator has the agent run when its role changes (Patroni's
//! `on_role_change` callback): move a virtual IP, repoint PgBouncer.
//!
//! Configured on the node (`create postgres --on-role-change PATH`, `config.json`),
//! never in the formation file: whoever edits formation files in Git does not get to run
//! commands on every database VM.
//!
//! A hook runs as `PATH <formation> <node> <old role> <new role> <new state>`, roles
//! being `primary` (writable), `standby` and `stopped`, once per change of role (not per
//! state: `single` → `wait_primary` → `primary` is one role). Hooks run one at a time in
//! the order of the changes, each for at most [`HOOK_TIMEOUT`] (then it is killed), off
//! the agent's loop: a slow hook never delays a failover. Output goes to the agent's log;
//! a failure also becomes the node's last error (`show state`).
//!
//! The agent runs as root, so a hook does too. A hook is run only when no one but root
//! could have changed it ([`check_hook`]: a root-owned regular file in root-owned
//! directories, writable by no one else; when the agent is not root, its own user's);
//! with a clean environment (`PATH` and `LANG` only: the agent's may hold pgBackRest
//! credentials); in a process group of its own, killed whole when it runs past its time
//! (a hook that started a background child leaves none behind).

use pgha_api::NodeState;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The role a state stands for, as hooks see it.
pub fn role(s: NodeState) -> &'static str {
    if s.is_writable() {
        "primary"
    } else if s.is_stopped() {
        "stopped"
    } else {
        "standby"
    }
}

/// Runs the role-change, start and stop hooks, in order, one at a time.
#[derive(Clone, Default)]
pub struct Hooks {
    on_role_change: Option<PathBuf>,
    /// Run as `PATH <formation> <node> <role>` when the agent saw Postgres start
    /// (Patroni's `on_start`), and when it saw it stop (`on_stop`, with the role it had).
    on_start: Option<PathBuf>,
    on_stop: Option<PathBuf>,
    /// Held while a hook runs: the next waits (tokio's mutex is fair, so in order).
    running: Arc<tokio::sync::Mutex<()>>,
    /// The last hook failure, until a hook succeeds.
    pub last_failure: Arc<Mutex<Option<String>>>,
}

impl Hooks {
    pub fn new(on_role_change: Option<PathBuf>) -> Self {
        Hooks {
            on_role_change,
            ..Default::default()
        }
    }

    /// With the start and stop hooks too.
    pub fn with_start_stop(mut self, on_start: Option<PathBuf>, on_stop: Option<PathBuf>) -> Self {
        self.on_start = on_start;
        self.on_stop = on_stop;
        self
    }

    /// Postgres went from stopped to running (`running`) or back, in `role`.
    pub fn postgres_changed(&self, formation: &str, node: &str, running: bool, role: &str) {
        let (kind, cmd) = match running {
            true => ("on-start", self.on_start.clone()),
            false => ("on-stop", self.on_stop.clone()),
        };
        if let Some(cmd) = cmd {
            self.fire(kind, cmd, vec![formation.into(), node.into(), role.into()]);
        }
    }

    /// Queues `cmd args` behind the hooks already running; a failure is remembered.
    fn fire(&self, kind: &'static str, cmd: PathBuf, args: Vec<String>) {
        let me = self.clone();
        tokio::spawn(async move {
            let _turn = me.running.lock().await;
            let outcome = run(kind, &cmd, &args).await;
            let mut last = me.last_failure.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(()) => *last = None,
                Err(e) => {
                    tracing::warn!(hook = %cmd.display(), "{kind} hook failed: {e}");
                    *last = Some(format!("{kind} hook {}: {e}", cmd.display()));
                }
            }
        });
    }

    /// Starts the hook when `old` → `new` changes the role.
    pub fn state_changed(&self, formation: &str, node: &str, old: NodeState, new: NodeState) {
        let Some(cmd) = self.on_role_change.clone() else {
            return;
        };
        if role(old) == role(new) {
            return;
        }
        let args: Vec<String> = vec![
            formation.into(),
            node.into(),
            role(old).into(),
            role(new).into(),
            new.to_string(),
        ];
        self.fire("on-role-change", cmd, args);
    }
}

/// The pre-promote hook: run once per term when the controller asks this node to
/// prepare its promotion, as `PATH <formation> <node> standby primary
/// prepare_promotion`. Until it exits 0 the agent does not report `prepare_promotion`
/// (so the controller waits); a non-zero exit, or [`HOOK_TIMEOUT`] without one, refuses
/// the promotion: the agent reports the refusal and its reason, and the controller
/// promotes another node or gives the old primary its role back.
#[derive(Default)]
pub struct PrePromote {
    cmd: Option<PathBuf>,
    running: Option<(u64, tokio::task::JoinHandle<Result<(), String>>)>,
    passed: Option<u64>,
    /// The term whose promotion the hook refused, and why.
    pub refused: Option<(u64, String)>,
}

impl PrePromote {
    pub fn new(cmd: Option<PathBuf>) -> Self {
        PrePromote {
            cmd,
            ..Default::default()
        }
    }

    /// None: go on with the promotion of `term` (no hook, or it agreed); Some(why):
    /// wait (it runs, or it refused).
    pub async fn gate(&mut self, formation: &str, node: &str, term: u64) -> Option<&'static str> {
        let cmd = self.cmd.clone()?;
        if self.passed == Some(term) {
            return None;
        }
        if self.refused.as_ref().is_some_and(|(t, _)| *t == term) {
            return Some("the pre-promote hook refused this promotion");
        }
        match self.running.take() {
            Some((t, h)) if t == term && h.is_finished() => {
                match h
                    .await
                    .unwrap_or_else(|e| Err(format!("did not finish: {e}")))
                {
                    Ok(()) => {
                        self.passed = Some(term);
                        None
                    }
                    Err(e) => {
                        tracing::warn!(hook = %cmd.display(), term, "pre-promote hook refused the promotion: {e}");
                        self.refused =
                            Some((term, format!("pre-promote hook {}: {e}", cmd.display())));
                        Some("the pre-promote hook refused this promotion")
                    }
                }
            }
            Some((t, h)) if t == term => {
                self.running = Some((t, h));
                Some("the pre-promote hook runs")
            }
            _ => {
                let args: Vec<String> = vec![
                    formation.into(),
                    node.into(),
                    "standby".into(),
                    "primary".into(),
                    NodeState::PreparePromotion.to_string(),
                ];
                let h = tokio::spawn(async move { run("pre-promote", &cmd, &args).await });
                self.running = Some((term, h));
                Some("the pre-promote hook runs")
            }
        }
    }
}

/// Why `path` may not be run as a hook, if it may not: it must be a regular, executable
/// file that only this process's user (or root) owns and may change, in directories
/// only they may change (`files::trusted_path` for root).
pub fn check_hook(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (a link is not followed)".into());
    }
    if meta.mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "owned by uid {}: only root (or the agent's own user) may own a hook (chown root)",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o}: writable by others than its owner (chmod go-w)",
            meta.mode() & 0o7777
        ));
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    // Every directory above the file (the file itself was checked above).
    if me == 0 && !crate::files::trusted_path(path) {
        return Err(format!(
            "{} (or a directory above it) is not root's, or others may write to it: put hooks where only root can change them (e.g. /etc/pgha/hooks)",
            dir.display()
        ));
    }
    Ok(())
}

async fn run(what: &str, cmd: &PathBuf, args: &[String]) -> Result<(), String> {
    run_within(what, cmd, args, HOOK_TIMEOUT).await
}

async fn run_within(
    what: &str,
    cmd: &PathBuf,
    args: &[String],
    timeout: Duration,
) -> Result<(), String> {
    // Checked again at every run: the file may have changed since `create postgres`.
    check_hook(cmd).map_err(|e| format!("not run: {e}"))?;
    let child = tokio::process::Command::new(cmd)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let group = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            // The whole group: a child it left running goes too.
            if let Some(g) = group {
                let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
            }
            return Err(format!("killed after {} s", timeout.as_secs()));
        }
        Ok(Err(e)) => return Err(format!("cannot run it: {e}")),
        Ok(Ok(out)) => out,
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for line in stdout.lines().chain(stderr.lines()) {
        tracing::info!(hook = %cmd.display(), "{line}");
    }
    // What it said last, for the node's error and the events (bounded).
    let said: String = stdout
        .lines()
        .chain(stderr.lines())
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    match out.status.success() {
        true => {
            tracing::info!(hook = %cmd.display(), args = %args.join(" "), "{what} hook ran");
            Ok(())
        }
        false if said.is_empty() => Err(format!("exited with {}", out.status)),
        false => Err(format!("exited with {}: {said}", out.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start and stop hooks get formation, node and role.
    #[tokio::test]
    async fn start_and_stop_hooks_name_the_role() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("calls");
        let script = dir.path().join("hook.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let h = Hooks::new(None).with_start_stop(Some(script.clone()), Some(script));
        h.postgres_changed("f", "n", true, "standby");
        h.postgres_changed("f", "n", false, "primary");
        for _ in 0..100 {
            if std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .count()
                == 2
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "f n standby\nf n primary\n"
        );
    }

    /// A hook file others could change would let them run commands as root.
    #[test]
    fn only_hooks_no_one_else_can_change_are_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_hook(&script).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(check_hook(&script).unwrap_err().contains("go-w"));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_hook(&script).unwrap_err().contains("not executable"));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link.sh");
        std::os::unix::fs::symlink(&script, &link).unwrap();
        assert!(check_hook(&link).unwrap_err().contains("link"));
        if nix::unistd::geteuid().is_root() {
            // In a directory others may write to (they could swap it).
            let open = dir.path().join("open");
            std::fs::create_dir(&open).unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
            let inside = open.join("hook.sh");
            std::fs::copy(&script, &inside).unwrap();
            assert!(check_hook(&inside).unwrap_err().contains("only root"));
            // Owned by another user.
            std::os::unix::fs::chown(&script, Some(65534), None).unwrap();
            assert!(check_hook(&script).unwrap_err().contains("uid 65534"));
        }
    }

    /// A hook runs without the agent's environment, and one that runs past its time is
    /// killed with everything it started.
    #[tokio::test]
    async fn hooks_get_a_clean_environment_and_die_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let pids = dir.path().join("pids");
        let script = dir.path().join("hook.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nenv > {}\nsleep 60 & echo $! > {}\nsleep 60\n",
                out.display(),
                pids.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: a test's own variable, set before the hook starts.
        unsafe { std::env::set_var("PGBACKREST_REPO1_CIPHER_PASS", "agent-secret") };
        let e = run_within("test", &script, &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.contains("killed"), "{e}");
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(!env.contains("agent-secret"), "{env}");
        assert!(env.contains("PATH="), "{env}");
        let child: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut gone = false;
        for _ in 0..50 {
            if !crate::observe::process_alive(child) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "the hook's background child {child} outlived it");
    }

    #[test]
    fn roles_group_states() {
        assert_eq!(role(NodeState::Single), "primary");
        assert_eq!(role(NodeState::WaitPrimary), "primary");
        assert_eq!(role(NodeState::Secondary), "standby");
        assert_eq!(role(NodeState::Demoted), "stopped");
    }

    /// A hook runs once per role change, in order, with its arguments; one that fails
    /// is remembered until one succeeds.
    #[tokio::test]
    async fn hooks_run_per_role_change_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("calls");
        let script = dir.path().join("hook.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\n[ \"$4\" != stopped ]\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let h = Hooks::new(Some(script));
        use NodeState::*;
        h.state_changed("f", "n", Secondary, PreparePromotion); // same role: nothing
        h.state_changed("f", "n", StopReplication, WaitPrimary);
        h.state_changed("f", "n", WaitPrimary, Primary); // same role
        h.state_changed("f", "n", Primary, Demoted);
        let _ = h.running.lock().await;
        for _ in 0..100 {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.lines().count() == 2 && h.last_failure.lock().unwrap().is_some() {
                assert_eq!(
                    text,
                    "f n standby primary wait_primary\nf n primary stopped demoted\n"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "hooks did not run as expected: {:?}",
            std::fs::read_to_string(&out)
        );
    }
}
