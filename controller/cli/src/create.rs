//! `pgha create monitor|postgres`: checks everything first, then writes, so a failed
//! create leaves nothing half-made and a re-run either succeeds or says why not.

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use pgha_agent::postgres::installs::{self, Install};
use pgha_agent::{AgentConfig, AuthMethod};
use pgha_api::RegisterRequest;
use pgha_api::client::MonitorClient;
use pgha_controller::MonitorConfig;
use pgha_controller::store::{FileStore, Store};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum CreateCmd {
    /// Create a monitor in --dir (state, events and config live there).
    Monitor(MonitorArgs),
    /// Create a Postgres node and register it with the monitor.
    Postgres(PostgresArgs),
}

#[derive(Args)]
pub struct MonitorArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Host name nodes and operators use to reach the monitor.
    #[arg(long, default_value = "localhost")]
    hostname: String,
    /// Address the HTTP API listens on.
    #[arg(long, default_value = "0.0.0.0:5440")]
    listen: String,
    /// The API serves HTTPS with a CA and certificate made here (the default), and
    /// formation URIs carry sslmode=require (nodes use self-signed certificates).
    #[arg(long, conflicts_with = "no_ssl")]
    ssl_self_signed: bool,
    /// No TLS anywhere: the API is plain HTTP (warned about at every start) and URIs
    /// carry sslmode=prefer.
    #[arg(long)]
    no_ssl: bool,
    /// Your own PKI for the API: the CA that signed --server-cert (clients pin it).
    #[arg(long, requires_all = ["server_cert", "server_key"], conflicts_with = "no_ssl")]
    ssl_ca_file: Option<PathBuf>,
    /// The API's certificate (PEM; its chain may follow), for --hostname.
    #[arg(long, requires = "ssl_ca_file")]
    server_cert: Option<PathBuf>,
    /// The API certificate's private key (PEM).
    #[arg(long, requires = "ssl_ca_file")]
    server_key: Option<PathBuf>,
    /// Where the controller keeps its state: `file` (this directory; one controller) or
    /// `etcd` (an etcd cluster shared by several controllers, of which one leads).
    #[arg(long, value_enum, default_value = "file")]
    store: StoreKind,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// HOST:PORT of every controller of the group, this one included, comma-separated:
    /// the URLs `show uri` prints name them all, and clients find the leader.
    #[arg(long, value_delimiter = ',')]
    controllers: Vec<String>,
    /// Adds a controller to an existing group: DIR is (a copy of) the first controller's
    /// directory. Its CA (this controller gets its own certificate for --hostname), its
    /// credentials, join secrets and formation files are taken over.
    #[arg(long)]
    copy_from: Option<PathBuf>,
    /// Run the monitor in the foreground once created.
    #[arg(long)]
    run: bool,
}

