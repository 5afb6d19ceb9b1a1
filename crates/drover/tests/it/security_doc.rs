//! SECURITY.md's requirement table tells the truth: every requirement SR-001..SR-010 has a row,
//! every file it names exists, and every test it names is defined in the file named before it
//! (as `fn NAME` in Rust or `def NAME` in Python). Renaming or deleting a test without updating
//! the table fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The rows of the "Requirement, code, test" table, as (id, row text).
fn requirement_rows(doc: &str) -> Vec<(String, String)> {
    section_rows(doc, "## Requirement, code, test", "SR-")
}

/// The rows whose id starts with `prefix` in the section headed `heading`.
fn section_rows(doc: &str, heading: &str, prefix: &str) -> Vec<(String, String)> {
    let section = doc.split(heading).nth(1).expect("the table's section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| {
            let id = line.strip_prefix("| ")?.split(' ').next()?;
            id.starts_with(prefix).then(|| (id.to_owned(), line.to_owned()))
        })
        .collect()
}

/// The backticked spans of a line, in order.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

fn is_path(span: &str) -> bool {
    span.contains('/') || span.ends_with(".py") || span == "Containerfile"
}

fn is_test_name(span: &str) -> bool {
    span.contains('_')
        && span.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn every_requirement_has_a_row() {
    let doc = std::fs::read_to_string(root().join("SECURITY.md")).unwrap();
    let ids: Vec<String> = requirement_rows(&doc).into_iter().map(|(id, _)| id).collect();
    let expected: Vec<String> = (1..=10).map(|n| format!("SR-{n:03}")).collect();
    assert_eq!(ids, expected, "SECURITY.md must have one row per requirement, in order");
}

#[test]
fn every_file_and_test_named_exists() {
    let doc = std::fs::read_to_string(root().join("SECURITY.md")).unwrap();
    let mut problems = Vec::new();
    let mut tests_checked = 0;
    let abuse = section_rows(&doc, "## Abuse and exhaustion", "AX-");
    assert!(!abuse.is_empty(), "the abuse and exhaustion table lost its rows");
    let money = section_rows(&doc, "## Money (issue 15)", "MX-");
    assert!(money.len() >= 6, "the money table lost its rows");
    let jail = section_rows(&doc, "## The jail (issue 13)", "JX-");
    assert!(jail.len() >= 7, "the jail table lost its rows");
    for (id, row) in requirement_rows(&doc).into_iter().chain(abuse).chain(money).chain(jail) {
        let mut current_file: Option<String> = None;
        for span in code_spans(&row) {
            if is_path(span) {
                let path = root().join(span.trim_end_matches('/'));
                if path.exists() {
                    current_file = path.is_file().then(|| std::fs::read_to_string(&path).unwrap());
                } else {
                    problems.push(format!("{id}: {span} does not exist"));
                    current_file = None;
                }
            } else if is_test_name(span) {
                match &current_file {
                    Some(text)
                        if text.contains(&format!("fn {span}("))
                            || text.contains(&format!("def {span}(")) =>
                    {
                        tests_checked += 1;
                    }
                    Some(_) => problems.push(format!("{id}: no test {span} in the file before it")),
                    None => problems.push(format!("{id}: test {span} follows no readable file")),
                }
            }
        }
    }
    assert!(problems.is_empty(), "SECURITY.md has drifted:\n{}", problems.join("\n"));
    assert!(tests_checked >= 20, "only {tests_checked} tests named; the table lost its tests");
}

#[test]
fn the_checker_catches_a_renamed_test() {
    let row = "| SR-001 | x | `crates/drover/tests/it/security_doc.rs` `no_such_test_here` |";
    let text =
        std::fs::read_to_string(root().join("crates/drover/tests/it/security_doc.rs")).unwrap();
    let spans = code_spans(row);
    assert_eq!(spans, ["crates/drover/tests/it/security_doc.rs", "no_such_test_here"]);
    assert!(is_path(spans[0]) && is_test_name(spans[1]));
    assert!(!text.contains(&format!("fn {}(", spans[1])));
    assert!(text.contains("fn the_checker_catches_a_renamed_test("));
}
