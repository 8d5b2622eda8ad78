//! Logical slots kept across a failover, by capability (`PgMajor::failover_slots`):
//! - 15 and 16: Postgres keeps no logical slot on a standby by itself. The primary's
//!   slot state file (`pg_replslot/<name>/state`) travels in its report, a standby
//!   installs it before a start and advances its copy (`crate::plan`); this module
//!   knows that file's layout;
//! - 17 and later: Postgres's own failover slots (`crate::plan::LogicalSlots`,
//!   configured in `conf`), nothing to copy.

use pgha_api::{LogicalSlot, Lsn};
use std::path::Path;

/// The `restart_lsn` saved in a slot state file (the WAL a copy made from it needs from
/// the start): the little-endian 64-bit word at byte 96 of a PostgreSQL 9.4-18 slot
/// file (magic, checksum, version, length, then the slot's name[64], database,
/// persistency, xmin, catalog_xmin). None when `state` is not such a file.
pub fn state_restart_lsn(slot: &LogicalSlot) -> Option<Lsn> {
    const SLOT_MAGIC: u32 = 0x0105_1CA1;
    let bytes = pgha_api::from_hex(slot.state.as_deref()?)?;
    let word = |at: usize, n: usize| bytes.get(at..at + n);
    let magic = u32::from_le_bytes(word(0, 4)?.try_into().ok()?);
    if magic != SLOT_MAGIC {
        return None;
    }
    Some(Lsn(u64::from_le_bytes(word(96, 8)?.try_into().ok()?)))
}

/// Adds each logical slot's state file, as Postgres last saved it (it replaces the file
/// by a rename, so a read sees a whole one): a standby loads it to hold a copy.
/// Longest slot state file read (PostgreSQL's is about 200 bytes).
const SLOT_STATE_MAX: u64 = 4096;

/// Fills in each logical slot's state file, as the controller passes it to standbys.
/// Only a real slot state file (its magic checked) is taken: the agent runs as root in
/// a directory the Postgres superuser can change, and whatever it takes here travels in
/// reports (a link to the agent's own config would carry its token).
pub fn read_state_files(pgdata: &Path, slots: &mut [pgha_api::SlotPosition]) {
    for s in slots {
        if pgha_api::validate::check_slot_name(&s.name).is_err() {
            continue;
        }
        if let Some(l) = s.logical.as_mut() {
            let path = slot_state_path(pgdata, &s.name);
            match crate::files::read_capped(&path, SLOT_STATE_MAX) {
                Ok(Some(bytes)) => {
                    l.state = Some(pgha_api::to_hex(&bytes));
                    if state_restart_lsn(l).is_none() {
                        tracing::warn!("{} is not a slot state file: not reported", path.display());
                        l.state = None;
                    }
                }
                // Not saved yet (a slot is written at creation, so only in a race).
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
}

/// `pg_replslot/<name>` in PGDATA: where Postgres keeps a slot.
pub fn slot_dir(pgdata: &Path, slot: &str) -> std::path::PathBuf {
    pgdata.join("pg_replslot").join(slot)
}

/// `pg_replslot/<name>/state` in PGDATA: the slot's state file.
pub fn slot_state_path(pgdata: &Path, slot: &str) -> std::path::PathBuf {
    slot_dir(pgdata, slot).join("state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_state_file_gives_its_restart_lsn() {
        // The first 104 bytes of a PostgreSQL 15 slot file, for restart_lsn 0/15007C8.
        let mut file = vec![0u8; 104];
        file[..4].copy_from_slice(&[0xa1, 0x1c, 0x05, 0x01]);
        file[16..19].copy_from_slice(b"cdc");
        file[96..100].copy_from_slice(&[0xc8, 0x07, 0x50, 0x01]);
        let mut slot = pgha_api::LogicalSlot {
            database: "app".into(),
            plugin: "test_decoding".into(),
            confirmed_flush_lsn: None,
            state: Some(pgha_api::to_hex(&file)),
            synced: false,
        };
        assert_eq!(
            pgha_api::from_hex(slot.state.as_deref().unwrap()),
            Some(file.clone())
        );
        assert_eq!(state_restart_lsn(&slot), Some("0/15007C8".parse().unwrap()));
        file[0] = 0;
        slot.state = Some(pgha_api::to_hex(&file));
        assert_eq!(state_restart_lsn(&slot), None, "not a slot file");
        slot.state = Some("a11c050".into());
        assert_eq!(state_restart_lsn(&slot), None, "odd hex");
    }

    /// The second review: the root agent read `pg_replslot/<slot>/state` through a
    /// link (to its own `config.json`: the token and replication password then travelled
    /// in reports) and `/dev/zero` made it read forever. Only a real slot file is taken.
    #[test]
    fn only_a_real_slot_state_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path();
        let secret = pgdata.join("config.json");
        std::fs::write(
            &secret,
            r#"{"node_token":"t0ken","replication_password":"pw"}"#,
        )
        .unwrap();
        let slot = |name: &str| pgha_api::SlotPosition {
            name: name.into(),
            restart_lsn: None,
            wal_status: None,
            logical: Some(pgha_api::LogicalSlot {
                database: "app".into(),
                plugin: "pgoutput".into(),
                confirmed_flush_lsn: None,
                state: None,
                synced: false,
            }),
        };
        for (name, target) in [
            ("linked", secret.as_path()),
            ("zero", Path::new("/dev/zero")),
        ] {
            std::fs::create_dir_all(slot_dir(pgdata, name)).unwrap();
            std::os::unix::fs::symlink(target, slot_state_path(pgdata, name)).unwrap();
        }
        // A file that is not a slot's (no magic).
        std::fs::create_dir_all(slot_dir(pgdata, "plain")).unwrap();
        std::fs::copy(&secret, slot_state_path(pgdata, "plain")).unwrap();
        // A real one: the magic, then the restart LSN at byte 96.
        let mut real = vec![0u8; 184];
        real[..4].copy_from_slice(&0x0105_1CA1u32.to_le_bytes());
        real[96..104].copy_from_slice(&0x1234u64.to_le_bytes());
        std::fs::create_dir_all(slot_dir(pgdata, "real")).unwrap();
        std::fs::write(slot_state_path(pgdata, "real"), &real).unwrap();
        let mut slots = vec![slot("linked"), slot("zero"), slot("plain"), slot("real")];
        read_state_files(pgdata, &mut slots);
        for s in &slots[..3] {
            assert_eq!(s.logical.as_ref().unwrap().state, None, "{}", s.name);
        }
        let real = slots[3].logical.as_ref().unwrap();
        assert_eq!(state_restart_lsn(real), Some(pgha_api::Lsn(0x1234)));
    }
}