/// Where etcd is, for `create monitor --store etcd` and `migrate`.
#[derive(Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix of this controller group in etcd.
    #[arg(long, default_value = "/pgha/")]
    etcd_prefix: String,
    /// CA certificate (PEM) of etcd's TLS (with https:// endpoints).
    #[arg(long)]
    etcd_ca_file: Option<PathBuf>,
    /// etcd user; its password is read from --etcd-password-file.
    #[arg(long, requires = "etcd_password_file")]
    etcd_user: Option<String>,
    #[arg(long, requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    #[arg(long, requires = "etcd_key_file")]
    etcd_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "etcd_cert_file")]
    etcd_key_file: Option<PathBuf>,
    /// Accept http:// endpoints off loopback (state and password in clear).
    #[arg(long)]
    etcd_insecure: bool,
    /// Seconds without a keep-alive before the leader's lease runs out and another
    /// controller takes over.
    #[arg(long, default_value_t = pgha_controller::config::DEFAULT_LEASE_TTL_S, value_parser = clap::value_parser!(u64).range(2..=60))]
    etcd_lease_ttl: u64,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum StoreKind {
    File,
    Etcd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Auth {
    Trust,
    #[value(name = "scram-sha-256")]
    ScramSha256,
}

#[derive(Args)]
pub struct PostgresArgs {
    #[arg(long)]
    pgdata: PathBuf,
    #[arg(long, default_value_t = 5432)]
    pgport: u16,
    /// Host name peers and clients use to reach this node.
    #[arg(long)]
    hostname: String,
    #[arg(long, default_value = "postgres")]
    dbname: String,
    /// Monitor URL with the join secret (`pgha show uri --dir` prints it), or @FILE to
    /// read it from a file so it stays out of `ps` (PGHA_MONITOR works too).
    #[arg(long, env = "PGHA_MONITOR")]
    monitor: String,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    /// Postgres superuser created by initdb.
    #[arg(long, default_value = "postgres")]
    username: String,
    /// How Postgres authenticates peers and clients. `trust` (no password) is for a
    /// throwaway tutorial only, and is warned about in `show state`.
    #[arg(long, value_enum, default_value = "scram-sha-256")]
    auth: Auth,
    #[arg(long, conflicts_with = "no_ssl")]
    ssl_self_signed: bool,
    #[arg(long)]
    no_ssl: bool,
    /// Bin directory of a PostgreSQL install (initdb, pg_ctl, pg_basebackup,
    /// pg_rewind); repeat it for several majors. The node runs the one of the
    /// formation's major. Default: every /usr/lib/postgresql/N/bin.
    #[arg(long)]
    pg_bin_dir: Vec<PathBuf>,
    /// Leave pg_hba.conf alone (you manage replication and application access).
    #[arg(long)]
    skip_pg_hba: bool,
    /// 0 to 100; 0 means never promoted.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    candidate_priority: u8,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    replication_quorum: bool,
    /// OS user that runs Postgres when pgha runs as root.
    #[arg(long)]
    os_user: Option<String>,
    /// Port of the agent's health endpoints (/primary, /replica, /health, /read-only) and
    /// /metrics, as Patroni's REST API; 0 turns them off.
    #[arg(long, default_value_t = 8008)]
    http_port: u16,
    /// ADDRESS:PORT where /metrics listens instead of --http-port (the health endpoints
    /// stay there, unauthenticated and read-only for load balancers).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Only these networks (ADDRESS[/PREFIX], repeatable or comma-separated) reach the
    /// health endpoints, e.g. the load balancers' subnet; by default every address.
    #[arg(long, value_delimiter = ',')]
    health_allow: Vec<String>,
    /// A command run when this node's role changes, as `CMD <formation> <node> <old
    /// role> <new role> <new state>` (roles: primary, standby, stopped), e.g. to move a
    /// virtual IP. Set on the node, never in the formation file.
    #[arg(long)]
    on_role_change: Option<PathBuf>,
    /// A command run before this node is promoted, as `CMD <formation> <node> standby
    /// primary prepare_promotion`: a non-zero exit (or 30 s without one) refuses the
    /// promotion, and the controller promotes another node or keeps the old primary.
    /// Set on the node, never in the formation file.
    #[arg(long)]
    pre_promote: Option<PathBuf>,
    /// A command run when the agent has seen Postgres start, as `CMD <formation> <node>
    /// <role>` (primary or standby). Set on the node, never in the formation file.
    #[arg(long)]
    on_start: Option<PathBuf>,
    /// A command run when the agent has seen Postgres stop, as `CMD <formation> <node>
    /// <role it had>`. Set on the node, never in the formation file.
    #[arg(long)]
    on_stop: Option<PathBuf>,
    /// Build this node, the first of its formation, from the backups of formation
    /// FROM (its pgBackRest stanza, in the repository this formation's file names)
    /// instead of initdb: point-in-time recovery, then it runs as single.
    #[arg(long, value_name = "FROM")]
    restore_from: Option<String>,
    /// With --restore-from: recover up to this time (e.g. `2026-12-03 06:20:00+00`),
    /// then promote; without it, every archived WAL segment is replayed.
    #[arg(long, requires = "restore_from")]
    target_time: Option<String>,
    /// Run the agent in the foreground once created.
    #[arg(long)]
    run: bool,
}

/// `--restore-from` and `--target-time`, checked before anything is registered.
fn restore_from(a: &PostgresArgs) -> anyhow::Result<Option<pgha_agent::config::RestoreFrom>> {
    let Some(stanza) = &a.restore_from else {
        return Ok(None);
    };
    let ok_name = stanza.len() <= 63
        && stanza.starts_with(|c: char| c.is_ascii_lowercase())
        && stanza
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok_name {
        bail!("--restore-from {stanza:?}: not a formation (stanza) name");
    }
    if let Some(t) = &a.target_time {
        let ok_time = !t.is_empty()
            && t.len() <= 64
            && t.starts_with(|c: char| c.is_ascii_digit())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || " :-+./_".contains(c));
        if !ok_time {
            bail!("--target-time {t:?}: expected a timestamp such as \"2026-12-03 06:20:00+00\"");
        }
    }
    Ok(Some(pgha_agent::config::RestoreFrom {
        stanza: stanza.clone(),
        target_time: a.target_time.clone(),
    }))
}

