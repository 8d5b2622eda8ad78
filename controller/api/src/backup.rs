//! Backups with pgBackRest, across every boundary: the formation file's `backup`
//! section ([`BackupSpec`]), what an assignment carries to the agents
//! ([`BackupSettings`], [`BackupRequest`]), what agents report of archiving and backups
//! ([`ArchiveStatus`], [`BackupJob`], [`BackupInfo`]), and what `pgha show backups`
//! reads ([`BackupsStatus`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Continuous WAL archiving and base backups with pgBackRest: archiving runs on
/// whichever node is primary (standbys archive nothing until promoted), and standbys
/// can fetch WAL from the repository when streaming cannot give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupSpec {
    /// The repository (pgBackRest's `repo1-path`): an absolute path that every node of
    /// the formation reaches as the same storage (an NFS mount), or the path inside an
    /// object store that `options` describes (`repo1-type: s3`…).
    pub repository: String,
    /// pgBackRest stanza; default: the formation's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stanza: Option<String>,
    /// Full backups kept (`repo1-retention-full`, 1-100); older ones and the WAL only
    /// they need are expired after each backup. Default 2.
    #[serde(default = "default_retention_full")]
    pub retention_full: u32,
    /// Backups the controller takes by itself.
    #[serde(default)]
    pub schedule: BackupSchedule,
    /// Further pgBackRest settings for its `[global]` section, by name (e.g.
    /// `repo1-type: s3`, `repo1-s3-bucket`, `compress-type: zst`). Credentials are
    /// refused here: give them to the agents' environment (`PGBACKREST_REPO1_S3_KEY`…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// When the controller asks the primary for a backup by itself: as soon as the last
/// backup of that kind (or a fuller one) finished longer ago than this. A duration:
/// a number and `m`, `h` or `d` (e.g. `24h`, `7d`). Absent: never.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupSchedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_every: Option<String>,
}

fn default_retention_full() -> u32 {
    2
}

/// pgBackRest `[global]` options the formation file may not set: pgha sets them itself
/// (paths of this node, the stanza's Postgres), or they would route around it.
const MANAGED_OPTIONS: &[&str] = &[
    "repo1-path",
    "repo1-retention-full",
    "stanza",
    "log-path",
    "lock-path",
    "spool-path",
    "config",
    "config-path",
    "config-include-path",
    "archive-async",
];

/// pgBackRest `[global]` options a formation file may set (an allowlist): the
/// repository's kind and place in an object store, compression, retention beyond the
/// full backups, parallelism, timeouts and logging levels. Left out on purpose: every
/// option that runs a command or reaches another host by SSH (`cmd-ssh`,
/// `repo1-host*`), turns off TLS verification (`repo1-storage-verify-tls`), or names a
/// file or directory on the VMs (`log-path`…; `repo1-storage-ca-file` is taken: it only
/// adds a CA for the object store, whose endpoint the file names anyway).
pub const ALLOWED_OPTIONS: &[&str] = &[
    "archive-check",
    "archive-copy",
    "archive-get-queue-max",
    "archive-push-queue-max",
    "archive-timeout",
    "backup-standby",
    "buffer-size",
    "checksum-page",
    "compress-level",
    "compress-level-network",
    "compress-type",
    "db-timeout",
    "delta",
    "expire-auto",
    "io-timeout",
    "log-level-console",
    "log-level-file",
    "log-level-stderr",
    "log-timestamp",
    "manifest-save-threshold",
    "process-max",
    "protocol-timeout",
    "repo1-azure-account",
    "repo1-azure-container",
    "repo1-azure-endpoint",
    "repo1-azure-uri-style",
    "repo1-block",
    "repo1-bundle",
    "repo1-bundle-limit",
    "repo1-bundle-size",
    "repo1-cipher-type",
    "repo1-gcs-bucket",
    "repo1-gcs-endpoint",
    "repo1-hardlink",
    "repo1-retention-archive",
    "repo1-retention-archive-type",
    "repo1-retention-diff",
    "repo1-retention-history",
    "repo1-s3-bucket",
    "repo1-s3-endpoint",
    "repo1-s3-region",
    "repo1-s3-requester-pays",
    "repo1-s3-role",
    "repo1-s3-uri-style",
    "repo1-storage-ca-file",
    "repo1-storage-ca-path",
    "repo1-storage-host",
    "repo1-storage-port",
    "repo1-storage-upload-chunk-size",
    "repo1-type",
    "resume",
    "start-fast",
];

