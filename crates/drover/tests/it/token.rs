//! `drover token new` as an operator runs it: the token once on stdout, then an entry that
//! `drover validate --kind config` accepts and that holds only the token's digest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn drover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover")).args(args).output().unwrap()
}

#[test]
fn token_new_prints_the_token_once_and_a_digest_only_entry() {
    let output = drover(&["token", "new", "--name", "ci", "--scopes", "jobs:read,jobs:write"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stderr.is_empty());
    let text = String::from_utf8(output.stdout).unwrap();
    let token = text.lines().next().unwrap();
    assert!(token.starts_with("drover_") && token.len() == 55, "{token}");
    assert_eq!(text.matches(token).count(), 1);
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    assert!(text.contains(&format!("sha256 = \"{digest}\"")), "{text}");
    assert!(text.contains("scopes = [\"jobs:read\", \"jobs:write\"]"), "{text}");
    assert!(text.contains("format = \"drover-v1\""), "{text}");

    // The entry is a valid configuration as printed.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("drover.toml");
    std::fs::write(&config, text.split_once("\n\n").unwrap().1).unwrap();
    let check = drover(&["validate", "--kind", "config", config.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    // Two runs never give the same token.
    let again = drover(&["token", "new", "--name", "ci", "--scopes", "jobs:read"]);
    assert_ne!(String::from_utf8(again.stdout).unwrap().lines().next().unwrap(), token);
}

#[test]
fn token_new_refuses_bad_names_and_unknown_scopes() {
    for args in [
        &["token", "new", "--name", "ci runner", "--scopes", "jobs:read"][..],
        &["token", "new", "--name", "ci", "--scopes", "jobs:delete"][..],
        &["token", "new", "--name", "ci"][..],
    ] {
        let output = drover(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?} printed a token");
    }
}