pub async fn run(cmd: CreateCmd) -> anyhow::Result<()> {
    match cmd {
        CreateCmd::Monitor(a) => monitor(a).await,
        CreateCmd::Postgres(a) => postgres(a).await,
    }
}

async fn monitor(a: MonitorArgs) -> anyhow::Result<()> {
    let dir = absolute(&a.dir)?;
    if MonitorConfig::path(&dir).exists() {
        eprintln!(
            "monitor already created in {}; run it with: pgha run --dir {}",
            dir.display(),
            dir.display()
        );
    } else {
        a.listen
            .parse::<std::net::SocketAddr>()
            .with_context(|| format!("--listen {:?}: expected ADDRESS:PORT", a.listen))?;
        if let Err(e) = std::net::TcpListener::bind(&a.listen) {
            bail!("--listen {}: cannot listen there: {e}", a.listen);
        }
        if a.store == StoreKind::File && (a.copy_from.is_some() || !a.controllers.is_empty()) {
            bail!("--copy-from and --controllers are for a group of controllers: add --store etcd");
        }
        let store = match a.store {
            StoreKind::File => pgha_controller::config::StoreConfig::File,
            StoreKind::Etcd => etcd_store(&a.etcd, a.copy_from.is_some())?,
        };
        if let Some(from) = &a.copy_from {
            copy_group_files(&absolute(from)?, &dir)?;
        }
        // Checked (the operator's PKI) or made first: a refusal leaves nothing behind.
        let tls = if a.no_ssl {
            None
        } else if let Some(from) = &a.copy_from {
            group_tls(&absolute(from)?, &dir, &a.hostname)?
        } else {
            Some(monitor_tls(&dir, &a)?)
        };
        let formations = dir.join("formations");
        std::fs::create_dir_all(&formations)
            .with_context(|| format!("creating {}", formations.display()))?;
        let default = formations.join(format!("{}.yaml", pgha_api::DEFAULT_FORMATION));
        if !default.exists() {
            // The default formation's join secret: a node presents it from the monitor
            // URL that `show uri --dir` prints here (docs/src/design.md §5 rule 7).
            let secrets = pgha_controller::config::secrets_dir(&dir);
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&secrets)
                    .with_context(|| format!("creating {}", secrets.display()))?;
            }
            let secret_name = format!("{}.secret", pgha_api::DEFAULT_FORMATION);
            let secret_file = secrets.join(&secret_name);
            pgha_controller::desired::write_secret(
                &secret_file,
                &pgha_controller::records::random_secret()?,
            )
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", secret_file.display()))?;
            std::fs::write(
                &default,
                pgha_controller::desired::default_formation_yaml(
                    pgha_api::DEFAULT_FORMATION,
                    &secret_name,
                ),
            )
            .with_context(|| format!("writing {}", default.display()))?;
        }
        if store == pgha_controller::config::StoreConfig::File {
            FileStore::new(&dir).load()?;
        }
        pgha_controller::credentials::ensure(&dir)?;
        let cfg = MonitorConfig {
            dir: dir.clone(),
            listen: a.listen.clone(),
            hostname: a.hostname.clone(),
            sslmode: if a.ssl_self_signed {
                "require"
            } else {
                "prefer"
            }
            .into(),
            formations_dir: Some(dir.join("formations")),
            tls,
            store,
            controllers: a.controllers.clone(),
        };
        cfg.save()?;
        eprintln!("created monitor in {}: {}", dir.display(), cfg.url());
    }
    if a.run {
        let cfg = MonitorConfig::load(&dir)?;
        return pgha_controller::run(cfg, crate::shutdown_signal()).await;
    }
    Ok(())
}

