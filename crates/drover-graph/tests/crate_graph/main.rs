//! The one-way crate graph (issue 19), checked against `cargo metadata`.
//!
//! `ALLOWED` lists every dependency edge between workspace crates that may exist (normal,
//! build or dev); a new edge fails the test until it is added here, with its reason, so the
//! graph only changes on purpose. `FORBIDDEN_IN_CLOSURE` lists crates that must never be
//! reached from a given crate through normal or build dependencies. Inside each crate, the
//! module cycles and the file lengths are checked by [`modules`]; that no test prints its own
//! skip, by [`skips`]. Each crate has one integration-test binary unless
//! `SEVERAL_TEST_BINARIES` says why not.

// A malformed `cargo metadata` answer is a test failure, so panicking helpers are right here.
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod modules;
mod skips;

/// Every allowed edge `(from, to)` between workspace crates.
const ALLOWED: &[(&str, &str)] = &[
    // The binary may use everything.
    ("drover", "drover-api"),
    ("drover", "drover-driver"),
    ("drover", "drover-gpu"),
    ("drover", "drover-proto"),
    ("drover", "drover-provision"),
    ("drover", "drover-sandbox"),
    ("drover", "drover-service"),
    ("drover", "drover-store"),
    ("drover", "drover-supervisor"),
    ("drover", "drover-transport"),
    ("drover", "drover-vast"),
    ("drover", "drover-vast-sim"),
    // Dev only: the fleet test runs replicas on a real PostgreSQL server; the skip-or-fail rule
    // for privileged tests.
    ("drover", "drover-testkit"),
    ("drover-api", "drover-proto"),
    ("drover-api", "drover-schema"),
    // Dev only: the API's tests run against a real store.
    ("drover-api", "drover-store"),
    ("drover-driver", "drover-proto"),
    ("drover-driver", "drover-sys"),
    ("drover-driver", "drover-transport"),
    ("drover-gpu", "drover-proto"),
    ("drover-gpu", "drover-sandbox"),
    ("drover-provision", "drover-proto"),
    ("drover-provision", "drover-store"),
    ("drover-provision", "drover-vast"),
    // Dev only: the provisioner's tests rent from the simulator.
    ("drover-provision", "drover-vast-sim"),
    ("drover-sandbox", "drover-sys"),
    // Dev only: the skip-or-fail rule for privileged tests.
    ("drover-sandbox", "drover-testkit"),
    ("drover-service", "drover-api"),
    ("drover-service", "drover-proto"),
    ("drover-service", "drover-provision"),
    ("drover-service", "drover-store"),
    ("drover-service", "drover-supervisor"),
    // Dev only: the service's tests build a client against the simulator.
    ("drover-service", "drover-vast"),
    ("drover-service", "drover-vast-sim"),
    ("drover-store", "drover-proto"),
    // Dev only: the store suite runs against a real PostgreSQL server the testkit starts.
    ("drover-store", "drover-testkit"),
    ("drover-supervisor", "drover-proto"),
    ("drover-supervisor", "drover-sandbox"),
    // Dev only: the skip-or-fail rule for privileged tests.
    ("drover-supervisor", "drover-testkit"),
    ("drover-supervisor", "drover-transport"),
    ("drover-schema", "drover-proto"),
    ("drover-transport", "drover-proto"),
    ("drover-transport", "drover-schema"),
    ("drover-vast-sim", "drover-vast"),
];

/// `(crate, crates its normal and build dependency closure must not contain, why)`.
const FORBIDDEN_IN_CLOSURE: &[(&str, &[&str], &str)] = &[
    (
        "drover-driver",
        &["drover-sandbox", "landlock", "seccompiler"],
        "the driver SDK is linked by third-party drivers and published with proto, transport and sys",
    ),
    (
        "drover-sys",
        &["drover-sandbox", "landlock", "seccompiler", "tokio"],
        "the syscall layer is published with the driver SDK",
    ),
    (
        "drover-sandbox",
        &["tokio"],
        "the sandbox knows nothing of an async runtime (the child between clone and exec allocates nothing)",
    ),
    ("drover-proto", &["tokio"], "the wire vocabulary does no I/O"),
    (
        "drover-schema",
        &["tokio"],
        "schema checking and strict JSON do no I/O (the driver SDK links them)",
    ),
    (
        "drover-api",
        &["drover-transport", "drover-supervisor"],
        "the HTTP API shares the schema checker with the transport, not the transport itself",
    ),
    ("drover", &["drover-testkit"], "test support never ships in the binary"),
    (
        "drover-vast",
        &["drover-provision", "drover-vast-sim", "drover-store", "axum"],
        "the client knows no policy, no simulator and no store",
    ),
    (
        "drover-vast-sim",
        &["drover-provision", "drover-store"],
        "the simulator plays the provider: it knows no policy and no store",
    ),
    (
        "drover-provision",
        &["drover-vast-sim", "axum"],
        "the policy rents through the client; the simulator is for its tests only",
    ),
];

