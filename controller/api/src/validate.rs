//! Reading and validating formation files. This module is the only place that names the
//! YAML crate, so it can be swapped in one file.
//!
//! Every error says where (`file:line:col`), which field, and what is wrong; all errors of
//! a file are returned at once. A file is accepted whole or not at all.

use crate::formation::{API_VERSION, FormationDoc};
use std::collections::HashSet;
use std::fmt;

/// Renders a value as YAML (for `--yaml` output).
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

/// Files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// One thing wrong with a formation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// Dotted path of the field (`spec.nodes[1].candidatePriority`), or `(file)`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.field, self.message
        )
    }
}

/// Parses and validates one formation file's bytes.
pub fn parse_formation(file: &str, bytes: &[u8]) -> Result<FormationDoc, Vec<ConfigError>> {
    let whole = |message: String| {
        vec![ConfigError {
            file: file.to_string(),
            line: 1,
            column: 1,
            field: "(file)".into(),
            message,
        }]
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(whole(format!(
            "file is {} bytes; formation files are limited to {} bytes",
            bytes.len(),
            MAX_FILE_BYTES
        )));
    }
    if bytes.contains(&0) {
        return Err(whole("binary data (NUL bytes): not a YAML file".into()));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(whole("not UTF-8 text: not a YAML file".into()));
    };
    let meaningful = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---");
    if !meaningful {
        return Err(whole(
            "file is empty: expected a Formation document (apiVersion, kind, metadata, spec)"
                .into(),
        ));
    }
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_aliases: 100,
            max_anchors: 100,
            max_depth: 50,
            max_nodes: 100_000,
            max_documents: 1,
        },
    };
    // First read the whole document untyped: syntax errors, duplicate keys, alias
    // bombs and extra documents are caught before any field is looked at.
    let untyped: Result<serde_json::Value, _> =
        serde_saphyr::from_str_with_options(text, options.clone());
    let typed =
        untyped.and_then(|_| serde_saphyr::from_str_with_options::<FormationDoc>(text, options));
    let doc: FormationDoc = match typed {
        Ok(d) => d,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line() as u32, l.column() as u32))
                .unwrap_or((1, 1));
            let message = plain_message(&e.without_snippet().to_string());
            let mut field = path_at(text, line as usize);
            // serde points a missing field at the mapping's last key: name the missing one.
            if let Some(missing) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                let parent = field.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
                field = if parent.is_empty() {
                    missing.to_string()
                } else {
                    format!("{parent}.{missing}")
                };
            }
            return Err(vec![ConfigError {
                file: file.to_string(),
                line,
                column,
                field,
                message,
            }]);
        }
    };
    let errors = check(&doc);
    if errors.is_empty() {
        Ok(doc)
    } else {
        Err(errors
            .into_iter()
            .map(|(field, message)| {
                let (line, column) = locate_nearest(text, &field);
                ConfigError {
                    file: file.to_string(),
                    line,
                    column,
                    field,
                    message,
                }
            })
            .collect())
    }
}

/// The parser's message for an operator: no trailing position (we print it first), no
/// hints about parser options, budget breaches in words.
fn plain_message(raw: &str) -> String {
    let mut m = raw.to_string();
    if let Some(i) = m.rfind(" at line ") {
        let tail = &m[i + " at line ".len()..];
        let is_position = tail.split_once(", column ").is_some_and(|(l, c)| {
            l.chars().all(|x| x.is_ascii_digit()) && c.chars().all(|x| x.is_ascii_digit())
        });
        if is_position {
            m.truncate(i);
        }
    }
    if let Some(i) = m.find(", set DuplicateKeyPolicy") {
        m.truncate(i);
    }
    if m.starts_with("budget breached: Documents") {
        return "more than one YAML document: a file holds exactly one formation".into();
    }
    if m.starts_with("budget breached: Nodes") || m.starts_with("budget breached: Aliases") {
        return "too many YAML nodes once aliases are expanded (an alias bomb?): refused".into();
    }
    if let Some(rest) = m.strip_prefix("budget breached: ") {
        return format!("file too complex: {rest}");
    }
    m
}

