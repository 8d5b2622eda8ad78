//! Writes `schemas/formation.schema.json` from the Rust types (their doc comments are the
//! field documentation). `cargo run -p pgha-api --bin gen-schema`; a test fails when the
//! committed file drifts from the types.

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/formation.schema.json");
    let text = pgha_api::formation::schema_json();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("error: writing {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("wrote {}", path.display());
}