struct Graph {
    /// Workspace crate names.
    workspace: BTreeSet<String>,
    /// Every edge between workspace crates, of any kind.
    workspace_edges: BTreeSet<(String, String)>,
    /// Package name by id, for the resolved graph.
    names: BTreeMap<String, String>,
    /// Normal and build dependencies by package id, from the resolved graph.
    runtime_deps: BTreeMap<String, Vec<String>>,
    /// Package id by workspace crate name.
    ids: BTreeMap<String, String>,
}

fn metadata() -> Value {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_else(|| panic!("metadata field {key} is a string"))
}

fn graph() -> Graph {
    let meta = metadata();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages = meta["packages"].as_array().expect("packages");
    let mut names = BTreeMap::new();
    let mut ids = BTreeMap::new();
    let mut workspace = BTreeSet::new();
    for package in packages {
        let (id, name) = (str_of(package, "id"), str_of(package, "name"));
        names.insert(id.to_owned(), name.to_owned());
        if members.contains(id) {
            workspace.insert(name.to_owned());
            ids.insert(name.to_owned(), id.to_owned());
        }
    }
    let mut workspace_edges = BTreeSet::new();
    for package in packages.iter().filter(|p| members.contains(str_of(p, "id"))) {
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let to = str_of(dep, "name");
            if workspace.contains(to) {
                workspace_edges.insert((str_of(package, "name").to_owned(), to.to_owned()));
            }
        }
    }
    let mut runtime_deps = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|dep| {
                dep["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|kind| kind["kind"].as_str() != Some("dev"))
            })
            .map(|dep| str_of(dep, "pkg").to_owned())
            .collect();
        runtime_deps.insert(str_of(node, "id").to_owned(), deps);
    }
    Graph { workspace, workspace_edges, names, runtime_deps, ids }
}

/// Names of every crate in `root`'s normal and build dependency closure.
fn closure(graph: &Graph, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![graph.ids[root].clone()];
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        stack.extend(graph.runtime_deps.get(&id).into_iter().flatten().cloned());
    }
    seen.iter().map(|id| graph.names[id].clone()).collect()
}

#[test]
fn every_workspace_edge_is_allowed() {
    let graph = graph();
    let allowed: BTreeSet<(String, String)> =
        ALLOWED.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
    let unexpected: Vec<_> = graph.workspace_edges.difference(&allowed).collect();
    assert!(
        unexpected.is_empty(),
        "dependency edges outside the allowed one-way graph (crates/drover-graph/tests/crate_graph/main.rs): {unexpected:?}"
    );
    // The list names only crates that exist, so a renamed crate cannot leave it stale.
    for (from, to) in ALLOWED {
        assert!(graph.workspace.contains(*from), "ALLOWED names unknown crate {from}");
        assert!(graph.workspace.contains(*to), "ALLOWED names unknown crate {to}");
    }
}

#[test]
fn small_crates_stay_small() {
    let graph = graph();
    for (root, forbidden, why) in FORBIDDEN_IN_CLOSURE {
        let reached = closure(&graph, root);
        let found: Vec<_> = forbidden.iter().filter(|name| reached.contains(**name)).collect();
        assert!(found.is_empty(), "{root} reaches {found:?}, but {why}");
    }
}

#[test]
fn the_check_sees_a_forbidden_crate() {
    // The closure walk is not vacuous: the supervisor really reaches the sandbox's seccomp.
    let graph = graph();
    let reached = closure(&graph, "drover-supervisor");
    assert!(reached.contains("seccompiler") && reached.contains("drover-sandbox"));
    assert!(!closure(&graph, "drover-driver").contains("drover-supervisor"));
}

/// Crates that may have more than one integration-test binary, and why. Every other crate has
/// at most one (issue 19): `tests/it/main.rs` with a module per area, so the helpers build and
/// link once. An entry that no longer applies should go, but is not a failure, so that the
/// crates still being merged can land in any order.
const SEVERAL_TEST_BINARIES: &[(&str, &str)] = &[
    (
        "drover-sandbox",
        "spawn.rs drops the whole process's privileges (Phase A) and runs its own cases (harness = false)",
    ),
    (
        "drover-supervisor",
        "sessions.rs drops the whole process's privileges (Phase A) and runs its own cases (harness = false)",
    ),
];

#[test]
fn one_integration_test_binary_per_crate() {
    let meta = metadata();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut several = Vec::new();
    for package in meta["packages"].as_array().expect("packages") {
        if !members.contains(str_of(package, "id")) {
            continue;
        }
        let name = str_of(package, "name");
        let tests: Vec<&str> = package["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .filter(|target| {
                target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"))
            })
            .map(|target| str_of(target, "name"))
            .collect();
        if name == "drover" {
            // Not vacuous: the binary's suite is there, as one target.
            assert_eq!(tests, ["it"], "drover's integration tests");
        }
        if tests.len() > 1 && !SEVERAL_TEST_BINARIES.iter().any(|(krate, _)| *krate == name) {
            several.push(format!("{name}: {tests:?}"));
        }
    }
    assert!(
        several.is_empty(),
        "one integration-test binary per crate (tests/it/main.rs, a module per area); a test \
         that needs a process of its own is listed in SEVERAL_TEST_BINARIES with why: {several:?}"
    );
}