/// Settings pgha writes itself; a formation may not set them.
const MANAGED_PARAMETERS: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "hot_standby",
    "recovery_target_timeline",
    "restore_command",
    "max_wal_senders",
    "max_replication_slots",
    "wal_log_hints",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "wal_sender_timeout",
    "wal_receiver_timeout",
    "wal_receiver_status_interval",
    "max_slot_wal_keep_size",
];

/// A permanent slot's name: what Postgres accepts (lower-case letters, digits and
/// underscores, at most 63), and not one pgha makes for its nodes.
pub fn check_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{name:?} is not a slot name: lower-case letters, digits and _, at most 63"
        ));
    }
    if name.starts_with("pgha_") {
        return Err(format!(
            "{name:?}: names starting with pgha_ are pgha's own (one slot per node)"
        ));
    }
    Ok(())
}

/// A setting a formation may set: a Postgres setting name (`[a-z0-9_.]`) that pgha does
/// not manage itself. Checked in formation files and again by the agent.
pub fn check_parameter_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    {
        Err(format!("{name:?} is not a Postgres setting name"))
    } else if MANAGED_PARAMETERS.contains(&name) || name.starts_with("include") {
        Err(format!(
            "{name} is managed by pgha and cannot be set in a formation"
        ))
    } else {
        Ok(())
    }
}

/// A Postgres size setting as pgha writes it: digits and a unit, or -1.
pub fn valid_wal_size(v: &str) -> bool {
    if v == "-1" {
        return true;
    }
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &v[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "kB" | "MB" | "GB" | "TB")
}

