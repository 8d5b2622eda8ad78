//! The desired state from the formation files: accepted, rejected and removed files.

use super::{ControllerState, FormationRecord, Rule, StoreError, labels};

impl ControllerState {
    /// Takes in a scan of the formations directory: accepted files become the desired
    /// state of their formation (a new generation when anything changed), rejected files
    /// are reported once per distinct error and leave the last good version in force,
    /// formations whose file disappeared are left running and marked orphaned.
    pub fn apply_desired(
        &mut self,
        scan: crate::desired::Scan,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut changed = false;
        let mut events = vec![];
        for (file, errs) in &scan.rejected {
            let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            if self.config_errors.get(file) == Some(&lines) {
                continue;
            }
            for l in &lines {
                tracing::error!(file = %file, "formation file rejected: {l}");
            }
            self.metrics
                .config_errors
                .get_or_create(&labels(&[("file", file)]))
                .inc();
            let formation = self
                .durable
                .formations
                .values()
                .find(|f| f.desired.source_file.as_deref() == Some(file))
                .map(|f| f.name.clone())
                .unwrap_or_else(|| "-".into());
            let more = match lines.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            let first = lines.first().cloned().unwrap_or_default();
            events.push(self.event(
                &formation,
                None,
                Rule::ConfigRejected,
                format!("{file} rejected, the last good version stays in force: {first}{more}"),
                now_ms,
            ));
            self.config_errors.insert(file.clone(), lines);
        }
        self.config_errors
            .retain(|f, _| scan.rejected.contains_key(f));
        for (name, (file, doc)) in &scan.formations {
            let rec = self
                .durable
                .formations
                .entry(name.clone())
                .or_insert_with(|| {
                    FormationRecord::new(name, doc.spec.dbname.as_deref().unwrap_or("postgres"))
                });
            // An accepted file sets the secret (a rejected one, or one whose secret file
            // cannot be read, keeps the last good secret: it never opens the formation).
            let secret = scan
                .secrets
                .get(name)
                .map(|s| crate::records::stored_join_secret(s));
            if rec.desired.join_secret != secret {
                rec.desired.join_secret = secret;
                changed = true;
            }
            // A standby formation takes its source's replication password, before its
            // first node joins (a node keeps the password it registered with).
            let mut password_note = None;
            if let Some(pw) = scan.source_passwords.get(name)
                && rec.replication_password != *pw
            {
                if rec.nodes.is_empty() {
                    rec.replication_password = pw.clone();
                    changed = true;
                    password_note =
                        Some("the replication password is the source's (standbyOf.passwordFile)");
                } else {
                    password_note = Some(
                        "standbyOf.passwordFile differs from the replication password its nodes joined with, and is not applied: its leader cannot authenticate to the source with scram-sha-256 (make the formation again with the file in place)",
                    );
                }
            }
            if rec.spec() == Some(&doc.spec)
                && rec.desired.source_file.as_deref() == Some(file.as_str())
                && !rec.desired.orphaned
            {
                continue;
            }
            let mut notes = accept_spec(rec, &doc.spec);
            notes.extend(password_note.map(String::from));
            rec.desired.source_file = Some(file.clone());
            rec.desired.orphaned = false;
            rec.desired.generation += 1;
            let generation = rec.desired.generation;
            changed = true;
            let what = if notes.is_empty() {
                String::new()
            } else {
                format!(": {}", notes.join("; "))
            };
            events.push(self.event(
                name,
                None,
                Rule::DesiredState,
                format!("generation {generation} from {file}{what}"),
                now_ms,
            ));
        }
        let mut orphaned = vec![];
        for f in self.durable.formations.values_mut() {
            let Some(file) = f.desired.source_file.clone() else {
                continue;
            };
            let gone = !scan.formations.contains_key(&f.name) && !scan.rejected.contains_key(&file);
            if gone && !f.desired.orphaned {
                f.desired.orphaned = true;
                changed = true;
                orphaned.push((f.name.clone(), file));
            }
        }
        for (name, file) in orphaned {
            events.push(self.event(
                &name,
                None,
                Rule::FormationOrphaned,
                format!(
                    "{file} was removed: the formation keeps running as it is (orphaned); nothing is destroyed"
                ),
                now_ms,
            ));
        }
        if changed {
            self.save()?;
        }
        self.record_all(events)
    }
}

/// Puts an accepted spec in force on a formation's record; returns what changed, as the
/// planner will see it (a node's priority is the file's when it declares the node).
fn accept_spec(
    rec: &mut FormationRecord,
    spec: &pgha_api::formation::FormationSpec,
) -> Vec<String> {
    let mut notes = vec![];
    if let Some(db) = &spec.dbname
        && *db != rec.dbname
    {
        if rec.nodes.is_empty() {
            rec.dbname = db.clone();
            notes.push(format!("dbname {db}"));
        } else {
            notes.push(format!(
                "dbname stays {} (a running formation's database is not renamed; {db} ignored)",
                rec.dbname
            ));
        }
    }
    let resolved = |rec: &FormationRecord| {
        let nodes: Vec<(String, u8, bool)> = rec
            .nodes
            .values()
            .map(|n| {
                let (p, q) = (rec.candidate_priority(n), rec.replication_quorum(n));
                (n.name.clone(), p, q)
            })
            .collect();
        (rec.number_sync_standbys(), rec.timings(), nodes)
    };
    let (old_nss, old_timings, old_nodes) = resolved(rec);
    let old_params = rec.spec().map(|s| s.postgresql.parameters.clone());
    rec.desired.spec = Some(spec.clone());
    let (nss, timings, nodes) = resolved(rec);
    if old_nss != nss {
        notes.push(format!("numberSyncStandbys {old_nss} -> {nss}"));
    }
    if old_timings != timings {
        notes.push("timings".into());
    }
    for ((name, old_p, old_q), (_, p, q)) in old_nodes.iter().zip(&nodes) {
        if old_p != p {
            notes.push(format!("{name} candidatePriority {old_p} -> {p}"));
        }
        if old_q != q {
            notes.push(format!("{name} replicationQuorum {q}"));
        }
    }
    if old_params
        .as_ref()
        .is_some_and(|p| *p != spec.postgresql.parameters)
        || (old_params.is_none() && !spec.postgresql.parameters.is_empty())
    {
        let names: Vec<String> = spec.postgresql.parameters.keys().cloned().collect();
        notes.push(format!("postgresql parameters: {}", names.join(", ")));
    }
    notes
}
