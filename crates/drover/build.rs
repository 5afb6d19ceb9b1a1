//! Link options for the `drover` binary.
//!
//! Release builds for GNU/Linux link with packed relative relocations (`-z
//! pack-relative-relocs`, DT_RELR): a position-independent executable of this size carries
//! tens of thousands of relative relocations, which the dynamic loader applies one 24-byte
//! record at a time on every start (every `drover exec`, every driver spawn); packed, they are
//! a bitmap applied in a tight loop, and the table shrinks from about a megabyte to a few
//! kilobytes. Address-space layout randomisation is unchanged. Needs GNU ld >= 2.38 (or lld)
//! to link and glibc >= 2.36 to run, as Debian 12 and the container image have. Debug builds
//! and other targets link as before.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let gnu_linux = std::env::var("TARGET").is_ok_and(|t| t.ends_with("-linux-gnu"));
    if release && gnu_linux {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