pub(crate) fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Semantic checks: (field path, message) for each problem.
fn check(doc: &FormationDoc) -> Vec<(String, String)> {
    let mut errs: Vec<(String, String)> = vec![];
    let mut err = |field: String, msg: String| errs.push((field, msg));
    if doc.api_version != API_VERSION {
        err(
            "apiVersion".into(),
            format!(
                "{:?} is not supported: use {API_VERSION:?}",
                doc.api_version
            ),
        );
    }
    if doc.kind != "Formation" {
        err(
            "kind".into(),
            format!("{:?}: expected \"Formation\"", doc.kind),
        );
    }
    if !valid_identifier(&doc.metadata.name) {
        err(
            "metadata.name".into(),
            format!(
                "{:?} is not a valid formation name: 1-63 lowercase letters, digits, '_' or '-', starting with a letter",
                doc.metadata.name
            ),
        );
    }
    let s = &doc.spec;
    if let Some(db) = &s.dbname
        && (db.is_empty() || db.len() > 63 || db.contains('\0'))
    {
        err("spec.dbname".into(), "must be 1-63 characters".into());
    }
    if s.admission.join_secret.is_some() {
        err(
            "spec.admission.joinSecret".into(),
            "secrets never go inline in a formation file: put the secret in a file on the monitor and name it with joinSecretFile".into(),
        );
    }
    if let Some(f) = &s.admission.join_secret_file
        && !f.starts_with('/')
    {
        err(
            "spec.admission.joinSecretFile".into(),
            format!("{f:?} must be an absolute path on the monitor VM"),
        );
    }
    match (&s.admission.join_secret_file, s.admission.open) {
        (None, false) if s.admission.join_secret.is_none() => err(
            "spec.admission".into(),
            "name a joinSecretFile that nodes and operators must present (or say `open: true` to admit anyone who reaches the monitor)".into(),
        ),
        (Some(_), true) => err(
            "spec.admission.open".into(),
            "a formation with a joinSecretFile is not open: remove one of the two".into(),
        ),
        _ => {}
    }
    let t = &s.timings;
    for (name, v, lo, hi) in [
        ("reportIntervalMs", t.report_interval_ms, 100, 60_000),
        ("failureTimeoutMs", t.failure_timeout_ms, 1000, 600_000),
        ("leaseMs", t.lease_ms, 1000, 600_000),
    ] {
        if !(lo..=hi).contains(&v) {
            err(
                format!("spec.timings.{name}"),
                format!("{v} is out of range {lo}-{hi}"),
            );
        }
    }
    if !(1..=86_400).contains(&s.anti_flapping.window_seconds) {
        err(
            "spec.antiFlapping.windowSeconds".into(),
            format!("{} is out of range 1-86400", s.anti_flapping.window_seconds),
        );
    }
    if t.report_interval_ms >= t.failure_timeout_ms {
        err(
            "spec.timings.failureTimeoutMs".into(),
            format!(
                "{} must be longer than reportIntervalMs ({})",
                t.failure_timeout_ms, t.report_interval_ms
            ),
        );
    }
    for name in s.postgresql.parameters.keys() {
        if let Err(e) = check_parameter_name(name) {
            err(format!("spec.postgresql.parameters.{name}"), e);
        }
    }
    if let Some(v) = &s.postgresql.max_slot_wal_keep_size
        && !valid_wal_size(v)
    {
        err(
            "spec.postgresql.maxSlotWalKeepSize".into(),
            format!(
                "{v:?} is not a size: use a number with kB, MB, GB or TB (e.g. 8GB), or -1 for no limit"
            ),
        );
    }
    if let Some(b) = &s.backup {
        for (field, msg) in b.check() {
            err(format!("spec.backup.{field}"), msg);
        }
        for name in ["archive_mode", "archive_command", "archive_library"] {
            if s.postgresql.parameters.contains_key(name) {
                err(
                    format!("spec.postgresql.parameters.{name}"),
                    format!("{name} is set by pgha from spec.backup: remove one of the two"),
                );
            }
        }
    }
    if let Some(sb) = &s.standby_of {
        if sb.hosts.is_empty() {
            err(
                "spec.standbyOf.hosts".into(),
                "name at least one node of the source formation (host:port)".into(),
            );
        }
        for (i, h) in sb.hosts.iter().enumerate() {
            if let Err(e) = crate::StandbySource::parse_host_port(h) {
                err(format!("spec.standbyOf.hosts[{i}]"), e);
            }
        }
        if let Some(slot) = &sb.slot
            && let Err(e) = check_slot_name(slot)
        {
            err("spec.standbyOf.slot".into(), e);
        }
        if s.backup.is_some() {
            // Two formations archiving into one stanza would mix their WAL.
            err(
                "spec.backup".into(),
                "a standby formation takes no backups of its own until it is promoted: remove spec.backup (add it back after the promotion)".into(),
            );
        }
    }
    for (name, slot) in &s.slots {
        let at = format!("spec.slots.{name}");
        if let Err(e) = check_slot_name(name) {
            err(at.clone(), e);
        }
        match slot.kind {
            crate::formation::SlotKind::Logical => {
                match slot.database.as_deref() {
                    None => err(
                        format!("{at}.database"),
                        "a logical slot decodes one database: name it".into(),
                    ),
                    Some(d) if d.is_empty() || d.len() > 63 || d.contains('\0') => err(
                        format!("{at}.database"),
                        format!("{d:?} is not a database name (1 to 63 bytes)"),
                    ),
                    Some(_) => {}
                }
                match slot.plugin.as_deref() {
                    None => err(
                        format!("{at}.plugin"),
                        "a logical slot needs an output plugin (pgoutput, test_decoding, wal2json…)"
                            .into(),
                    ),
                    Some(p) if !valid_identifier(p) || p.contains('-') => err(
                        format!("{at}.plugin"),
                        format!("{p:?} is not a plugin name: lower-case letters, digits and _"),
                    ),
                    Some(_) => {}
                }
            }
            crate::formation::SlotKind::Physical => {
                for (field, v) in [("database", &slot.database), ("plugin", &slot.plugin)] {
                    if v.is_some() {
                        err(
                            format!("{at}.{field}"),
                            format!(
                                "only a logical slot has a {field}: remove it or use type: logical"
                            ),
                        );
                    }
                }
            }
        }
    }
    if s.nodes.len() > crate::formation::MAX_NODES {
        err(
            "spec.nodes".into(),
            format!(
                "{} nodes declared; a formation holds at most {}",
                s.nodes.len(),
                crate::formation::MAX_NODES
            ),
        );
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, n) in s.nodes.iter().enumerate() {
        let at = |f: &str| format!("spec.nodes[{i}].{f}");
        if !valid_identifier(&n.name.to_ascii_lowercase()) || n.name.len() > 63 {
            err(at("name"), format!("{:?} is not a valid node name", n.name));
        }
        if !names.insert(n.name.clone()) {
            err(
                at("name"),
                format!("node name {:?} is declared twice", n.name),
            );
        }
        if let Err(e) = crate::host::validate_host(&n.host) {
            err(at("host"), e.to_string());
        }
        if n.port == 0 {
            err(at("port"), "must be 1-65535".into());
        }
        if !addrs.insert((n.host.clone(), n.port)) {
            err(
                at("port"),
                format!("{}:{} is declared for two nodes", n.host, n.port),
            );
        }
        if n.candidate_priority > 100 {
            err(
                at("candidatePriority"),
                format!("{} is out of range 0-100", n.candidate_priority),
            );
        }
    }
    for (i, n) in s.nodes.iter().enumerate() {
        let Some(up) = &n.replicate_from else {
            continue;
        };
        let at = format!("spec.nodes[{i}].replicateFrom");
        if *up == n.name {
            err(at, format!("{} cannot stream from itself", n.name));
        } else if !s.nodes.iter().any(|m| m.name == *up) {
            err(at, format!("{up:?} is not one of spec.nodes"));
        } else {
            // Follow the chain: it must end at a node that streams from the primary.
            let mut seen = vec![n.name.as_str()];
            let mut next = Some(up.as_str());
            while let Some(name) = next {
                if seen.contains(&name) {
                    err(
                        at.clone(),
                        format!(
                            "{} streams from a loop: {} -> {name}",
                            n.name,
                            seen.join(" -> ")
                        ),
                    );
                    break;
                }
                seen.push(name);
                next = s
                    .nodes
                    .iter()
                    .find(|m| m.name == name)
                    .and_then(|m| m.replicate_from.as_deref());
            }
        }
    }
    if let Some(want) = &s.primary
        && !s.nodes.is_empty()
    {
        match s.nodes.iter().find(|n| n.name == *want) {
            None => err(
                "spec.primary".into(),
                format!("{want:?} is not one of spec.nodes"),
            ),
            Some(n) if n.candidate_priority == 0 => err(
                "spec.primary".into(),
                format!("{want} has candidatePriority 0 and is never promoted"),
            ),
            Some(n) if n.maintenance => err(
                "spec.primary".into(),
                format!("{want} is in maintenance and cannot be the primary"),
            ),
            Some(_) => {}
        }
    }
    if !s.nodes.is_empty() {
        let quorum = s.nodes.iter().filter(|n| n.replication_quorum).count() as u32;
        let max = quorum.saturating_sub(1);
        if s.number_sync_standbys > max {
            err(
                "spec.numberSyncStandbys".into(),
                format!(
                    "{} needs at least {} quorum nodes (a primary and {} standbys); {quorum} declared with replicationQuorum: true",
                    s.number_sync_standbys,
                    s.number_sync_standbys + 1,
                    s.number_sync_standbys
                ),
            );
        }
    }
    errs
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Key of a YAML line (`  - name: x` -> `name`), if it has one.
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start().trim_start_matches("- ").trim_start();
    let (k, _) = t.split_once(':')?;
    let k = k.trim().trim_matches('"').trim_matches('\'');
    (!k.is_empty() && !k.contains(' ') && !k.starts_with('#')).then_some(k)
}

