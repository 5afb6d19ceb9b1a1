//! `drover schemas [--check] [--dir DIR]`: writes the JSON Schemas generated from the Rust
//! types into `schemas/` (the default), or checks that the committed files match.
//!
//! Besides the schemas of `drover-proto`, it writes `api/openapi.json`: the OpenAPI document
//! the server serves at `GET /v1/openapi.json`, so a change to the API shows in review and
//! CI's validators read the committed copy.
//!
//! Everything under the directory is generated: write mode also deletes files it would not
//! generate, and check mode reports them. Both print the schema-set SHA-256 (the digest of
//! `transport/SHA256SUMS`) that drivers send in `hello`. Check mode exits 1 and lists each difference; the
//! test suite runs it on the repository's own `schemas/`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use drover_proto::schema::{SchemaFile, schema_files, schema_set_sha256};

/// The command that regenerates the committed schemas; printed whenever they drift.
pub const REGENERATE: &str = "cargo run -p drover -- schemas";

/// Arguments of `drover schemas`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory holding the generated schemas.
    #[arg(long, default_value = "schemas")]
    pub dir: PathBuf,
    /// Compare instead of writing; exit 1 if anything differs.
    #[arg(long)]
    pub check: bool,
}

/// One difference between the generated schemas and a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// A generated file is absent.
    Missing(String),
    /// A file's contents differ from what is generated now.
    Stale(String),
    /// A file that is not generated (any more).
    Extra(String),
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing(path) => write!(f, "missing: {path}"),
            Drift::Stale(path) => write!(f, "out of date: {path}"),
            Drift::Extra(path) => write!(f, "not generated: {path}"),
        }
    }
}

/// Runs `drover schemas`.
#[allow(clippy::print_stdout)]
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.check {
        let drift = check(&args.dir)?;
        if drift.is_empty() {
            println!("{}: up to date", args.dir.display());
            println!("schema set sha256: {}", schema_set_sha256());
            return Ok(ExitCode::SUCCESS);
        }
        for d in &drift {
            println!("{}: {d}", args.dir.display());
        }
        println!("regenerate with: {REGENERATE}");
        return Ok(ExitCode::FAILURE);
    }
    let changes = write(&args.dir)?;
    for change in &changes {
        let (verb, path) = match change {
            Drift::Missing(path) | Drift::Stale(path) => ("wrote", path),
            Drift::Extra(path) => ("removed", path),
        };
        println!("{}: {verb} {path}", args.dir.display());
    }
    println!(
        "{}: {} files generated, {} changed",
        args.dir.display(),
        generated_files().len(),
        changes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The path of the OpenAPI document under the schemas directory.
pub const OPENAPI_PATH: &str = "api/openapi.json";

/// Every generated file: `drover-proto`'s schemas and the OpenAPI document.
pub fn generated_files() -> Vec<SchemaFile> {
    let mut files = schema_files();
    let document =
        serde_json::to_string_pretty(&drover_api::openapi::document()).unwrap_or_default();
    files.push(SchemaFile { path: OPENAPI_PATH.to_owned(), contents: format!("{document}\n") });
    files
}

/// Compares `dir` with the generated schemas.
pub fn check(dir: &Path) -> anyhow::Result<Vec<Drift>> {
    let generated = generated_files();
    let mut drift = Vec::new();
    for SchemaFile { path, contents } in &generated {
        match std::fs::read(dir.join(path)) {
            Ok(on_disk) if on_disk == contents.as_bytes() => {}
            Ok(_) => drift.push(Drift::Stale(path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                drift.push(Drift::Missing(path.clone()))
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", dir.join(path).display()));
            }
        }
    }
    let expected: BTreeSet<&str> = generated.iter().map(|f| f.path.as_str()).collect();
    for path in files_under(dir)? {
        if !expected.contains(path.as_str()) {
            drift.push(Drift::Extra(path));
        }
    }
    Ok(drift)
}

/// Writes the generated schemas into `dir` and removes files that are not generated.
/// Returns what changed.
pub fn write(dir: &Path) -> anyhow::Result<Vec<Drift>> {
    let drift = check(dir)?;
    for d in &drift {
        match d {
            Drift::Missing(path) | Drift::Stale(path) => {
                let contents = generated_files()
                    .into_iter()
                    .find(|f| &f.path == path)
                    .map(|f| f.contents)
                    .unwrap_or_default();
                let target = dir.join(path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::write(&target, contents)
                    .with_context(|| format!("writing {}", target.display()))?;
            }
            Drift::Extra(path) => {
                let target = dir.join(path);
                std::fs::remove_file(&target)
                    .with_context(|| format!("removing {}", target.display()))?;
            }
        }
    }
    Ok(drift)
}

/// Every regular file under `dir`, as `/`-separated paths relative to it, sorted.
fn files_under(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let absolute = dir.join(&relative);
        let entries = match std::fs::read_dir(&absolute) {
            Ok(entries) => entries,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && relative.as_os_str().is_empty() =>
            {
                return Ok(out);
            }
            Err(e) => return Err(e).with_context(|| format!("listing {}", absolute.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", absolute.display()))?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                let parts: Vec<_> = path.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository_schemas() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    #[test]
    fn committed_schemas_are_current() {
        let drift = check(&repository_schemas()).unwrap();
        assert!(
            drift.is_empty(),
            "schemas/ does not match the Rust types:\n{}\nregenerate with: {REGENERATE}",
            drift.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
        );
    }

    #[test]
    fn the_published_digest_is_the_digest_of_the_committed_manifest() {
        use sha2::Digest as _;
        let manifest = std::fs::read(repository_schemas().join("transport/SHA256SUMS")).unwrap();
        assert_eq!(schema_set_sha256(), hex::encode(sha2::Sha256::digest(&manifest)));
    }

    #[test]
    fn check_detects_every_kind_of_drift_and_write_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path()).unwrap().iter().all(|d| matches!(d, Drift::Missing(_))));
        assert_eq!(check(dir.path()).unwrap(), vec![]);

        std::fs::write(dir.path().join("transport/ping.json"), "{}\n").unwrap();
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        std::fs::write(dir.path().join("transport/old.json"), "{}\n").unwrap();
        let drift = check(dir.path()).unwrap();
        assert_eq!(
            drift,
            vec![
                Drift::Missing("config.json".into()),
                Drift::Stale("transport/ping.json".into()),
                Drift::Extra("transport/old.json".into()),
            ]
        );

        write(dir.path()).unwrap();
        assert_eq!(check(dir.path()).unwrap(), vec![]);
    }
}
