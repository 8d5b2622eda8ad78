//! Reading and validating formation files. This module is the only place that names the
//! YAML crate, so it can be swapped in one file.
//!
//! Every error says where (`file:line:col`), which field, and what is wrong; all errors of
//! a file are returned at once. A file is accepted whole or not at all.

use crate::formation::{API_VERSION, FormationDoc, FormationSpec};
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

/// Where a formation file may name a secret (`joinSecretFile`, `standbyOf.passwordFile`):
/// a file of the monitor's secrets directory, by its bare name (`orders.secret`) or by an
/// absolute path into that directory. Whether an absolute path lies there is checked
/// where the directory is known (the controller's scan); here, the shape: no `..`, no
/// hidden file, nothing but a plain name after the last `/`.
pub fn check_secret_file_name(f: &str) -> Result<(), String> {
    let name = f.rsplit('/').next().unwrap_or_default();
    let shape_ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && !f.contains('\0')
        && (f == name || f.starts_with('/'))
        && !f.split('/').any(|c| c == ".." || c == ".");
    if shape_ok {
        Ok(())
    } else {
        Err(format!(
            "{f:?} must name a file of the monitor's secrets directory (<monitor dir>/secrets): its bare name (e.g. orders.secret) or an absolute path into that directory"
        ))
    }
}

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

