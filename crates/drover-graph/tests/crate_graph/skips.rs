//! No test skips itself on its own terms (issue 19).
//!
//! A privileged test that cannot run here ends through `drover_testkit::privileged`, which
//! fails under the calling crate's `privileged-tests` feature (on in `.ci/run`) and prints a
//! skip (the word in [`skip_word`]) only without it. A test printing its own skip would pass on
//! CI without having run, so no file under `crates/*/tests` may contain that word.

use std::path::{Path, PathBuf};

/// The word a skip prints; spelled in two pieces so this file does not contain it.
fn skip_word() -> String {
    ["SKIP", "PED"].concat()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Files among `files` whose text contains the skip word, with their line numbers.
fn skipping(files: &[PathBuf]) -> Vec<String> {
    let word = skip_word();
    let mut hits = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("a readable test source");
        for (index, line) in text.lines().enumerate() {
            if line.contains(&word) {
                hits.push(format!("{}:{}", file.display(), index + 1));
            }
        }
    }
    hits
}

#[test]
fn no_test_prints_its_own_skip() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).expect("the crates directory") {
        rust_files(&krate.expect("a crate directory").path().join("tests"), &mut files);
    }
    // Not vacuous: the walk reaches the test sources of several crates.
    assert!(files.len() > 10, "found only {files:?}");
    let hits = skipping(&files);
    assert!(
        hits.is_empty(),
        "these test sources print their own {}; end a privileged test that cannot run through \
         drover_testkit::skip_or_fail! (or privileged::cannot_run) instead: {hits:?}",
        skip_word()
    );
}

#[test]
fn the_check_sees_a_test_that_skips_itself() {
    let dir = tempfile_dir();
    let file = dir.join("skips.rs");
    std::fs::write(&file, format!("fn t() {{ eprintln!(\"{}: no root\"); }}\n", skip_word()))
        .expect("a written fixture");
    let hits = skipping(std::slice::from_ref(&file));
    std::fs::remove_dir_all(&dir).expect("the fixture removed");
    assert_eq!(hits, [format!("{}:1", file.display())]);
}

/// A fresh directory under the system temporary directory.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drover-graph-skips-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}
