//! Files the agent owns inside PGDATA. Each is rendered from the assignment and fully
//! rewritten when it differs, with a header saying who wrote it:
//! - `postgresql.pgha.conf`, included from `postgresql.conf`;
//! - `standby.signal` for standby states;
//! - a managed block at the top of `pg_hba.conf` (lines outside the block are the user's).

use crate::config::AgentConfig;
use crate::files;
pub use crate::plan::{LogicalSlots, Role};
use crate::postgres::bin as pg;
use pgha_api::host::Host;
use pgha_api::{PeerNode, REPLICATION_USER};
use std::net::IpAddr;

pub const CONF_FILE: &str = "postgresql.pgha.conf";
const INCLUDE_LINE: &str = "include_if_exists = 'postgresql.pgha.conf'\t# added by pgha";
const HBA_BEGIN: &str = "# BEGIN pgha: managed by the pgha agent, rewritten on every change";
const HBA_END: &str = "# END pgha";

/// Settings from the formation file, by name.
pub type Parameters = std::collections::BTreeMap<String, String>;

/// A string value as postgresql.conf reads it back unchanged: the file's lexer takes no
/// newline inside quotes and reads backslash escapes, so `\\`, `'` and control
/// characters are escaped (a trailing backslash or a newline would otherwise break the
/// file, or end the value and start a setting of the writer's choice).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\{:03o}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn listen_addresses(hostname: &str) -> String {
    match hostname.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => ip.to_string(),
        _ if hostname == "localhost" => "localhost".into(),
        _ => "*".into(),
    }
}

/// Renders `postgresql.pgha.conf` for a role.
pub fn render_conf(
    cfg: &AgentConfig,
    role: &Role,
    parameters: &Parameters,
    backup: Option<&pgha_api::BackupSettings>,
    logical_slots: &LogicalSlots,
) -> String {
    let mut out = String::from(
        "# Written by the pgha agent; rewritten whenever the node's role changes. Do not edit:\n\
         # put your own settings in postgresql.conf or with ALTER SYSTEM.\n",
    );
    if !parameters.is_empty() {
        out.push_str("# From the formation file (postgresql.parameters):\n");
        for (k, v) in parameters {
            // Checked by the controller too; a name that is not a plain setting name (or
            // one pgha manages) would let a value rewrite the rest of the file.
            match pgha_api::validate::check_parameter_name(k) {
                Ok(()) => out.push_str(&format!("{k} = {}\n", quote(v))),
                Err(e) => tracing::error!("formation parameter skipped: {e}"),
            }
        }
        out.push_str("# Managed by pgha:\n");
    }
    let mut set = |k: &str, v: String| out.push_str(&format!("{k} = {v}\n"));
    set("listen_addresses", quote(&listen_addresses(&cfg.hostname)));
    set("port", cfg.pgport.to_string());
    // The socket lives beside PGDATA, not in it: pg_rewind and pg_basebackup copy
    // PGDATA and must not meet a socket there.
    set(
        "unix_socket_directories",
        quote(&cfg.state_dir().display().to_string()),
    );
    // The file's logical slots need logical decoding on every node: a standby's copy
    // is loaded at its start (or synchronized) only with it, and is promoted with it.
    set(
        "wal_level",
        match logical_slots {
            LogicalSlots::None => "replica",
            _ => "logical",
        }
        .into(),
    );
    // A sender per standby (up to 8), two per base backup (`-X stream`) when several
    // standbys join at once, a temporary slot each: 24 leaves room at the 9-node limit.
    set("max_wal_senders", "24".into());
    set("max_replication_slots", "24".into());
    set("wal_log_hints", "on".into());
    set("hot_standby", "on".into());
    set("hot_standby_feedback", "on".into());
    set("wal_keep_size", quote("512MB"));
    // Replication links notice a dead peer within seconds (and the standby replies every
    // second, which is what keeps a primary's lease alive).
    set("wal_sender_timeout", quote("5s"));
    set("wal_receiver_timeout", quote("2s"));
    set("wal_retrieve_retry_interval", quote("1s"));
    set("wal_receiver_status_interval", quote("1s"));
    set("recovery_target_timeline", quote("latest"));
    if cfg.ssl_self_signed {
        set("ssl", "on".into());
        set("ssl_cert_file", quote("server.crt"));
        set("ssl_key_file", quote("server.key"));
    }
    // Checked by the controller too; a value that is not a path or a name would reach
    // the shell through archive_command.
    let backup = backup.filter(|b| match b.check() {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("backup settings skipped: {e}");
            false
        }
    });
    if let Some(b) = backup {
        // On every node: Postgres archives only while primary, so a promoted standby
        // archives at once, with no restart (archive_mode needs one).
        set("archive_mode", "on".into());
        set(
            "archive_command",
            quote(&crate::backup::archive_command(cfg, b)),
        );
        set(
            "restore_command",
            quote(&crate::backup::restore_command(cfg, b)),
        );
        // A quiet primary still archives its WAL within a minute: a point-in-time
        // recovery can reach any second older than that.
        if !parameters.contains_key("archive_timeout") {
            set("archive_timeout", quote("60s"));
        }
    }
    match role {
        Role::Primary {
            synchronous_standby_names,
            max_slot_wal_keep_size,
        } => {
            set(
                "synchronous_standby_names",
                quote(synchronous_standby_names),
            );
            set("max_slot_wal_keep_size", quote(max_slot_wal_keep_size));
            if let LogicalSlots::Failover { standby_slots } = logical_slots {
                set(
                    "synchronized_standby_slots",
                    quote(&standby_slots.join(",")),
                );
            }
        }
        Role::Standby {
            upstream,
            slot,
            max_slot_wal_keep_size,
        } => {
            set("synchronous_standby_names", quote(""));
            set("max_slot_wal_keep_size", quote(max_slot_wal_keep_size));
            let (conninfo, slot) = match upstream {
                Some((host, port)) => (
                    pg::primary_conninfo(cfg, host, *port),
                    if *slot {
                        pgha_api::replication_slot_name(cfg.node_id)
                    } else {
                        String::new()
                    },
                ),
                None => (String::new(), String::new()),
            };
            // Slot synchronization reads the primary's failover slots through this
            // link (its `dbname` is there); a cascading standby has no slot of its own
            // on the primary and syncs none.
            if matches!(logical_slots, LogicalSlots::Failover { .. }) && !slot.is_empty() {
                set("sync_replication_slots", "on".into());
            }
            set("primary_conninfo", quote(&conninfo));
            set("primary_slot_name", quote(&slot));
        }
        Role::StandbyOf {
            hosts,
            slot,
            max_slot_wal_keep_size,
        } => {
            set("synchronous_standby_names", quote(""));
            set("max_slot_wal_keep_size", quote(max_slot_wal_keep_size));
            set("primary_conninfo", quote(&pg::source_conninfo(cfg, hosts)));
            set(
                "primary_slot_name",
                quote(slot.as_deref().unwrap_or_default()),
            );
        }
        Role::Stopped => {}
    }
    out
}