/// The Postgres settings a formation file may set (an allowlist: a setting added by a
/// new major is refused until it is judged here). Left out on purpose, because a Git
/// editor of formation files must not run commands, load code or reach files on the
/// database VMs: every setting that names a command (`archive_command`,
/// `archive_cleanup_command`, `recovery_end_command`, `restore_command`,
/// `ssl_passphrase_command`), a library or where libraries load from
/// (`shared_preload_libraries`, `session_preload_libraries`, `local_preload_libraries`,
/// `dynamic_library_path`, `jit_provider`, `oauth_validator_libraries`,
/// `extension_control_path`), a file or directory (`ssl_*_file`, `krb_server_keyfile`,
/// `log_directory`, `log_filename`, `data_directory`, `hba_file`, `external_pid_file`,
/// `promote_trigger_file`), the socket's group and mode, recovery targets, and the
/// developer options. A DBA sets those on the VM itself, in `postgresql.conf` or with
/// `ALTER SYSTEM`. Names are matched in lower case, as Postgres matches them.
pub const ALLOWED_PARAMETERS: &[&str] = &[
    "array_nulls",
    "authentication_timeout",
    "autovacuum",
    "autovacuum_analyze_scale_factor",
    "autovacuum_analyze_threshold",
    "autovacuum_freeze_max_age",
    "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age",
    "autovacuum_naptime",
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_vacuum_insert_threshold",
    "autovacuum_vacuum_max_threshold",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_threshold",
    "autovacuum_work_mem",
    "autovacuum_worker_slots",
    "backend_flush_after",
    "backslash_quote",
    "bgwriter_delay",
    "bgwriter_flush_after",
    "bgwriter_lru_maxpages",
    "bgwriter_lru_multiplier",
    "bytea_output",
    "check_function_bodies",
    "checkpoint_completion_target",
    "checkpoint_flush_after",
    "checkpoint_timeout",
    "checkpoint_warning",
    "client_connection_check_interval",
    "client_encoding",
    "client_min_messages",
    "cluster_name",
    "commit_delay",
    "commit_siblings",
    "commit_timestamp_buffers",
    "compute_query_id",
    "constraint_exclusion",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "cpu_tuple_cost",
    "createrole_self_grant",
    "cursor_tuple_fraction",
    "data_sync_retry",
    "datestyle",
    "deadlock_timeout",
    "default_statistics_target",
    "default_table_access_method",
    "default_tablespace",
    "default_text_search_config",
    "default_toast_compression",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "dynamic_shared_memory_type",
    "effective_cache_size",
    "effective_io_concurrency",
    "enable_async_append",
    "enable_bitmapscan",
    "enable_distinct_reordering",
    "enable_gathermerge",
    "enable_group_by_reordering",
    "enable_hashagg",
    "enable_hashjoin",
    "enable_incremental_sort",
    "enable_indexonlyscan",
    "enable_indexscan",
    "enable_material",
    "enable_memoize",
    "enable_mergejoin",
    "enable_nestloop",
    "enable_parallel_append",
    "enable_parallel_hash",
    "enable_partition_pruning",
    "enable_partitionwise_aggregate",
    "enable_partitionwise_join",
    "enable_presorted_aggregate",
    "enable_self_join_elimination",
    "enable_seqscan",
    "enable_sort",
    "enable_tidscan",
    "escape_string_warning",
    "event_triggers",
    "exit_on_error",
    "extra_float_digits",
    "file_copy_method",
    "from_collapse_limit",
    "fsync",
    "full_page_writes",
    "geqo",
    "geqo_effort",
    "geqo_generations",
    "geqo_pool_size",
    "geqo_seed",
    "geqo_selection_bias",
    "geqo_threshold",
    "gin_fuzzy_search_limit",
    "gin_pending_list_limit",
    "hash_mem_multiplier",
    "hot_standby",
    "hot_standby_feedback",
    "huge_page_size",
    "huge_pages",
    "icu_validation_level",
    "idle_in_transaction_session_timeout",
    "idle_replication_slot_timeout",
    "idle_session_timeout",
    "intervalstyle",
    "io_combine_limit",
    "io_max_combine_limit",
    "io_max_concurrency",
    "io_method",
    "io_workers",
    "jit",
    "jit_above_cost",
    "jit_inline_above_cost",
    "jit_optimize_above_cost",
    "join_collapse_limit",
    "krb_caseins_users",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "listen_addresses",
    "lo_compat_privileges",
    "lock_timeout",
    "log_autovacuum_min_duration",
    "log_checkpoints",
    "log_connections",
    "log_destination",
    "log_disconnections",
    "log_duration",
    "log_error_verbosity",
    "log_executor_stats",
    "log_hostname",
    "log_line_prefix",
    "log_lock_failures",
    "log_lock_waits",
    "log_min_duration_sample",
    "log_min_duration_statement",
    "log_min_error_statement",
    "log_min_messages",
    "log_parameter_max_length",
    "log_parameter_max_length_on_error",
    "log_parser_stats",
    "log_planner_stats",
    "log_recovery_conflict_waits",
    "log_replication_commands",
    "log_rotation_age",
    "log_rotation_size",
    "log_startup_progress_interval",
    "log_statement",
    "log_statement_sample_rate",
    "log_statement_stats",
    "log_temp_files",
    "log_timezone",
    "log_transaction_sample_rate",
    "log_truncate_on_rotation",
    "logging_collector",
    "logical_decoding_work_mem",
    "maintenance_io_concurrency",
    "maintenance_work_mem",
    "max_active_replication_origins",
    "max_connections",
    "max_files_per_process",
    "max_locks_per_transaction",
    "max_logical_replication_workers",
    "max_notify_queue_pages",
    "max_parallel_maintenance_workers",
    "max_parallel_workers",
    "max_parallel_workers_per_gather",
    "max_pred_locks_per_page",
    "max_pred_locks_per_relation",
    "max_pred_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_slot_wal_keep_size",
    "max_stack_depth",
    "max_standby_archive_delay",
    "max_standby_streaming_delay",
    "max_sync_workers_per_subscription",
    "max_wal_senders",
    "max_wal_size",
    "max_worker_processes",
    "md5_password_warnings",
    "min_dynamic_shared_memory",
    "min_parallel_index_scan_size",
    "min_parallel_table_scan_size",
    "min_wal_size",
    "multixact_member_buffers",
    "multixact_offset_buffers",
    "notify_buffers",
    "old_snapshot_threshold",
    "parallel_leader_participation",
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "password_encryption",
    "plan_cache_mode",
    "port",
    "primary_conninfo",
    "primary_slot_name",
    "quote_all_identifiers",
    "random_page_cost",
    "recovery_init_sync_method",
    "recovery_min_apply_delay",
    "recovery_prefetch",
    "recursive_worktable_factor",
    "reserved_connections",
    "restart_after_crash",
    "row_security",
    "scram_iterations",
    "search_path",
    "seq_page_cost",
    "serializable_buffers",
    "session_replication_role",
    "shared_buffers",
    "shared_memory_type",
    "standard_conforming_strings",
    "statement_timeout",
    "stats_fetch_consistency",
    "subtransaction_buffers",
    "summarize_wal",
    "superuser_reserved_connections",
    "sync_replication_slots",
    "synchronize_seqscans",
    "synchronized_standby_slots",
    "synchronous_commit",
    "synchronous_standby_names",
    "syslog_facility",
    "syslog_ident",
    "syslog_sequence_numbers",
    "syslog_split_messages",
    "tcp_keepalives_count",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_user_timeout",
    "temp_buffers",
    "temp_file_limit",
    "temp_tablespaces",
    "timezone",
    "timezone_abbreviations",
    "track_activities",
    "track_activity_query_size",
    "track_commit_timestamp",
    "track_cost_delay_timing",
    "track_counts",
    "track_functions",
    "track_io_timing",
    "track_wal_io_timing",
    "transaction_buffers",
    "transaction_timeout",
    "transform_null_equals",
    "unix_socket_directories",
    "update_process_title",
    "vacuum_buffer_usage_limit",
    "vacuum_cost_delay",
    "vacuum_cost_limit",
    "vacuum_cost_page_dirty",
    "vacuum_cost_page_hit",
    "vacuum_cost_page_miss",
    "vacuum_defer_cleanup_age",
    "vacuum_failsafe_age",
    "vacuum_freeze_min_age",
    "vacuum_freeze_table_age",
    "vacuum_max_eager_freeze_failure_rate",
    "vacuum_multixact_failsafe_age",
    "vacuum_multixact_freeze_min_age",
    "vacuum_multixact_freeze_table_age",
    "vacuum_truncate",
    "wal_buffers",
    "wal_compression",
    "wal_decode_buffer_size",
    "wal_init_zero",
    "wal_keep_size",
    "wal_level",
    "wal_log_hints",
    "wal_receiver_create_temp_slot",
    "wal_receiver_status_interval",
    "wal_receiver_timeout",
    "wal_recycle",
    "wal_retrieve_retry_interval",
    "wal_sender_timeout",
    "wal_skip_threshold",
    "wal_summary_keep_time",
    "wal_sync_method",
    "wal_writer_delay",
    "wal_writer_flush_after",
    "work_mem",
    "xmlbinary",
    "xmloption",
];