/// Whether a pgBackRest option holds a credential (a key, a passphrase, a secret, a
/// token): never in a formation file, taken from the agents' environment instead.
/// The newest PostgreSQL major a pgBackRest release (`2.45`) backs up, where pgha knows
/// it: releases up to 2.45 stop at 15 (Debian 12's 2.45 refuses a 16 or 18 data
/// directory with "unexpected control version", tried). Newer releases: None, not
/// known here; pgBackRest's own error then says it.
pub fn pgbackrest_max_major(version: &str) -> Option<crate::PgMajor> {
    let mut parts = version.trim().split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    ((major, minor) <= (2, 45)).then_some(crate::PgMajor(15))
}

/// From `pgbackrest version` (`pgBackRest 2.45`): the version.
pub fn parse_pgbackrest_version(out: &str) -> Option<String> {
    let v = out.trim().strip_prefix("pgBackRest ")?.trim();
    (!v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')).then(|| v.to_string())
}

pub fn is_credential_option(name: &str) -> bool {
    ["key", "pass", "secret", "token"]
        .iter()
        .any(|w| name.contains(w))
}

/// Why a pgBackRest option name cannot go in a formation file, if it cannot.
pub fn check_option(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("{name:?} is not a pgBackRest option name"));
    }
    if MANAGED_OPTIONS.contains(&name) || name.starts_with("pg") {
        return Err(format!(
            "{name} is set by pgha for each node and cannot be set in a formation"
        ));
    }
    if is_credential_option(name) {
        return Err(format!(
            "{name} is a credential: never put it in a file kept in Git; set PGBACKREST_{} in the agents' environment",
            name.to_ascii_uppercase().replace('-', "_")
        ));
    }
    if !ALLOWED_OPTIONS.contains(&name) {
        return Err(format!(
            "{name} is not among the pgBackRest options a formation file may set: it runs a command, reaches another host, weakens TLS or names a file on the VMs, or pgha does not know it"
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(format!("the value of {name} holds a control character"));
    }
    Ok(())
}

/// Parses a schedule duration (`30m`, `12h`, `7d`) into seconds.
pub fn parse_every(s: &str) -> Result<u64, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let n: u64 = digits
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n <= 100_000)
        .ok_or_else(|| {
            format!("{s:?} is not a duration: use a number and m, h or d (e.g. 24h, 7d)")
        })?;
    let secs = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{s:?} is not a duration: use a number and m, h or d (e.g. 24h, 7d)"
            ));
        }
    };
    Ok(n * secs)
}

impl BackupSchedule {
    /// The backup due at `now_s` (unix seconds) given the repository's `backups`: a
    /// full one when none is younger than `fullEvery`, else a differential one when no
    /// backup at all is younger than `diffEvery`.
    pub fn due(&self, backups: &[BackupInfo], now_s: u64) -> Option<BackupKind> {
        let last = |full_only: bool| {
            backups
                .iter()
                .filter(|b| !full_only || b.kind == BackupKind::Full)
                .map(|b| b.stopped)
                .max()
        };
        let older = |every: &Option<String>, last: Option<u64>| {
            every
                .as_deref()
                .and_then(|e| parse_every(e).ok())
                .is_some_and(|secs| last.is_none_or(|t| now_s.saturating_sub(t) >= secs))
        };
        if older(&self.full_every, last(true)) {
            Some(BackupKind::Full)
        } else if older(&self.diff_every, last(false)) {
            Some(BackupKind::Diff)
        } else {
            None
        }
    }
}