/// Renders the managed pg_hba block for the peers, with the peers' names resolved by
/// the system's resolver ([`resolve_host`]).
pub fn render_hba_block(cfg: &AgentConfig, peers: &[PeerNode]) -> String {
    render_hba_block_with(cfg, peers, resolve_host)
}

/// The addresses a DNS name resolves to now (none when it does not resolve).
pub fn resolve_host(name: &str) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    let mut ips: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    ips
}

/// Renders the managed pg_hba block. Every entry names an address (a peer known by DNS
/// name gets one entry per address `resolve` gives, so Postgres never needs a reverse
/// lookup; a name that resolves to nothing is left out and logged), every line has
/// exactly its five fields, the database name is quoted, and comments carry only
/// name-safe characters.
pub fn render_hba_block_with(
    cfg: &AgentConfig,
    peers: &[PeerNode],
    resolve: impl Fn(&str) -> Vec<IpAddr>,
) -> String {
    let auth = cfg.auth.hba_name();
    let kind = if cfg.ssl_self_signed {
        "hostssl"
    } else {
        "host"
    };
    let db = hba_quote(&cfg.dbname);
    let mut out = format!("{HBA_BEGIN}\n");
    for p in peers {
        let addrs: Vec<String> = match Host::parse(&p.host) {
            Ok(Host::Dns(dns)) => {
                let ips = resolve(&dns);
                if ips.is_empty() {
                    tracing::error!(peer = p.node_id, host = %dns, "peer left out of pg_hba.conf: its name resolves to no address");
                }
                ips.into_iter()
                    .map(|ip| Host::Ip(ip).hba_address())
                    .collect()
            }
            Ok(h) => vec![h.hba_address()],
            Err(e) => {
                tracing::error!(peer = p.node_id, "peer left out of pg_hba.conf: {e}");
                continue;
            }
        };
        let name = comment_safe(&p.name);
        for addr in addrs {
            out.push_str(&format!(
                "{kind} replication {REPLICATION_USER} {addr} {auth}\t# {name}\n"
            ));
            out.push_str(&format!(
                "{kind} postgres {REPLICATION_USER} {addr} {auth}\t# {name} (pg_rewind)\n"
            ));
            if let Some(db) = &db {
                out.push_str(&format!("{kind} {db} all {addr} {auth}\t# {name}\n"));
            }
        }
    }
    out.push_str(HBA_END);
    out.push('\n');
    out
}