/// Settings a formation file may never set, because each names a command, a library to
/// load, or a file of the VM (some of the names that [`ALLOWED_PARAMETERS`] leaves out;
/// what the tests of the controller and of the agent try).
pub const NEVER_FROM_A_FILE: &[&str] = &[
    "archive_command",
    "archive_mode",
    "archive_library",
    "archive_cleanup_command",
    "recovery_end_command",
    "restore_command",
    "ssl_passphrase_command",
    "shared_preload_libraries",
    "session_preload_libraries",
    "local_preload_libraries",
    "dynamic_library_path",
    "jit_provider",
    "oauth_validator_libraries",
    "extension_control_path",
    "ssl_ca_file",
    "krb_server_keyfile",
    "log_directory",
    "external_pid_file",
    "plperl.on_init",
];

/// Extension settings (`prefix.name`) a formation may set: those of extensions whose
/// settings tune what they record, never run code (`plperl.on_init` would).
pub const ALLOWED_EXTENSION_PREFIXES: &[&str] = &[
    "auto_explain",
    "pg_prewarm",
    "pg_stat_kcache",
    "pg_stat_statements",
    "pg_trgm",
    "pg_wait_sampling",
    "pgaudit",
];

/// A setting a formation may set: a Postgres setting name (`[a-z0-9_.]`) that pgha does
/// not manage itself, on [`ALLOWED_PARAMETERS`] (or an allowed extension's). Checked in
/// formation files and again by the agent.
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
    } else if let Some((prefix, _)) = name.split_once('.') {
        if ALLOWED_EXTENSION_PREFIXES.contains(&prefix) {
            Ok(())
        } else {
            Err(format!(
                "{name}: settings of extension {prefix:?} are not taken from formation files (those allowed: {}); set it on the VMs in postgresql.conf",
                ALLOWED_EXTENSION_PREFIXES.join(", ")
            ))
        }
    } else if ALLOWED_PARAMETERS.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "{name} is not among the settings a formation file may set: it names a command, a library or a file on the VMs, or pgha does not know it; set it on the VMs in postgresql.conf or with ALTER SYSTEM"
        ))
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

/// A database name pgha writes into `pg_hba.conf` and conninfo strings: 1-63 bytes, no
/// whitespace, quotes, commas or control characters, and not a `pg_hba.conf` keyword
/// (`all`, `sameuser`, `samerole`, `replication`) nor an `@file` include.
pub fn check_dbname(db: &str) -> Result<(), String> {
    let keyword = ["all", "sameuser", "samerole", "replication"].contains(&db);
    let bad_char = db
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | ',' | '\\'));
    if db.is_empty() || db.len() > 63 || keyword || bad_char || db.starts_with('@') {
        Err(format!(
            "database name {db:?}: 1-63 characters without spaces, quotes or commas, and not a pg_hba.conf keyword"
        ))
    } else {
        Ok(())
    }
}

pub use crate::names::valid_identifier;

/// Semantic checks: (field path, message) for each problem, section by section.
fn check(doc: &FormationDoc) -> Vec<(String, String)> {
    let mut errs: Vec<(String, String)> = vec![];
    check_header(doc, &mut errs);
    let s = &doc.spec;
    check_admission(s, &mut errs);
    check_timings(s, &mut errs);
    check_postgresql(s, &mut errs);
    check_standby_of(s, &mut errs);
    check_slots(s, &mut errs);
    check_nodes(s, &mut errs);
    errs
}

