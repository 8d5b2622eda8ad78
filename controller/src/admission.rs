//! Who may join a formation and speak for its nodes (docs/src/design.md §5 rule 7). Pure checks on
//! a formation's record, the request and the client's address: no lock, no I/O. `http`
//! maps a [`Refusal`] to its status code.

use crate::records::{AdmissionRule, FormationRecord};
use pgha_api::RegisterRequest;
use pgha_api::formation::NodeSpec;
use pgha_api::routes::ErrorCode;
use std::net::IpAddr;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse<T>(code: ErrorCode, message: String) -> Result<T, Refusal> {
    Err(Refusal { code, message })
}

/// A request for `f` presenting `presented` (the bearer token) passes when the
/// formation is open by its file, or the token is its join secret.
pub fn check_secret(f: &FormationRecord, presented: Option<&str>) -> Result<(), Refusal> {
    let want = match f.admission() {
        AdmissionRule::Open => return Ok(()),
        AdmissionRule::Secret(s) => s,
        AdmissionRule::Closed => {
            return refuse(
                ErrorCode::JoinSecret,
                format!(
                    "formation {:?} has no join secret in force (its file names none that could be read, and it is not `admission: open: true`): nothing is admitted",
                    f.name
                ),
            );
        }
    };
    let got = presented.unwrap_or("");
    if crate::records::join_secret_matches(want, got) {
        Ok(())
    } else {
        refuse(
            ErrorCode::JoinSecret,
            format!(
                "formation {:?} needs its join secret: use the monitor URL that `pgha show uri --dir <monitor dir>` prints on the monitor VM",
                f.name
            ),
        )
    }
}

/// Whether a request from `peer` may speak for a node declared at `host`: a node
/// declared at an IP address registers and reports from that address only (a DNS name
/// is not resolved here; per-node credentials are what binds those).
pub fn peer_may_speak_for(host: &str, peer: IpAddr) -> bool {
    match pgha_api::host::Host::parse(host) {
        Ok(pgha_api::host::Host::Ip(ip)) => ip.to_canonical() == peer.to_canonical(),
        _ => true,
    }
}

