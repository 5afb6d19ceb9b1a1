//! Privileged tests: run them, or say why not, and never let a skip pass on CI.
//!
//! Some tests need root (namespaces, cgroups, `mknod`, a privilege drop) or an empty capability
//! bounding set. Each crate with such tests has a `privileged-tests` feature; `.ci/run` turns it
//! on. When such a test cannot run here, [`skip_or_fail!`](crate::skip_or_fail) (or
//! [`cannot_run`] in a `harness = false` binary) ends it:
//!
//! - feature on (CI): the test **fails**, with the reason;
//! - feature off (a developer without root, the default): it prints `SKIPPED: <reason>` on
//!   stderr and returns, so the run passes but says what it did not check.
//!
//! The feature is read in the calling crate (`cfg!` inside the macro expands there), so the
//! testkit itself has no feature. This module is the only place in the tests that may print a
//! skip: `crates/drover-graph/tests/crate_graph/skips.rs` fails on any other.

/// Ends the calling test (a function returning `()`) because it cannot run here, giving the
/// reason as `format!` arguments: a failure when the calling crate's `privileged-tests` feature
/// is on, otherwise `SKIPPED: <reason>` on stderr and an early return.
#[macro_export]
macro_rules! skip_or_fail {
    ($($reason:tt)+) => {{
        $crate::privileged::cannot_run(
            &::std::format!($($reason)+),
            ::std::cfg!(feature = "privileged-tests"),
        );
        return;
    }};
}

/// Says that a privileged test cannot run here: panics with `reason` when `required` (the
/// calling crate's `privileged-tests` feature, `cfg!(feature = "privileged-tests")`), otherwise
/// prints `SKIPPED: <reason>` on stderr. The caller then returns.
///
/// # Panics
///
/// When `required`: a privileged test that cannot run is a failure there.
#[allow(clippy::print_stderr, clippy::panic)]
pub fn cannot_run(reason: &str, required: bool) {
    assert!(
        !required,
        "this privileged test cannot run here, and the privileged-tests feature (on in CI) \
         requires it: {reason}"
    );
    eprintln!("SKIPPED: {reason} (the privileged-tests feature, on in CI, makes this a failure)");
}

/// This process's effective uid, from `/proc/self/status` (`u32::MAX` if unreadable, which is
/// never root).
#[must_use]
pub fn effective_uid() -> u32 {
    status_field("Uid:")
        .and_then(|ids| ids.split_whitespace().nth(1).and_then(|euid| euid.parse().ok()))
        .unwrap_or(u32::MAX)
}

/// Whether this process runs as (effective) root.
#[must_use]
pub fn is_root() -> bool {
    effective_uid() == 0
}

/// Why the sandbox cannot fully run here, if it cannot: it needs root (as CI runs the tests)
/// or an empty capability bounding set (a container started with `--cap-drop ALL`).
#[must_use]
pub fn sandbox_unavailable() -> Option<String> {
    let uid = effective_uid();
    if uid == 0 {
        return None;
    }
    let bounding = status_field("CapBnd:").unwrap_or_default();
    if bounding.trim() == "0000000000000000" {
        return None;
    }
    Some(format!(
        "the sandbox needs root (as CI runs the tests) or an empty capability bounding set; \
         running as uid {uid} with CapBnd {}",
        bounding.trim()
    ))
}

/// The value of `field` (e.g. `"Uid:"`) in `/proc/self/status`.
fn status_field(field: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| line.strip_prefix(field)).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_read_from_proc() {
        // `id -u` as a second opinion on the same process's uid.
        let output = std::process::Command::new("id").arg("-u").output().unwrap();
        let expected: u32 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
        assert_eq!(effective_uid(), expected);
        assert_eq!(is_root(), expected == 0);
    }

    #[test]
    fn root_can_run_the_sandbox() {
        if is_root() {
            assert_eq!(sandbox_unavailable(), None);
        } else {
            assert!(sandbox_unavailable().is_some_and(|why| why.contains("uid")));
        }
    }

    #[test]
    #[should_panic(expected = "requires it: no cgroups")]
    fn a_required_privileged_test_fails_with_its_reason() {
        cannot_run("no cgroups", true);
    }

    #[test]
    fn an_optional_privileged_test_is_skipped() {
        cannot_run("no cgroups", false);
    }
}