/// The etcd settings of `create monitor --store etcd` (and `migrate`), checked against
/// etcd itself: it answers, and its prefix holds a group's state exactly when a
/// controller is being added to that group (`joining`).
pub fn etcd_store(
    a: &EtcdArgs,
    joining: bool,
) -> anyhow::Result<pgha_controller::config::StoreConfig> {
    if a.etcd_endpoints.is_empty() {
        bail!("--store etcd needs --etcd-endpoints URL,... (the etcd members' client URLs)");
    }
    #[cfg(not(feature = "etcd"))]
    {
        let _ = joining;
        bail!("--store etcd: this pgha was built without the `etcd` feature");
    }
    #[cfg(feature = "etcd")]
    {
        let settings = a.settings()?;
        let etcd =
            pgha_controller::store::etcd::Etcd::connect(&settings).context("--etcd-endpoints")?;
        let holds = etcd.holds_state().context("--etcd-endpoints")?;
        if holds && !joining {
            bail!(
                "etcd prefix {} already holds a controller group's state: add this controller to it with --copy-from <the first controller's directory>, or choose another --etcd-prefix",
                a.etcd_prefix
            );
        }
        Ok(pgha_controller::config::StoreConfig::Etcd(settings))
    }
}

impl EtcdArgs {
    pub fn endpoints_text(&self) -> String {
        self.etcd_endpoints.join(",")
    }

    pub fn prefix(&self) -> &str {
        &self.etcd_prefix
    }

    pub fn settings(&self) -> anyhow::Result<pgha_controller::config::EtcdSettings> {
        Ok(pgha_controller::config::EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca_file: self.etcd_ca_file.as_deref().map(absolute).transpose()?,
            user: self.etcd_user.clone(),
            password_file: self
                .etcd_password_file
                .as_deref()
                .map(absolute)
                .transpose()?,
            cert_file: self.etcd_cert_file.as_deref().map(absolute).transpose()?,
            key_file: self.etcd_key_file.as_deref().map(absolute).transpose()?,
            insecure: self.etcd_insecure,
            lease_ttl_s: self.etcd_lease_ttl,
        })
    }
}

/// Takes over a group's shared files from another controller's directory: the
/// operator's and read credentials, the join secrets, the formation files (paths in
/// them that name the other directory are rewritten to name this one).
fn copy_group_files(from: &Path, dir: &Path) -> anyhow::Result<()> {
    let other = MonitorConfig::load(from).context("--copy-from")?;
    if !matches!(other.store, pgha_controller::config::StoreConfig::Etcd(_)) {
        bail!(
            "--copy-from {}: that monitor keeps its state in its directory, not in etcd; only controllers of an etcd store form a group",
            from.display()
        );
    }
    let from_text = from.display().to_string();
    let dir_text = dir.display().to_string();
    let secrets_from = pgha_controller::config::secrets_dir(from);
    let secrets_sub = secrets_from
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| pgha_controller::config::SECRETS_DIR.into());
    for sub in ["credentials", secrets_sub.as_str(), "formations"] {
        let src = from.join(sub);
        let Ok(entries) = std::fs::read_dir(&src) else {
            continue;
        };
        let dst = dir.join(sub);
        std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
        for e in entries {
            let e = e?;
            if !e.file_type()?.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            let text = match sub {
                "formations" => text.replace(&from_text, &dir_text),
                _ => text,
            };
            let target = dst.join(e.file_name());
            pgha_controller::store::write_file_atomically(&target, text.as_bytes())?;
        }
    }
    Ok(())
}

/// A group member's TLS identity: the group's CA (from the first controller's
/// directory) and a certificate of its own for `hostname`, so one pin covers them all.
fn group_tls(
    from: &Path,
    dir: &Path,
    hostname: &str,
) -> anyhow::Result<Option<pgha_controller::config::TlsFiles>> {
    let other = MonitorConfig::load(from).context("--copy-from")?;
    let Some(t) = other.tls else {
        return Ok(None);
    };
    let ca_key_file = t.ca.with_file_name("ca.key");
    let ca_key_file = if ca_key_file.exists() {
        ca_key_file
    } else {
        from.join("tls").join("ca.key")
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| {
            format!(
                "--copy-from: reading {} (a new controller's certificate is signed by the group's CA)",
                p.display()
            )
        })
    };
    let ca_pem = read(&t.ca)?;
    let ca_key = read(&ca_key_file)?;
    let (chain, key) = pgha_api::tls::issue_server_certificate(&ca_pem, &ca_key, hostname)
        .map_err(|e| anyhow::anyhow!("--copy-from: {e}"))?;
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = tls_dir.join(name);
        pgha_controller::store::write_file_atomically(&path, text.as_bytes())?;
        Ok(path)
    };
    let ca = write("ca.crt", &ca_pem)?;
    write("ca.key", &ca_key)?;
    Ok(Some(pgha_controller::config::TlsFiles {
        chain: write("server.crt", &chain)?,
        key: write("server.key", &key)?,
        ca,
        ca_fingerprint: t.ca_fingerprint,
    }))
}

