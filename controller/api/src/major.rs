//! The PostgreSQL major version as a value, and what differs between majors, by
//! capability: code asks `major.failover_slots()`, never `major >= 17`.

use serde::{Deserialize, Serialize};

/// A PostgreSQL major version (15, 16, 17, 18…).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct PgMajor(pub u32);

/// The majors pgha runs. Older ones are refused at `create postgres`.
pub const SUPPORTED_MAJORS: [PgMajor; 4] = [PgMajor(15), PgMajor(16), PgMajor(17), PgMajor(18)];

impl PgMajor {
    /// From a data directory's `PG_VERSION` file (`15\n`); None when it holds no major.
    pub fn from_pg_version_file(text: &str) -> Option<PgMajor> {
        let t = text.trim();
        (!t.is_empty() && t.len() <= 3 && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok().map(PgMajor))
            .flatten()
    }

    /// From what a Postgres binary says of itself (`pg_ctl (PostgreSQL) 15.18 (Debian
    /// 15.18-0+deb12u1)`, `postgres (PostgreSQL) 18.4`); None when it says no version.
    pub fn from_version_output(text: &str) -> Option<PgMajor> {
        let after = text.split("(PostgreSQL)").nth(1)?.trim_start();
        let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok().map(PgMajor)
    }

    /// From `server_version_num` (150018 -> 15).
    pub fn from_server_version_num(n: u32) -> PgMajor {
        PgMajor(n / 10_000)
    }

    /// Whether pgha runs this major.
    pub fn is_supported(self) -> bool {
        SUPPORTED_MAJORS.contains(&self)
    }

    /// The supported majors, for messages (`15, 16, 17, 18`).
    pub fn supported_list() -> String {
        SUPPORTED_MAJORS
            .iter()
            .map(|m| m.0.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Logical slots that Postgres itself keeps on standbys (`failover` slots,
    /// `sync_replication_slots`, `synchronized_standby_slots`): 17 and later.
    pub fn failover_slots(self) -> bool {
        self.0 >= 17
    }

    /// `reserved_connections` and the `pg_use_reserved_connections` role: 16 and later.
    pub fn reserved_connections(self) -> bool {
        self.0 >= 16
    }

    /// libpq's `require_auth` (refuse a server asking for a clear-text password): 16
    /// and later.
    pub fn require_auth(self) -> bool {
        self.0 >= 16
    }
}

impl std::fmt::Display for PgMajor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_are_read_from_data_directories_binaries_and_servers() {
        assert_eq!(PgMajor::from_pg_version_file("15\n"), Some(PgMajor(15)));
        assert_eq!(PgMajor::from_pg_version_file("9.6\n"), None);
        assert_eq!(PgMajor::from_pg_version_file(""), None);
        assert_eq!(
            PgMajor::from_version_output("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(PgMajor(15))
        );
        assert_eq!(
            PgMajor::from_version_output("postgres (PostgreSQL) 18.4\n"),
            Some(PgMajor(18))
        );
        assert_eq!(
            PgMajor::from_version_output("postgres (PostgreSQL) 9.6.24"),
            Some(PgMajor(9))
        );
        assert_eq!(PgMajor::from_version_output("bash: no"), None);
        assert_eq!(PgMajor::from_server_version_num(160014), PgMajor(16));
    }

    #[test]
    fn capabilities_follow_the_major() {
        assert!(!PgMajor(15).failover_slots() && !PgMajor(16).failover_slots());
        assert!(PgMajor(17).failover_slots() && PgMajor(18).failover_slots());
        assert!(!PgMajor(15).reserved_connections() && PgMajor(16).reserved_connections());
        assert!(!PgMajor(14).is_supported() && PgMajor(18).is_supported());
        assert_eq!(PgMajor::supported_list(), "15, 16, 17, 18");
    }
}
