//! The book (`docs/`) holds together: every page is in its summary and every summary
//! entry is a page, every relative link (and its `#anchor`) resolves, every field of
//! the formation schema is on the field reference page, and the README stays an entry.
//! `mdbook build docs` itself runs in `.ci/run`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn pages() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("docs/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    v.sort();
    v
}

/// The Markdown text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `[text](target)` targets, in prose (not in code spans).
fn links(text: &str) -> Vec<String> {
    let mut out = vec![];
    for line in prose(text).lines() {
        // Code spans hold no links.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// mdBook's anchor of a heading: lower case, spaces to `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_page_is_in_the_summary_and_every_entry_is_a_page() {
    let summary = read(&root().join("docs/src/SUMMARY.md"));
    let listed: BTreeSet<String> = links(&summary).into_iter().collect();
    for p in pages() {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name != "SUMMARY.md" {
            assert!(listed.contains(&name), "{name} is not in SUMMARY.md");
        }
    }
    for l in &listed {
        assert!(
            root().join("docs/src").join(l).is_file(),
            "SUMMARY.md lists {l}: no such page"
        );
    }
}

#[test]
fn every_relative_link_resolves() {
    let mut docs: Vec<PathBuf> = pages();
    docs.push(root().join("README.md"));
    docs.push(root().join("CONTRIBUTING.md"));
    let mut broken = vec![];
    for doc in &docs {
        for l in links(&read(doc)) {
            if l.starts_with("http://") || l.starts_with("https://") || l.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match l.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (l.as_str(), None),
            };
            let target = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {l} (no {})", doc.display(), target.display()));
                continue;
            }
            if let Some(a) = anchor
                && target.extension().is_some_and(|x| x == "md")
                && !anchors(&read(&target)).contains(a)
            {
                broken.push(format!("{}: {l} (no heading #{a})", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every property of the formation schema, at any depth.
fn schema_fields(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                out.extend(props.keys().cloned());
            }
            for x in m.values() {
                schema_fields(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| schema_fields(x, out)),
        _ => {}
    }
}

#[test]
fn every_field_of_the_formation_schema_is_documented() {
    let schema: serde_json::Value =
        serde_json::from_str(&read(&root().join("schemas/formation.schema.json"))).unwrap();
    let mut fields = BTreeSet::new();
    schema_fields(&schema, &mut fields);
    assert!(fields.len() > 30, "only {} fields found", fields.len());
    let page = read(&root().join("docs/src/formation-fields.md"));
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !page.contains(&format!("| `{f}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "fields missing from docs/src/formation-fields.md: {missing:?}"
    );
}

/// The README is the entry: at most ~150 lines, the two commands, a way into the book.
#[test]
fn the_readme_stays_an_entry() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 160,
        "README.md has {lines} lines: move the detail into docs/"
    );
    for must in [
        "bash scripts/demo.sh",
        "bash scripts/test.sh",
        "docs/src/SUMMARY.md",
    ] {
        assert!(readme.contains(must), "README.md does not say {must}");
    }
}