/// The API's TLS identity: the operator's own (checked: the certificate must chain to
/// the CA and name --hostname), or a CA and certificate made here into `<dir>/tls`.
fn monitor_tls(dir: &Path, a: &MonitorArgs) -> anyhow::Result<pgha_controller::config::TlsFiles> {
    use pgha_api::tls;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls_dir = dir.join("tls");
    if let (Some(ca), Some(cert), Some(key)) = (&a.ssl_ca_file, &a.server_cert, &a.server_key) {
        let (ca, cert, key) = (absolute(ca)?, absolute(cert)?, absolute(key)?);
        let ca_certs = tls::certs_from_pem(&read(&ca)?)
            .map_err(|e| anyhow::anyhow!("--ssl-ca-file {}: {e}", ca.display()))?;
        let mut chain = tls::certs_from_pem(&read(&cert)?)
            .map_err(|e| anyhow::anyhow!("--server-cert {}: {e}", cert.display()))?;
        let fingerprint = tls::fingerprint(&ca_certs[0]);
        let has_ca = chain.iter().any(|c| tls::fingerprint(c) == fingerprint);
        if !has_ca {
            chain.push(ca_certs[0].clone());
        }
        tls::check_chain(&chain, &fingerprint, &a.hostname).map_err(|e| {
            anyhow::anyhow!(
                "--server-cert {} does not verify for --hostname {} against --ssl-ca-file: {e}",
                cert.display(),
                a.hostname
            )
        })?;
        // The served chain ends with the CA (clients find it there by its fingerprint).
        let chain_file = if has_ca {
            cert.clone()
        } else {
            std::fs::create_dir_all(&tls_dir)?;
            let joined = format!(
                "{}{}",
                String::from_utf8_lossy(&read(&cert)?),
                String::from_utf8_lossy(&read(&ca)?)
            );
            let f = tls_dir.join("server-chain.crt");
            std::fs::write(&f, joined).with_context(|| format!("writing {}", f.display()))?;
            f
        };
        tls::server_config(&read(&chain_file)?, &read(&key)?)
            .map_err(|e| anyhow::anyhow!("--server-cert/--server-key: {e}"))?;
        return Ok(pgha_controller::config::TlsFiles {
            chain: chain_file,
            key,
            ca,
            ca_fingerprint: fingerprint,
        });
    }
    let pki = tls::generate_pki(&a.hostname)
        .map_err(|e| anyhow::anyhow!("making the monitor's certificate: {e}"))?;
    std::fs::create_dir_all(&tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
    let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = tls_dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(path)
    };
    let ca = write("ca.crt", &pki.ca_cert_pem, 0o644)?;
    write("ca.key", &pki.ca_key_pem, 0o600)?;
    let chain = write("server.crt", &pki.server_chain_pem, 0o644)?;
    let key = write("server.key", &pki.server_key_pem, 0o600)?;
    Ok(pgha_controller::config::TlsFiles {
        chain,
        key,
        ca,
        ca_fingerprint: pki.ca_fingerprint,
    })
}

pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The node's installs: those given with `--pg-bin-dir`, else every
/// `/usr/lib/postgresql/N/bin`; with `--ssl-self-signed`, only those built with SSL.
/// Checked before anything is registered: a bad one is refused by name.
fn installs(a: &PostgresArgs) -> anyhow::Result<Vec<Install>> {
    let given = !a.pg_bin_dir.is_empty();
    let dirs = if given {
        a.pg_bin_dir.clone()
    } else {
        installs::debian_layout()
    };
    if dirs.is_empty() {
        bail!(
            "no PostgreSQL found under /usr/lib/postgresql: install one of PostgreSQL {} (e.g. postgresql-15) or pass --pg-bin-dir",
            pgha_api::PgMajor::supported_list()
        );
    }
    let mut found = vec![];
    for d in &dirs {
        let i = installs::inspect(d).map_err(|e| anyhow::anyhow!("--pg-bin-dir {e}"))?;
        if found.iter().any(|f: &Install| f.bin_dir == i.bin_dir) {
            continue;
        }
        found.push(i);
    }
    if a.ssl_self_signed {
        let (with, without): (Vec<Install>, Vec<Install>) = found
            .into_iter()
            .partition(|i| installs::has_openssl(&i.bin_dir) != Some(false));
        if with.is_empty() {
            bail!(
                "--ssl-self-signed: {} built without SSL (pg_config --configure has no --with-openssl): install a build with OpenSSL (the distribution's or PGDG's packages have it), or leave out --ssl-self-signed",
                without
                    .iter()
                    .map(|i| format!("PostgreSQL {} at {} is", i.major, i.bin_dir.display()))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        for i in &without {
            eprintln!(
                "note: PostgreSQL {} at {} has no SSL and is not used with --ssl-self-signed",
                i.major,
                i.bin_dir.display()
            );
        }
        found = with;
    }
    Ok(found)
}

/// The install a new node runs: the formation's major (the monitor's answer), else the
/// first `--pg-bin-dir` given, else the newest found.
fn install_for(
    found: &[Install],
    major: Option<pgha_api::PgMajor>,
    given: bool,
) -> Option<&Install> {
    match major {
        Some(m) => found.iter().find(|i| i.major == m),
        None if given => found.first(),
        None => found.iter().max_by_key(|i| i.major),
    }
}

async fn postgres(a: PostgresArgs) -> anyhow::Result<()> {
    let pgdata = absolute(&a.pgdata)?;
    if let Ok(existing) = AgentConfig::load(&pgdata) {
        eprintln!(
            "{} is already node {} ({:?}) of formation {:?} at {}; run it with: pgha run --pgdata {}",
            pgdata.display(),
            existing.node_id,
            existing.name,
            existing.formation,
            pgha_api::client::redact(&existing.monitor),
            pgdata.display()
        );
        if a.run {
            return crate::agent_exit(pgha_agent::run(existing, crate::shutdown_signal()).await?);
        }
        return Ok(());
    }
    // 1. Local checks, before anything is written or registered.
    pgha_api::host::validate_host(&a.hostname).map_err(|e| anyhow::anyhow!("--hostname: {e}"))?;
    let found = installs(&a)?;
    check_pgdata(&pgdata)?;
    check_flags(&a)?;
    let os_user = a.os_user.clone();
    let on_role_change = executable_hook("--on-role-change", a.on_role_change.as_deref())?;
    let pre_promote = executable_hook("--pre-promote", a.pre_promote.as_deref())?;
    let on_start = executable_hook("--on-start", a.on_start.as_deref())?;
    let on_stop = executable_hook("--on-stop", a.on_stop.as_deref())?;
    let restore_from = restore_from(&a)?;
    // 2. The monitor: reachable, and willing to take us.
    // Stored resolved: the node keeps working when an @FILE given here is removed.
    let monitor =
        pgha_api::client::resolve_url(&a.monitor).map_err(|e| anyhow::anyhow!("--monitor: {e}"))?;
    let client = MonitorClient::new(&monitor, Duration::from_secs(5))?;
    client
        .get_text(pgha_api::routes::HEALTHZ)
        .await
        .context("--monitor")?;
    let reg = client
        .register(&RegisterRequest {
            formation: a.formation.clone(),
            name: a.name.clone(),
            host: a.hostname.clone(),
            port: a.pgport,
            dbname: a.dbname.clone(),
            candidate_priority: a.candidate_priority,
            replication_quorum: a.replication_quorum,
            installs: found.iter().map(|i| i.major).collect(),
        })
        .await
        .context("registering with the monitor")?;
    // The monitor checked that we have its major (an older monitor says none).
    let Some(install) = install_for(&found, reg.major, !a.pg_bin_dir.is_empty()) else {
        bail!(
            "registered {} as node {}, but formation {:?} runs PostgreSQL {} and this node has none: install it, then `pgha drop node --name {}` and create the node again",
            reg.name,
            reg.node_id,
            reg.formation,
            reg.major.map(|m| m.to_string()).unwrap_or_default(),
            reg.name
        );
    };
    let pg_bin_dir = install.bin_dir.clone();
    let pg_bin_dirs = found
        .iter()
        .filter(|i| i.bin_dir != pg_bin_dir)
        .map(|i| i.bin_dir.clone())
        .collect();
    // 3. Our files.
    let cfg = AgentConfig {
        pgdata: pgdata.clone(),
        pgport: a.pgport,
        hostname: a.hostname,
        dbname: a.dbname,
        username: a.username,
        // The node reports with its own credential: the URL keeps no secret.
        monitor: pgha_api::client::split_secret(&monitor).0,
        formation: reg.formation,
        name: reg.name.clone(),
        node_id: reg.node_id,
        pg_bin_dir,
        pg_bin_dirs,
        auth: match a.auth {
            Auth::Trust => AuthMethod::Trust,
            Auth::ScramSha256 => AuthMethod::ScramSha256,
        },
        ssl_self_signed: a.ssl_self_signed,
        skip_pg_hba: a.skip_pg_hba,
        os_user,
        http_port: a.http_port,
        metrics_listen: a.metrics_listen.clone(),
        health_allow: a.health_allow.clone(),
        on_role_change,
        pre_promote,
        on_start,
        on_stop,
        replication_password: reg.replication_password.clone(),
        node_token: Some(reg.node_token.clone()),
        restore_from,
    };
    if cfg.restore_from.is_some() && reg.assigned_state != pgha_api::NodeState::Single {
        bail!(
            "--restore-from builds a formation's first node, and {:?} has one already: {} was registered as node {} (assigned {}); drop it with `pgha drop node --name {}`",
            cfg.formation,
            reg.name,
            reg.node_id,
            reg.assigned_state,
            reg.name
        );
    }
    cfg.save()?;
    eprintln!(
        "registered {} as node {} of formation {:?}, assigned {}; start it with: pgha run --pgdata {}",
        reg.name,
        reg.node_id,
        cfg.formation,
        reg.assigned_state,
        pgdata.display()
    );
    if a.run {
        return crate::agent_exit(pgha_agent::run(cfg, crate::shutdown_signal()).await?);
    }
    Ok(())
}

/// PGDATA must be new or empty: pgha never adopts nor overwrites a cluster it did not
/// make.
fn check_pgdata(pgdata: &Path) -> anyhow::Result<()> {
    if pgdata.join("PG_VERSION").exists() {
        let sysid = std::fs::read_to_string(pgdata.join("PG_VERSION")).unwrap_or_default();
        bail!(
            "--pgdata {}: holds a Postgres {} cluster that pgha did not create; \
             pgha will not adopt or overwrite it: pass an empty or new directory",
            pgdata.display(),
            sysid.trim()
        );
    }
    if pgdata.is_dir() && std::fs::read_dir(pgdata)?.next().is_some() {
        bail!("--pgdata {}: directory is not empty", pgdata.display());
    }
    if pgdata.exists() && !pgdata.is_dir() {
        bail!(
            "--pgdata {}: exists and is not a directory",
            pgdata.display()
        );
    }
    Ok(())
}

/// The flags that need no monitor: the port free, the Postgres OS user there when run
/// as root, the listen addresses well formed; a warning for `--auth trust`.
fn check_flags(a: &PostgresArgs) -> anyhow::Result<()> {
    if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", a.pgport)) {
        bail!("--pgport {}: port is already in use ({e})", a.pgport);
    }
    if nix::unistd::geteuid().is_root() {
        let name = a.os_user.clone().unwrap_or_else(|| "postgres".into());
        if nix::unistd::User::from_name(&name).ok().flatten().is_none() {
            bail!(
                "running as root, Postgres needs an unprivileged OS user: {name:?} does not exist (pass --os-user)"
            );
        }
    }
    if matches!(a.auth, Auth::Trust) {
        eprintln!(
            "WARNING: --auth trust: anyone who reaches this Postgres connects without a password; fine for a throwaway tutorial, not for production (the default is scram-sha-256)"
        );
    }
    if let Some(m) = &a.metrics_listen {
        m.parse::<std::net::SocketAddr>()
            .with_context(|| format!("--metrics-listen {m:?}: expected ADDRESS:PORT"))?;
    }
    for n in &a.health_allow {
        n.parse::<pgha_api::server::Network>()
            .map_err(|e| anyhow::anyhow!("--health-allow: {e}"))?;
    }
    Ok(())
}

/// A hook given on the command line: made absolute, and refused unless it is an
/// executable file.
fn executable_hook(flag: &str, path: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let Some(hook) = path.map(absolute).transpose()? else {
        return Ok(None);
    };
    pgha_agent::hooks::check_hook(&hook)
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", hook.display()))?;
    Ok(Some(hook))
}