fn content_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

/// Dotted path of the key on a 1-based line (best effort, for parse errors).
fn path_at(text: &str, line: usize) -> String {
    let lines = content_lines(text);
    let Some(pos) = lines.iter().position(|(i, _)| *i + 1 >= line) else {
        return "(file)".into();
    };
    let is_item = |l: &str| l.trim_start().starts_with("- ");
    // Column of a line's key: an item's key sits two columns right of its dash.
    let key_col = |l: &str| indent_of(l) + if is_item(l) { 2 } else { 0 };
    // Index of the item at `pos` among the items of its list.
    let item_index = |pos: usize| {
        let d = indent_of(lines[pos].1);
        lines[..pos]
            .iter()
            .rev()
            .take_while(|(_, s)| indent_of(s) >= d)
            .filter(|(_, s)| indent_of(s) == d && is_item(s))
            .count()
    };
    let (_, cur) = lines[pos];
    let mut parts: Vec<String> = key_of(cur).map(|k| vec![k.to_string()]).unwrap_or_default();
    let mut target = key_col(cur);
    if is_item(cur) {
        parts.push(format!("[{}]", item_index(pos)));
        target = indent_of(cur);
    }
    for j in (0..pos).rev() {
        let (_, l) = lines[j];
        if is_item(l) && indent_of(l) < target && key_col(l) == target {
            // `cur` is a key of this item's mapping.
            parts.push(format!("[{}]", item_index(j)));
            target = indent_of(l);
        } else if !is_item(l) && key_col(l) < target {
            if let Some(k) = key_of(l) {
                parts.push(k.to_string());
            }
            target = key_col(l);
        }
        if target == 0 {
            break;
        }
    }
    parts.reverse();
    let mut out = String::new();
    for p in parts {
        if !p.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(&p);
    }
    if out.is_empty() { "(file)".into() } else { out }
}