impl BackupSpec {
    /// Problems of the section: (field under `spec.backup`, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut errs = vec![];
        if !self.repository.starts_with('/') || self.repository.chars().any(|c| c.is_control()) {
            errs.push((
                "repository".into(),
                format!(
                    "{:?} must be an absolute path (the same storage on every node)",
                    self.repository
                ),
            ));
        }
        if let Some(s) = &self.stanza
            && !crate::names::valid_identifier(s)
        {
            errs.push((
                "stanza".into(),
                format!(
                    "{s:?} is not a valid stanza: 1-63 lowercase letters, digits, '_' or '-', starting with a letter"
                ),
            ));
        }
        if !(1..=100).contains(&self.retention_full) {
            errs.push((
                "retentionFull".into(),
                format!("{} is out of range 1-100", self.retention_full),
            ));
        }
        for (name, v) in [
            ("fullEvery", &self.schedule.full_every),
            ("diffEvery", &self.schedule.diff_every),
        ] {
            if let Some(v) = v
                && let Err(e) = parse_every(v)
            {
                errs.push((format!("schedule.{name}"), e));
            }
        }
        for (k, v) in &self.options {
            if let Err(e) = check_option(k, v) {
                errs.push((format!("options.{k}"), e));
            }
        }
        errs
    }

    /// What the agents need, for formation `formation`.
    pub fn settings(&self, formation: &str) -> BackupSettings {
        BackupSettings {
            stanza: self.stanza.clone().unwrap_or_else(|| formation.to_string()),
            repository: self.repository.clone(),
            retention_full: self.retention_full,
            options: self.options.clone(),
        }
    }
}

/// A formation's backup settings as the agents apply them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSettings {
    pub stanza: String,
    pub repository: String,
    pub retention_full: u32,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl BackupSettings {
    /// What the agent checks again before it writes an assignment's settings into
    /// `pgbackrest.conf` and `archive_command` (a controller of another version, or a
    /// store edited by hand, must not get a newline or a shell word through).
    pub fn check(&self) -> Result<(), String> {
        if !self.repository.starts_with('/')
            || self.repository.chars().any(|c| c.is_control())
            || self.repository.split('/').any(|c| c == "..")
        {
            return Err(format!(
                "backup repository {:?} is not an absolute path",
                self.repository
            ));
        }
        if !crate::names::valid_identifier(&self.stanza) {
            return Err(format!("backup stanza {:?} is not a name", self.stanza));
        }
        Ok(())
    }
}

/// Kinds of pgBackRest backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Full,
    Diff,
    Incr,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
}

impl std::str::FromStr for BackupKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(BackupKind::Full),
            "diff" => Ok(BackupKind::Diff),
            "incr" => Ok(BackupKind::Incr),
            _ => Err(format!("{s:?} is not a backup type: full, diff or incr")),
        }
    }
}

impl std::fmt::Display for BackupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backup the controller asks one node to take: once per `id` (ids only grow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    pub id: u64,
    pub kind: BackupKind,
}

/// How far a backup job got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// The last backup job of a node, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupJob {
    pub id: u64,
    pub kind: BackupKind,
    pub state: JobState,
    /// How long it ran (so far).
    pub elapsed_ms: u64,
    /// pgBackRest's progress line while running, its error when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// WAL archiving on a node, from `pg_stat_archiver` (reported by a node whose
/// `archive_mode` is on and that is not in recovery).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveStatus {
    pub archived_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// Seconds since the last segment was archived (None: none since the statistics
    /// were reset, or since this node became primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_s_ago: Option<u64>,
    pub failed_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_s_ago: Option<u64>,
    /// While failing: the archive command's last error, as pgBackRest logged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ArchiveStatus {
    /// The archive command's last attempt failed (Postgres retries it, and keeps the
    /// WAL until it succeeds).
    pub fn failing(&self) -> bool {
        match (self.last_failed_s_ago, self.last_archived_s_ago) {
            (Some(_), None) => true,
            (Some(failed), Some(ok)) => failed < ok,
            _ => false,
        }
    }
}

/// One backup in the repository, from `pgbackrest info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub label: String,
    pub kind: BackupKind,
    /// Unix seconds.
    pub started: u64,
    pub stopped: u64,
    /// Size of the database it copies, and of what the repository stores for it.
    pub database_bytes: u64,
    pub repo_bytes: u64,
    /// The WAL a restore of it needs, first and last segment.
    pub wal_start: String,
    pub wal_stop: String,
}