/// Checks the document's kind, version and name.
fn check_header(doc: &FormationDoc, errs: &mut Vec<(String, String)>) {
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
}

/// Checks the database and who may join.
fn check_admission(s: &FormationSpec, errs: &mut Vec<(String, String)>) {
    let mut err = |field: String, msg: String| errs.push((field, msg));
    if let Some(db) = &s.dbname
        && let Err(e) = check_dbname(db)
    {
        err("spec.dbname".into(), e);
    }
    if s.admission.join_secret.is_some() {
        err(
            "spec.admission.joinSecret".into(),
            "secrets never go inline in a formation file: put the secret in a file on the monitor and name it with joinSecretFile".into(),
        );
    }
    if let Some(f) = &s.admission.join_secret_file
        && let Err(e) = check_secret_file_name(f)
    {
        err("spec.admission.joinSecretFile".into(), e);
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
}

/// Checks timings and the anti-flapping window.
fn check_timings(s: &FormationSpec, errs: &mut Vec<(String, String)>) {
    let mut err = |field: String, msg: String| errs.push((field, msg));
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
}

/// Checks Postgres settings, major, slot WAL limit and backups.
fn check_postgresql(s: &FormationSpec, errs: &mut Vec<(String, String)>) {
    let mut err = |field: String, msg: String| errs.push((field, msg));
    const ARCHIVING: [&str; 3] = ["archive_mode", "archive_command", "archive_library"];
    for name in s.postgresql.parameters.keys() {
        // With a backup section, the archiving settings get the message below.
        if s.backup.is_some() && ARCHIVING.contains(&name.as_str()) {
            continue;
        }
        if let Err(e) = check_parameter_name(name) {
            err(format!("spec.postgresql.parameters.{name}"), e);
        }
    }
    if let Some(m) = s.postgresql.version
        && !m.is_supported()
    {
        err(
            "spec.postgresql.version".into(),
            format!(
                "PostgreSQL {m} is not one pgha runs: use one of {}",
                crate::PgMajor::supported_list()
            ),
        );
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
        for name in ARCHIVING {
            if s.postgresql.parameters.contains_key(name) {
                err(
                    format!("spec.postgresql.parameters.{name}"),
                    format!("{name} is set by pgha from spec.backup: remove one of the two"),
                );
            }
        }
    }
}

/// Checks the source of a standby formation.
fn check_standby_of(s: &FormationSpec, errs: &mut Vec<(String, String)>) {
    let mut err = |field: String, msg: String| errs.push((field, msg));
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
        if let Some(f) = &sb.password_file
            && let Err(e) = check_secret_file_name(f)
        {
            err("spec.standbyOf.passwordFile".into(), e);
        }
        if s.backup.is_some() {
            // Two formations archiving into one stanza would mix their WAL.
            err(
                "spec.backup".into(),
                "a standby formation takes no backups of its own until it is promoted: remove spec.backup (add it back after the promotion)".into(),
            );
        }
    }
}

/// Checks permanent slots.
fn check_slots(s: &FormationSpec, errs: &mut Vec<(String, String)>) {
    let mut err = |field: String, msg: String| errs.push((field, msg));
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
}

/// Checks declared nodes, the named primary and the quorum.
fn check_nodes(s: &FormationSpec, errs: &mut Vec<(String, String)>) {
    let mut err = |field: String, msg: String| errs.push((field, msg));
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

    /// The second review: a formation file still ran commands on every database VM
    /// (settings naming a command or a library were accepted without a backup section).
    /// Each is refused at its line, with or without `spec.backup`.
    #[test]
    fn settings_that_run_commands_or_load_code_are_refused_at_their_line() {
        let refused = NEVER_FROM_A_FILE.iter().copied().chain(["no_such_setting"]);
        for name in refused {
            let good = GOOD.replace("101", "50");
            let text = format!(
                "{good}  postgresql:\n    parameters:\n      work_mem: 16MB\n      {name}: /tmp/evil\n"
            );
            let errs = parse_formation("f.yaml", text.as_bytes()).unwrap_err();
            let e = errs
                .iter()
                .find(|e| e.field == format!("spec.postgresql.parameters.{name}"))
                .unwrap_or_else(|| panic!("{name} was accepted: {errs:?}"));
            // (A dotted name is located at its section.)
            assert!(e.line == 18 || name.contains('.'), "{e}");
            assert_eq!(errs.len(), 1, "{errs:?}");
        }
        for ok in [
            "work_mem",
            "shared_buffers",
            "pg_stat_statements.max",
            "timezone",
        ] {
            assert!(check_parameter_name(ok).is_ok(), "{ok}");
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