/// A database name as one pg_hba field: double-quoted (so `all` or `replication` mean
/// that database, not the keyword); None when it holds a character no quoting carries.
fn hba_quote(name: &str) -> Option<String> {
    if name.is_empty() || name.chars().any(|c| c == '"' || c.is_control()) {
        tracing::error!("database name {name:?} cannot be written to pg_hba.conf");
        return None;
    }
    Some(format!("\"{name}\""))
}

fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Replaces (or inserts at the top) the managed block of a pg_hba.conf text.
pub fn splice_hba(existing: &str, block: &str) -> String {
    match (existing.find(HBA_BEGIN), existing.find(HBA_END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &existing[e + HBA_END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{block}{after}", &existing[..b])
        }
        _ => format!("{block}{existing}"),
    }
}

/// Makes PGDATA's files match `role` and `peers`. Returns true when something changed
/// (the caller reloads a running Postgres).
pub fn apply(
    cfg: &AgentConfig,
    role: &Role,
    parameters: &Parameters,
    peers: &[PeerNode],
    backup: Option<&pgha_api::BackupSettings>,
    logical_slots: &LogicalSlots,
    who: Option<pg::RunAs>,
) -> Result<bool, pg::PgError> {
    let pgdata = &cfg.pgdata;
    let mut changed = false;
    let main_conf = pgdata.join("postgresql.conf");
    let text = files::read_nofollow(&main_conf)?.ok_or_else(|| pg::PgError::Io {
        what: format!("reading {}", main_conf.display()),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    if !text.lines().any(|l| l.trim() == INCLUDE_LINE) {
        changed |= files::write_if_changed(&main_conf, &format!("{text}\n{INCLUDE_LINE}\n"), who)?;
    }
    if *role != Role::Stopped {
        changed |= files::write_if_changed(
            &pgdata.join(CONF_FILE),
            &render_conf(cfg, role, parameters, backup, logical_slots),
            who,
        )?;
    }
    let signal = pgdata.join("standby.signal");
    if matches!(role, Role::Standby { .. } | Role::StandbyOf { .. }) && !signal.exists() {
        files::write_if_changed(&signal, "", who)?;
        changed = true;
    }
    if !cfg.skip_pg_hba {
        let hba = pgdata.join("pg_hba.conf");
        let existing = files::read_nofollow(&hba)?.unwrap_or_default();
        let spliced = splice_hba(&existing, &render_hba_block(cfg, peers));
        changed |= files::write_if_changed(&hba, &spliced, who)?;
    }
    Ok(changed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::AuthMethod;

    pub(crate) fn cfg() -> AgentConfig {
        AgentConfig {
            pgdata: "/tmp/x/pgdata".into(),
            pgport: 5501,
            hostname: "127.0.0.1".into(),
            dbname: "appdb".into(),
            username: "ha-admin".into(),
            monitor: "http://127.0.0.1:5440".into(),
            formation: "default".into(),
            name: "node_a".into(),
            node_id: 2,
            pg_bin_dir: "/usr/lib/postgresql/15/bin".into(),
            pg_bin_dirs: vec![],
            auth: AuthMethod::Trust,
            ssl_self_signed: false,
            skip_pg_hba: false,
            os_user: None,
            http_port: 0,
            replication_password: "secret".into(),
            node_token: None,
            restore_from: None,
            metrics_listen: None,
            health_allow: vec![],
            on_role_change: None,
            pre_promote: None,
            on_start: None,
            on_stop: None,
        }
    }

    /// Tests never ask the system's resolver: every name is 10.9.9.9.
    fn fake_resolve(_: &str) -> Vec<IpAddr> {
        vec!["10.9.9.9".parse().unwrap()]
    }

    /// A peer known by DNS name is written as the addresses it resolves to, never as
    /// the name (which would make Postgres depend on reverse DNS); a name that resolves
    /// to nothing is left out.
    #[test]
    fn peers_known_by_name_are_written_as_their_addresses() {
        let peer = |id, host: &str| PeerNode {
            node_id: id,
            name: format!("node_{id}"),
            host: host.into(),
            port: 5432,
            slot: true,
        };
        let resolve = |name: &str| match name {
            "db-b.internal" => vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            _ => vec![],
        };
        let block = render_hba_block_with(
            &cfg(),
            &[peer(2, "db-b.internal"), peer(3, "gone.internal")],
            resolve,
        );
        assert!(
            block.contains("replication pgha_replicator 10.0.0.7/32 "),
            "{block}"
        );
        assert!(
            block.contains("replication pgha_replicator fd00::7/128 "),
            "{block}"
        );
        assert!(
            !block.contains("db-b.internal") && !block.contains("gone.internal"),
            "{block}"
        );
        assert!(
            !block.contains("node_3"),
            "an unresolved peer was written: {block}"
        );
    }

    #[test]
    fn standby_conf_points_at_upstream_with_own_slot() {
        let c = render_conf(
            &cfg(),
            &Role::Standby {
                upstream: Some(("10.0.0.5".into(), 5432)),
                slot: true,
                max_slot_wal_keep_size: "4GB".into(),
            },
            &Parameters::new(),
            None,
            &LogicalSlots::None,
        );
        assert!(
            c.contains("primary_conninfo = 'host=''10.0.0.5'' port=5432 user=''pgha_replicator''")
        );
        assert!(c.contains("application_name=''pgha_standby_2''"));
        assert!(c.contains("primary_slot_name = 'pgha_slot_2'"));
        assert!(c.contains("listen_addresses = '127.0.0.1'"));
        // Its cascading standbys' slots are bounded too.
        assert!(c.contains("max_slot_wal_keep_size = '4GB'"), "{c}");
        let cut = render_conf(
            &cfg(),
            &Role::Standby {
                upstream: None,
                slot: true,
                max_slot_wal_keep_size: "4GB".into(),
            },
            &Parameters::new(),
            None,
            &LogicalSlots::None,
        );
        assert!(cut.contains("primary_conninfo = ''"));
        let from_standby = render_conf(
            &cfg(),
            &Role::Standby {
                upstream: Some(("10.0.0.6".into(), 5432)),
                slot: false,
                max_slot_wal_keep_size: "4GB".into(),
            },
            &Parameters::new(),
            None,
            &LogicalSlots::None,
        );
        assert!(from_standby.contains("primary_conninfo = 'host=''10.0.0.6'' port=5432"));
        assert!(from_standby.contains("primary_slot_name = ''"));
    }

    #[test]
    fn a_standby_formations_leader_streams_from_the_source_preferring_its_standbys() {
        let c = render_conf(
            &cfg(),
            &Role::StandbyOf {
                hosts: vec![("10.1.0.5".into(), 5432), ("10.1.0.6".into(), 5433)],
                slot: Some("dr_site".into()),
                max_slot_wal_keep_size: "4GB".into(),
            },
            &Parameters::new(),
            None,
            &LogicalSlots::None,
        );
        assert!(
            c.contains("primary_conninfo = 'host=''10.1.0.5,10.1.0.6'' port=5432,5433 "),
            "{c}"
        );
        assert!(c.contains("target_session_attrs=prefer-standby'"), "{c}");
        assert!(
            c.contains("application_name=''pgha_dr_default_2''"),
            "never a pgha_standby_<id> name the source would count: {c}"
        );
        assert!(c.contains("primary_slot_name = 'dr_site'"), "{c}");
        assert!(c.contains("synchronous_standby_names = ''"), "{c}");
    }

    /// Issue 26: on 17 and later the primary names the standbys a logical consumer
    /// waits for, and a standby streaming through its slot synchronizes the failover
    /// slots; a cascading standby (no slot on the primary) does not.
    #[test]
    fn failover_slots_are_configured_on_the_primary_and_its_direct_standbys() {
        let slots = LogicalSlots::Failover {
            standby_slots: vec!["pgha_slot_2".into(), "pgha_slot_3".into()],
        };
        let primary = render_conf(
            &cfg(),
            &Role::Primary {
                synchronous_standby_names: "ANY 1 (pgha_standby_2)".into(),
                max_slot_wal_keep_size: "8GB".into(),
            },
            &Default::default(),
            None,
            &slots,
        );
        assert!(primary.contains("wal_level = logical"), "{primary}");
        assert!(
            primary.contains("synchronized_standby_slots = 'pgha_slot_2,pgha_slot_3'"),
            "{primary}"
        );
        let standby = |slot: bool, slots: &LogicalSlots| {
            render_conf(
                &cfg(),
                &Role::Standby {
                    upstream: Some(("10.0.0.1".into(), 5432)),
                    slot,
                    max_slot_wal_keep_size: "8GB".into(),
                },
                &Default::default(),
                None,
                slots,
            )
        };
        let direct = standby(true, &slots);
        assert!(direct.contains("sync_replication_slots = on"), "{direct}");
        assert!(direct.contains("dbname=''postgres''"), "{direct}");
        assert!(!standby(false, &slots).contains("sync_replication_slots"));
        let copied = standby(true, &LogicalSlots::Copied);
        assert!(
            copied.contains("wal_level = logical") && !copied.contains("sync_replication_slots")
        );
        assert!(standby(true, &LogicalSlots::None).contains("wal_level = replica"));
    }

    /// The second review: a formation's settings could run commands or load code on
    /// every VM. The agent checks again what the controller refused (a controller of an
    /// older version, or a hand-written assignment, must not get them through).
    #[test]
    fn settings_that_run_commands_or_load_code_never_reach_postgresql_conf() {
        let refused = pgha_api::validate::NEVER_FROM_A_FILE;
        let parameters = refused
            .iter()
            .map(|k| (k.to_string(), "/tmp/evil".to_string()))
            .chain([("work_mem".to_string(), "16MB".to_string())])
            .collect();
        let c = render_conf(
            &cfg(),
            &Role::Primary {
                synchronous_standby_names: String::new(),
                max_slot_wal_keep_size: "8GB".into(),
            },
            &parameters,
            None,
            &LogicalSlots::None,
        );
        for name in refused {
            assert!(!c.contains(name), "{name} reached the file:\n{c}");
        }
        assert!(!c.contains("evil"), "{c}");
        assert!(c.contains("work_mem = '16MB'"), "{c}");
    }

    #[test]
    fn primary_conf_quotes_sync_names() {
        let c = render_conf(
            &cfg(),
            &Role::Primary {
                synchronous_standby_names: "ANY 1 (pgha_standby_3)".into(),
                max_slot_wal_keep_size: "8GB".into(),
            },
            &[("work_mem".to_string(), "16MB".to_string())]
                .into_iter()
                .collect(),
            Some(&pgha_api::BackupSettings {
                stanza: "orders".into(),
                repository: "/srv/backups".into(),
                retention_full: 2,
                options: Default::default(),
            }),
            &LogicalSlots::None,
        );
        assert!(c.contains("archive_mode = on"), "{c}");
        assert!(
            c.contains("--stanza=''orders'' archive-push %p'"),
            "the archive command is quoted for the shell, then for postgresql.conf: {c}"
        );
        assert!(c.contains("archive-get %f \"%p\"'"), "{c}");
        assert!(c.contains("synchronous_standby_names = 'ANY 1 (pgha_standby_3)'"));
        assert!(c.contains("work_mem = '16MB'"));
        assert!(c.contains("max_slot_wal_keep_size = '8GB'"));
        assert!(!c.contains("primary_conninfo"));
    }

    #[test]
    fn hba_block_is_replaced_not_duplicated_and_user_lines_survive() {
        let peers = vec![PeerNode {
            node_id: 3,
            name: "node_b".into(),
            host: "10.0.0.6".into(),
            port: 5432,
            slot: true,
        }];
        let user = "host appdb all 10.1.0.0/16 trust\n";
        let once = splice_hba(user, &render_hba_block_with(&cfg(), &peers, fake_resolve));
        let twice = splice_hba(&once, &render_hba_block_with(&cfg(), &peers, fake_resolve));
        assert_eq!(once, twice);
        assert!(once.ends_with(user));
        assert!(once.contains("host replication pgha_replicator 10.0.0.6/32 trust"));
        let none = splice_hba(&once, &render_hba_block_with(&cfg(), &[], fake_resolve));
        assert!(!none.contains("10.0.0.6"));
        assert!(none.ends_with(user));
    }

    /// pg_hba fields as Postgres splits them: whitespace outside double quotes.
    fn hba_fields(line: &str) -> Vec<String> {
        let mut fields = vec![];
        let mut cur = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                '#' if !quoted => break,
                c if c.is_whitespace() && !quoted => {
                    if !cur.is_empty() {
                        fields.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            fields.push(cur);
        }
        fields
    }

    #[test]
    fn hostile_hosts_never_reach_pg_hba() {
        let mut c = cfg();
        c.dbname = "all".into();
        let peers: Vec<PeerNode> = [
            "all",
            "0.0.0.0/0",
            "db\nhost all all 0.0.0.0/0 trust",
            "a b",
        ]
        .iter()
        .enumerate()
        .map(|(i, h)| PeerNode {
            node_id: i as u64 + 3,
            name: "x\nhost all all 0.0.0.0/0 trust".into(),
            host: h.to_string(),
            port: 5432,
            slot: true,
        })
        .collect();
        let block = render_hba_block_with(&c, &peers, fake_resolve);
        assert_eq!(block.lines().count(), 2, "{block}");
        let ok = render_hba_block_with(
            &c,
            &[PeerNode {
                node_id: 3,
                name: "n\nhost all all 0.0.0.0/0 trust".into(),
                host: "10.0.0.6".into(),
                port: 5432,
                slot: true,
            }],
            fake_resolve,
        );
        assert!(ok.contains("host \"all\" all 10.0.0.6/32 trust"), "{ok}");
        assert!(!ok.contains("0.0.0.0/0 trust\n"), "{ok}");
    }

    proptest::proptest! {
        #[test]
        fn every_hba_line_has_exactly_five_fields(
            hosts in proptest::collection::vec("[a-z0-9 .:/\\[\\]\n\"#-]{0,20}", 1..4),
            names in proptest::collection::vec(".{0,12}", 4),
            dbname in ".{0,12}",
            ssl: bool,
        ) {
            let mut c = cfg();
            c.dbname = dbname;
            c.ssl_self_signed = ssl;
            let peers: Vec<PeerNode> = hosts
                .iter()
                .zip(&names)
                .enumerate()
                .map(|(i, (h, n))| PeerNode {
                    node_id: i as u64 + 3,
                    name: n.clone(),
                    host: h.clone(),
                    port: 5432,
                    slot: true,
                })
                .collect();
            let block = render_hba_block_with(&c, &peers, fake_resolve);
            for line in block.lines() {
                if line == HBA_BEGIN || line == HBA_END {
                    continue;
                }
                let f = hba_fields(line);
                proptest::prop_assert_eq!(f.len(), 5, "{:?} in {:?}", line, block);
                proptest::prop_assert!(f[0] == "host" || f[0] == "hostssl");
                proptest::prop_assert!(f[3] != "all" && !f[3].contains("/0"), "{}", line);
                proptest::prop_assert!(f[3].ends_with("/32") || f[3].ends_with("/128") || pgha_api::host::Host::parse(&f[3]).is_ok());
            }
        }

        #[test]
        fn conf_values_read_back_as_one_setting(v in ".{0,30}") {
            let line = format!("x = {}", quote(&v));
            proptest::prop_assert_eq!(line.lines().count(), 1);
            // Undo the escapes as postgresql.conf's lexer does: the value comes back whole.
            let inner = &quote(&v)[1..quote(&v).len() - 1];
            let mut back = String::new();
            let mut chars = inner.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\'' => { chars.next(); back.push('\''); }
                    '\\' => match chars.next() {
                        Some('n') => back.push('\n'),
                        Some('r') => back.push('\r'),
                        Some(d) if d.is_digit(8) => {
                            let mut n = d.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                if let Some(d) = chars.peek().and_then(|d| d.to_digit(8)) {
                                    n = n * 8 + d;
                                    chars.next();
                                }
                            }
                            back.push(char::from_u32(n).unwrap_or('?'));
                        }
                        Some(o) => back.push(o),
                        None => back.push('\\'),
                    },
                    c => back.push(c),
                }
            }
            proptest::prop_assert_eq!(back, v);
        }
    }
}