/// The declared host of a node, when the formation file declares its nodes.
pub fn declared_host<'a>(f: &'a FormationRecord, name: &str) -> Option<&'a str> {
    let spec = f.spec()?;
    if !spec.declared_nodes_only() {
        return None;
    }
    spec.nodes
        .iter()
        .find(|d| d.name == name)
        .map(|d| d.host.as_str())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `req`, coming from `peer`, may register into `f` (its join secret already
/// checked). Admitted, it returns the node's declaration when the file declares its
/// nodes (its priority and quorum then come from the file). Nothing is stored here.
pub fn admit_registration(
    f: &FormationRecord,
    req: &RegisterRequest,
    peer: IpAddr,
) -> Result<Option<NodeSpec>, Refusal> {
    if let Some(name) = &req.name
        && !valid_name(name)
    {
        return refuse(
            ErrorCode::InvalidName,
            format!("node name {name:?} must be 1-63 letters, digits, '_' or '-'"),
        );
    }
    if let Err(e) = pgha_api::host::validate_host(&req.host) {
        return refuse(ErrorCode::InvalidHost, e.to_string());
    }
    if req.port == 0 {
        return refuse(
            ErrorCode::InvalidHost,
            "port 0 is not a port Postgres listens on".into(),
        );
    }
    if let Err(e) = pgha_api::validate::check_dbname(&req.dbname) {
        return refuse(ErrorCode::InvalidName, e);
    }
    if f.nodes.len() >= pgha_api::formation::MAX_NODES {
        return refuse(
            ErrorCode::FormationFull,
            format!(
                "formation {:?} already has {} nodes, the most a formation holds",
                f.name,
                f.nodes.len()
            ),
        );
    }
    if let Some(n) = f
        .nodes
        .values()
        .find(|n| req.name.as_deref() == Some(n.name.as_str()))
    {
        return refuse(
            ErrorCode::NameTaken,
            format!(
                "node name {:?} is already taken in formation {:?} by {}:{}",
                n.name, f.name, n.host, n.port
            ),
        );
    }
    if let Some(n) = f
        .nodes
        .values()
        .find(|n| n.host == req.host && n.port == req.port)
    {
        return refuse(
            ErrorCode::AddressTaken,
            format!(
                "{}:{} is already registered in formation {:?} as node {:?}",
                req.host, req.port, f.name, n.name
            ),
        );
    }
    // A formation file that declares its nodes admits only those, each from its
    // declared address.
    let file = f.desired.source_file.clone().unwrap_or_default();
    let declared = match f.spec().filter(|s| s.declared_nodes_only()) {
        None => None,
        Some(spec) => {
            let name = req.name.as_deref().unwrap_or("");
            let Some(d) = spec.nodes.iter().find(|n| n.name == name) else {
                return refuse(
                    ErrorCode::NotDeclared,
                    format!(
                        "node {:?} is not declared in formation {:?} ({file}): add it under spec.nodes, or pass the --name of a declared node",
                        req.name.as_deref().unwrap_or("(no --name)"),
                        f.name
                    ),
                );
            };
            if !peer_may_speak_for(&d.host, peer) {
                return refuse(
                    ErrorCode::AddressMismatch,
                    format!(
                        "node {:?} is declared at {} in {file}; this registration came from {peer}",
                        d.name, d.host
                    ),
                );
            }
            if d.host != req.host || d.port != req.port {
                return refuse(
                    ErrorCode::AddressMismatch,
                    format!(
                        "node {:?} is declared at {}:{} in {file}, not {}:{}",
                        d.name, d.host, d.port, req.host, req.port
                    ),
                );
            }
            Some(d.clone())
        }
    };
    if let Some(db) = f.spec().and_then(|s| s.dbname.as_ref())
        && *db != req.dbname
    {
        return refuse(
            ErrorCode::DbnameMismatch,
            format!(
                "formation {:?} serves database {db:?} ({file}), not {:?}",
                f.name, req.dbname
            ),
        );
    }
    if !f.nodes.is_empty() && f.dbname != req.dbname {
        return refuse(
            ErrorCode::DbnameMismatch,
            format!(
                "formation {:?} serves database {:?}, not {:?}",
                f.name, f.dbname, req.dbname
            ),
        );
    }
    Ok(declared)
}

/// A node that says which majors it has installed must have the formation's (`wanted`:
/// its primary's, or the file's before there is one): without it, it could neither
/// copy the primary nor be elected. A node that says nothing (an older agent) is let
/// through; the planner keeps it apart if its data turns out another major.
pub fn admit_major(
    formation: &str,
    req: &RegisterRequest,
    wanted: Option<pgha_api::PgMajor>,
) -> Result<(), Refusal> {
    let Some(m) = wanted else { return Ok(()) };
    if req.installs.is_empty() || req.installs.contains(&m) {
        return Ok(());
    }
    let has: Vec<String> = req.installs.iter().map(|m| m.to_string()).collect();
    refuse(
        ErrorCode::MajorMissing,
        format!(
            "formation {formation:?} runs PostgreSQL {m}, and {} has PostgreSQL {} only: install PostgreSQL {m} on it (e.g. the postgresql-{m} package) or pass its bin directory with --pg-bin-dir",
            req.name.as_deref().unwrap_or("this node"),
            has.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgha_api::validate::parse_formation;

    fn record(admission: &str) -> FormationRecord {
        let text = format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: orders\nspec:\n  dbname: orders\n  admission:\n{admission}  nodes:\n    - name: node_a\n      host: 10.0.0.1\n"
        );
        let doc = parse_formation("orders.yaml", text.as_bytes()).unwrap();
        let mut f = FormationRecord::new("orders", "orders");
        f.desired.spec = Some(doc.spec);
        f
    }

    fn req(name: &str, host: &str) -> RegisterRequest {
        RegisterRequest::new("orders", name, host, 5432, "orders")
    }

    /// Issue 26: a node without the formation's major is refused, by name and majors.
    #[test]
    fn a_node_without_the_formations_major_is_refused() {
        use pgha_api::PgMajor;
        let mut r = req("node_c", "10.0.0.3");
        r.installs = vec![PgMajor(16)];
        let e = admit_major("orders", &r, Some(PgMajor(15))).unwrap_err();
        assert_eq!(e.code, ErrorCode::MajorMissing);
        assert!(
            e.message.contains("runs PostgreSQL 15")
                && e.message.contains("node_c has PostgreSQL 16 only"),
            "{}",
            e.message
        );
        r.installs = vec![PgMajor(15), PgMajor(16)];
        assert!(admit_major("orders", &r, Some(PgMajor(15))).is_ok());
        // Nothing decided yet, or an agent that does not say: let through.
        r.installs = vec![PgMajor(16)];
        assert!(admit_major("orders", &r, None).is_ok());
        r.installs = vec![];
        assert!(admit_major("orders", &r, Some(PgMajor(15))).is_ok());
    }

    #[test]
    fn secrets_and_declarations_decide_who_joins() {
        let code = |r: Result<_, Refusal>| r.err().map(|e| e.code);
        let open = record("    open: true\n");
        assert_eq!(code(check_secret(&open, None)), None);
        let mut closed = record("    joinSecretFile: /etc/pgha/orders.secret\n");
        assert_eq!(
            code(check_secret(&closed, Some("x"))),
            Some(ErrorCode::JoinSecret)
        );
        closed.desired.join_secret = Some("s3cret".into());
        assert_eq!(code(check_secret(&closed, Some("s3cret"))), None);
        assert_eq!(
            code(check_secret(&closed, Some("s3cre"))),
            Some(ErrorCode::JoinSecret)
        );
        assert_eq!(
            code(check_secret(&closed, None)),
            Some(ErrorCode::JoinSecret)
        );

        let from = |ip: &str| ip.parse::<IpAddr>().unwrap();
        let admitted = admit_registration(&open, &req("node_a", "10.0.0.1"), from("10.0.0.1"));
        assert_eq!(admitted.unwrap().unwrap().name, "node_a");
        for (r, peer, want) in [
            (
                req("node_b", "10.0.0.2"),
                "10.0.0.2",
                ErrorCode::NotDeclared,
            ),
            (
                req("node_a", "10.0.0.1"),
                "10.0.0.9",
                ErrorCode::AddressMismatch,
            ),
            (
                req("node_a", "10.0.0.7"),
                "10.0.0.1",
                ErrorCode::AddressMismatch,
            ),
            (
                req("node a", "10.0.0.1"),
                "10.0.0.1",
                ErrorCode::InvalidName,
            ),
            (
                req("node_a", "0.0.0.0/0"),
                "10.0.0.1",
                ErrorCode::InvalidHost,
            ),
        ] {
            assert_eq!(
                code(admit_registration(&open, &r, from(peer)).map(|_| ())),
                Some(want)
            );
        }
    }
}
