//! The formation format: the committed JSON Schema matches the types, every example in
//! `manifests/examples` is valid, and every file in `manifests/invalid` is rejected with
//! exactly the errors in its `.err` snapshot (`UPDATE_SNAPSHOTS=1` rewrites them,
//! `UPDATE_SCHEMAS=1` the schema).

use pgha_api::validate::parse_formation;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn committed_schema_matches_the_types() {
    let path = root().join("schemas/formation.schema.json");
    let want = pgha_api::formation::schema_json();
    if std::env::var("UPDATE_SCHEMAS").is_ok() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} drifted from the Rust types: run `cargo run -p pgha-api --bin gen-schema`",
        path.display()
    );
}

#[test]
fn every_example_is_valid_and_names_the_schema() {
    let files = yaml_files(&root().join("manifests/examples"));
    assert!(files.len() >= 3);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("# yaml-language-server: $schema=../../schemas/formation.schema.json"),
            "{} lacks the schema header",
            f.display()
        );
        if let Err(errs) = parse_formation(&f.display().to_string(), &bytes) {
            panic!("{} is invalid: {errs:?}", f.display());
        }
    }
}

#[test]
fn every_invalid_fixture_is_rejected_with_its_snapshot() {
    let dir = root().join("manifests/invalid");
    let files = yaml_files(&dir);
    assert!(files.len() >= 20, "only {} invalid fixtures", files.len());
    let update = std::env::var("UPDATE_SNAPSHOTS").is_ok();
    let mut mismatches = vec![];
    for f in files {
        let name = format!("invalid/{}", f.file_name().unwrap().to_string_lossy());
        let errs = match parse_formation(&name, &std::fs::read(&f).unwrap()) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e,
        };
        let got: String = errs.iter().map(|e| format!("{e}\n")).collect();
        let snap = f.with_extension("err");
        if update {
            std::fs::write(&snap, &got).unwrap();
        }
        let want = std::fs::read_to_string(&snap).unwrap_or_default();
        if got != want {
            mismatches.push(format!("{name}:\n  got:  {got}  want: {want}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_ten_megabyte_file_is_refused_before_parsing() {
    let mut big = b"apiVersion: pgha/v1\n# ".to_vec();
    big.resize(10 << 20, b'x');
    let errs = parse_formation("big.yaml", &big).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "big.yaml:1:1: (file): file is 10485760 bytes; formation files are limited to 1048576 bytes"
    );
}
