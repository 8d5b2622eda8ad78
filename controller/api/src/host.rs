//! The one place a node's host string is judged. A host reaches `pg_hba.conf`, libpq
//! conninfo strings and the controller's admission checks, so it is parsed at every entry
//! point (registration, formation files, `create postgres --hostname`, and again by the
//! agent before it renders a peer) and only three shapes pass:
//! - an IP address (IPv4, or IPv6 with or without brackets);
//! - a DNS name per RFC 1123: dot-separated labels of letters, digits and '-', each 1-63
//!   characters and not starting or ending with '-', 253 characters at most;
//! - nothing else: no CIDR, no spaces, quotes, commas, control characters, and none of
//!   pg_hba's keywords (`all`, `samehost`, `samenet`), which a label could spell.

use std::fmt;
use std::net::IpAddr;

/// A validated node host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

/// Why a host string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HostError {}

/// Words pg_hba.conf reads as keywords in its address field.
const HBA_KEYWORDS: [&str; 3] = ["all", "samehost", "samenet"];

impl Host {
    pub fn parse(s: &str) -> Result<Host, HostError> {
        let refuse = |why: &str| Err(HostError(format!("host {s:?} {why}")));
        if s.is_empty() {
            return refuse("is empty");
        }
        let bare = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if bare != s && ip.is_ipv4() {
                return refuse("puts an IPv4 address in brackets");
            }
            return Ok(Host::Ip(ip));
        }
        if bare != s {
            return refuse("is bracketed but not an IPv6 address");
        }
        if s.contains('/') {
            return refuse("is a network (CIDR), not one host");
        }
        if s.len() > 253 {
            return refuse("is longer than 253 characters");
        }
        let lower = s.to_ascii_lowercase();
        if HBA_KEYWORDS.contains(&lower.as_str()) {
            return refuse("is a pg_hba.conf keyword, not a host");
        }
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return refuse("has an empty or over-long (63+) DNS label");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return refuse(
                    "is neither an IP address nor a DNS name (letters, digits, '-' and '.')",
                );
            }
            if label.starts_with('-') || label.ends_with('-') {
                return refuse("has a DNS label starting or ending with '-'");
            }
        }
        // An all-numeric name that did not parse as an IP is a mistyped address.
        if name
            .split('.')
            .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return refuse("looks like an IP address but is not one");
        }
        Ok(Host::Dns(name.to_string()))
    }

    /// The host's form in `pg_hba.conf`: one host, never a wider network.
    pub fn hba_address(&self) -> String {
        match self {
            Host::Ip(IpAddr::V4(ip)) => format!("{ip}/32"),
            Host::Ip(IpAddr::V6(ip)) => format!("{ip}/128"),
            Host::Dns(name) => name.clone(),
        }
    }

    /// The host as libpq and the Postgres tools take it (IPv6 without brackets).
    pub fn libpq(&self) -> String {
        match self {
            Host::Ip(ip) => ip.to_string(),
            Host::Dns(name) => name.clone(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.libpq())
    }
}

/// Validates a host string (see [`Host::parse`]).
pub fn validate_host(s: &str) -> Result<(), HostError> {
    Host::parse(s).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_addresses_and_names() {
        for ok in [
            "127.0.0.1",
            "10.0.1.4",
            "::1",
            "[fd00::5]",
            "db-a.example.internal",
            "localhost",
            "node1",
            "DB-A.Example.Internal.",
        ] {
            assert!(Host::parse(ok).is_ok(), "{ok} refused");
        }
        assert_eq!(
            Host::parse("[fd00::5]").unwrap().hba_address(),
            "fd00::5/128"
        );
        assert_eq!(
            Host::parse("10.0.0.1").unwrap().hba_address(),
            "10.0.0.1/32"
        );
        assert_eq!(
            Host::parse("DB.example.").unwrap().hba_address(),
            "db.example"
        );
    }

    #[test]
    fn refuses_what_would_widen_or_break_pg_hba() {
        for bad in [
            "",
            "all",
            "ALL",
            "samenet",
            "samehost",
            "0.0.0.0/0",
            "10.0.0.0/8",
            "a b",
            "db\nhost all all 0.0.0.0/0 trust",
            "db\r",
            "db\t",
            "'db'",
            "\"db\"",
            "db,other",
            "-db",
            "db-",
            "a..b",
            ".example",
            "999.1.1.1",
            "[10.0.0.1]",
            "[db]",
            "db#x",
            "db=x",
            "db\\",
            &"a".repeat(64),
            &format!("{}.x", "a.".repeat(130)),
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
