//! `pgha formation ...`: work with formation files.

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum FormationCmd {
    /// Check formation files: every error at once as `file:line:col: field: what`,
    /// exit 1 when any file is invalid.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub async fn run(cmd: FormationCmd) -> anyhow::Result<()> {
    match cmd {
        FormationCmd::Validate { files } => validate(&files),
    }
}

fn validate(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut bad = 0;
    for f in files {
        let name = f.display().to_string();
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                println!("{name}: cannot read: {e}");
                bad += 1;
                continue;
            }
        };
        match pgha_api::validate::parse_formation(&name, &bytes) {
            Ok(doc) => eprintln!(
                "{name}: ok (formation {:?}, {} nodes)",
                doc.metadata.name,
                doc.spec.nodes.len()
            ),
            Err(errs) => {
                bad += 1;
                for e in errs {
                    println!("{e}");
                }
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} files invalid", files.len());
    }
    Ok(())
}