/// Position of a path, or of its nearest ancestor present in the text (a defaulted
/// field is not written).
fn locate_nearest(text: &str, path: &str) -> (u32, u32) {
    let mut p = path.to_string();
    loop {
        if let Some(pos) = locate(text, &p) {
            return pos;
        }
        match p.rfind(['.', '[']) {
            Some(i) => p.truncate(i),
            None => return (1, 1),
        }
    }
}

/// Line and column of a dotted path (`spec.nodes[1].candidatePriority`) in the text.
fn locate(text: &str, path: &str) -> Option<(u32, u32)> {
    let lines = content_lines(text);
    let mut from = 0usize;
    let mut min_indent: isize = -1;
    let mut found: Option<(usize, usize)> = None;
    let mut parts: Vec<String> = vec![];
    for seg in path.split('.') {
        match seg.split_once('[') {
            Some((k, idx)) => {
                parts.push(k.to_string());
                parts.push(format!("[{}", idx));
            }
            None => parts.push(seg.to_string()),
        }
    }
    for part in parts {
        if let Some(idx) = part.strip_prefix('[') {
            let idx: usize = idx.trim_end_matches(']').parse().ok()?;
            let mut seen = 0;
            let mut hit = None;
            for (pos, (_, l)) in lines.iter().enumerate().skip(from) {
                let ind = indent_of(l) as isize;
                if ind <= min_indent && pos > from {
                    break;
                }
                if l.trim_start().starts_with("- ") {
                    if seen == idx {
                        hit = Some(pos);
                        break;
                    }
                    seen += 1;
                }
            }
            let pos = hit?;
            let (n, l) = lines[pos];
            found = Some((n, indent_of(l)));
            // Keys of this item are deeper than its dash; the dash line itself is one.
            min_indent = indent_of(l) as isize;
            from = pos;
            continue;
        }
        let mut hit = None;
        for (pos, (_, l)) in lines.iter().enumerate().skip(from) {
            let ind = indent_of(l) as isize;
            if pos > from
                && ind <= min_indent
                && !(l.trim_start().starts_with("- ") && ind == min_indent)
            {
                break;
            }
            if (ind > min_indent || pos == from) && key_of(l) == Some(part.as_str()) {
                hit = Some(pos);
                break;
            }
        }
        let pos = hit?;
        let (n, l) = lines[pos];
        let col = l.find(part.as_str()).unwrap_or(0);
        found = Some((n, col));
        min_indent = indent_of(l) as isize
            + if l.trim_start().starts_with("- ") {
                2
            } else {
                0
            };
        from = pos + 1;
    }
    found.map(|(n, c)| (n as u32 + 1, c as u32 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: pgha/v1
kind: Formation
metadata:
  name: default
spec:
  dbname: appdb
  nodes:
    - name: node_a
      host: 10.0.0.1
    - name: node_b
      host: 10.0.0.2
      candidatePriority: 101
  admission:
    joinSecretFile: /etc/pgha/default.secret
";

    #[test]
    fn a_standby_formation_names_its_source_by_host_and_port_and_takes_no_backups() {
        let good = GOOD.replace("101", "50");
        let ok = format!(
            "{good}  standbyOf:\n    hosts: [\"10.1.0.5:5432\", \"[fd00::6]:5432\", \"db3.example:6432\"]\n    slot: dr_site\n"
        );
        let f = parse_formation("f.yaml", ok.as_bytes()).unwrap();
        let src = crate::StandbySource::from_spec(f.spec.standby_of.as_ref().unwrap()).unwrap();
        assert_eq!(src.hosts[1], ("fd00::6".to_string(), 5432));
        let bad = format!(
            "{good}  standbyOf:\n    hosts: [\"10.1.0.5\", \"db:0\"]\n    slot: Bad\n  backup:\n    repository: /srv/b\n"
        );
        let errs = parse_formation("f.yaml", bad.as_bytes()).unwrap_err();
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        for want in [
            "spec.standbyOf.hosts[0]: \"10.1.0.5\" is not host:port",
            "spec.standbyOf.hosts[1]: \"db:0\" is not host:port",
            "spec.standbyOf.slot: \"Bad\" is not a slot name",
            "spec.backup: a standby formation takes no backups",
        ] {
            assert!(lines.iter().any(|l| l.contains(want)), "{want}: {lines:?}");
        }
    }

    #[test]
    fn permanent_slots_have_names_postgres_takes_and_pgha_does_not_use() {
        let good = GOOD.replace("101", "50");
        let ok = format!(
            "{good}  slots:\n    archiver:\n      type: physical\n    cdc:\n      type: logical\n      database: app\n      plugin: pgoutput\n"
        );
        let f = parse_formation("f.yaml", ok.as_bytes()).unwrap();
        assert_eq!(f.spec.slots.len(), 2);
        let bad = format!(
            "{good}  slots:\n    Bad-Name:\n      type: physical\n    pgha_slot_9:\n      type: physical\n    cdc:\n      type: logical\n    wal:\n      type: physical\n      plugin: pgoutput\n"
        );
        let errs = parse_formation("f.yaml", bad.as_bytes()).unwrap_err();
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 5, "{lines:?}");
        for want in [
            "spec.slots.cdc.database: a logical slot decodes one database",
            "spec.slots.cdc.plugin: a logical slot needs an output plugin",
            "spec.slots.wal.plugin: only a logical slot has a plugin",
        ] {
            assert!(lines.iter().any(|l| l.contains(want)), "{want}: {lines:?}");
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains("spec.slots.Bad-Name: \"Bad-Name\" is not a slot name")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("spec.slots.pgha_slot_9: ") && l.contains("pgha's own")),
            "{lines:?}"
        );
        let unknown = format!("{good}  slots:\n    a:\n      type: temporary\n");
        let errs = parse_formation("f.yaml", unknown.as_bytes()).unwrap_err();
        assert!(
            errs[0].to_string().contains("unknown variant `temporary`"),
            "{errs:?}"
        );
    }

    #[test]
    fn finds_fields_by_path_and_paths_by_line() {
        assert_eq!(locate(GOOD, "spec.dbname"), Some((6, 3)));
        assert_eq!(
            locate(GOOD, "spec.nodes[1].candidatePriority"),
            Some((12, 7))
        );
        assert_eq!(locate(GOOD, "spec.nodes[0].host"), Some((9, 7)));
        assert_eq!(path_at(GOOD, 12), "spec.nodes[1].candidatePriority");
        assert_eq!(path_at(GOOD, 6), "spec.dbname");
        assert_eq!(path_at(GOOD, 4), "metadata.name");
    }

    #[test]
    fn reports_every_error_at_once_with_positions() {
        let text = GOOD.replace("name: default", "name: Bad Name");
        let errs = parse_formation("f.yaml", text.as_bytes()).unwrap_err();
        let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("f.yaml:4:3: metadata.name: "),
            "{lines:?}"
        );
        assert!(
            lines[1]
                .starts_with("f.yaml:12:7: spec.nodes[1].candidatePriority: 101 is out of range"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_good_file_parses() {
        let text = GOOD.replace("      candidatePriority: 101\n", "");
        let doc = parse_formation("f.yaml", text.as_bytes()).unwrap();
        assert_eq!(doc.spec.nodes.len(), 2);
        assert!(doc.spec.declared_nodes_only());
        assert_eq!(doc.spec.nodes[0].port, 5432);
    }
}