/// `pgha show backups`: the repository as the formation's primary last read it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackupsStatus {
    pub formation: String,
    /// None: the formation file has no `backup` section.
    pub settings: Option<BackupSettings>,
    pub backups: Vec<BackupInfo>,
    /// The last backup job asked of a node, and the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<(String, BackupJob)>,
    /// A job asked and not yet started by its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<(String, BackupRequest)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbackrest_versions_say_which_majors_they_back_up() {
        assert_eq!(
            parse_pgbackrest_version("pgBackRest 2.45\n").as_deref(),
            Some("2.45")
        );
        assert_eq!(
            parse_pgbackrest_version("bash: pgbackrest: not found"),
            None
        );
        assert_eq!(pgbackrest_max_major("2.45"), Some(crate::PgMajor(15)));
        assert_eq!(pgbackrest_max_major("2.38"), Some(crate::PgMajor(15)));
        assert_eq!(pgbackrest_max_major("2.54.1"), None);
        assert_eq!(pgbackrest_max_major("x"), None);
    }

    #[test]
    fn durations_parse_and_bad_ones_say_how() {
        assert_eq!(parse_every("30m"), Ok(1800));
        assert_eq!(parse_every("24h"), Ok(86_400));
        assert_eq!(parse_every("7d"), Ok(604_800));
        for bad in ["", "h", "0h", "5", "5s", "1w", "-1h", "1.5h"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_schedule_asks_for_a_full_then_differentials() {
        let s = BackupSchedule {
            full_every: Some("7d".into()),
            diff_every: Some("24h".into()),
        };
        let b = |kind, stopped| BackupInfo {
            label: String::new(),
            kind,
            started: stopped,
            stopped,
            database_bytes: 0,
            repo_bytes: 0,
            wal_start: String::new(),
            wal_stop: String::new(),
        };
        let day = 86_400;
        let now = 100 * day;
        assert_eq!(s.due(&[], now), Some(BackupKind::Full));
        let full = b(BackupKind::Full, now - 2 * day);
        assert_eq!(
            s.due(std::slice::from_ref(&full), now),
            Some(BackupKind::Diff)
        );
        let diff = b(BackupKind::Diff, now - 3600);
        assert_eq!(s.due(&[full.clone(), diff.clone()], now), None);
        assert_eq!(
            s.due(&[b(BackupKind::Full, now - 8 * day), diff], now),
            Some(BackupKind::Full)
        );
        let only_full = BackupSchedule {
            full_every: Some("7d".into()),
            diff_every: None,
        };
        assert_eq!(only_full.due(&[full], now), None);
        assert_eq!(BackupSchedule::default().due(&[], now), None);
    }

    #[test]
    fn credentials_and_managed_options_are_refused() {
        assert!(check_option("repo1-type", "s3").is_ok());
        assert!(check_option("compress-type", "zst").is_ok());
        let e = check_option("repo1-s3-key-secret", "x").unwrap_err();
        assert!(e.contains("PGBACKREST_REPO1_S3_KEY_SECRET"), "{e}");
        assert!(check_option("repo1-path", "/x").is_err());
        assert!(check_option("pg1-path", "/x").is_err());
        assert!(check_option("Repo1", "x").is_err());
        assert!(check_option("start-fast", "y\nrepo1-path=/evil").is_err());
    }

    /// The second review: options that run commands, reach hosts by SSH or weaken TLS
    /// were accepted.
    #[test]
    fn options_that_run_commands_or_weaken_tls_are_refused() {
        for name in [
            "cmd-ssh",
            "repo1-host-cmd",
            "repo1-host",
            "repo1-host-user",
            "repo1-storage-verify-tls",
            "log-path",
            "exec-id",
        ] {
            let e = check_option(name, "/bin/sh").unwrap_err();
            assert!(e.contains(name), "{e}");
        }
        for name in ALLOWED_OPTIONS {
            assert!(check_option(name, "x").is_ok(), "{name}");
        }
    }

    #[test]
    fn archiving_is_failing_when_the_last_attempt_failed() {
        let st = |ok: Option<u64>, failed: Option<u64>| ArchiveStatus {
            last_archived_s_ago: ok,
            last_failed_s_ago: failed,
            ..Default::default()
        };
        assert!(!st(None, None).failing());
        assert!(!st(Some(3), None).failing());
        assert!(st(None, Some(3)).failing());
        assert!(st(Some(10), Some(3)).failing());
        assert!(!st(Some(3), Some(10)).failing());
    }
}
