//! The store on a small filesystem that fills up (issue 21): writes fail while it is full,
//! `writable` says so, and once space is freed the same store writes again, no reopen.
//!
//! Needs root to mount a 4 MiB tmpfs (CI runs as root); fails, never skips, without it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use drover_store::{SqliteStore, Store};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("fs");
        std::fs::create_dir(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&mount)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (CI runs as root)");
        Self { _dir: dir, mount }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Writes zeros into `path` until the filesystem refuses; returns how many bytes fit.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc_enospc()), "{error}");
                break;
            }
        }
    }
    // Smaller writes take the last partial block.
    loop {
        match file.write(&[0u8; 512]) {
            Ok(n) if n > 0 => written += n as u64,
            _ => break,
        }
    }
    written
}

/// ENOSPC on Linux.
fn libc_enospc() -> i32 {
    28
}

fn big_job(id: &str, at: u64) -> drover_store::NewJob {
    let mut job = new_job(id, "ci", at);
    // ~200 KiB of params: far more than any page the WAL could still reuse.
    let blob: String = "x".repeat(200 * 1024);
    job.spec.params.insert("blob".to_owned(), serde_json::Value::from(blob));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_free_submit_recovers_without_a_restart() {
    let fs = SmallFs::mount("4m");
    let store = SqliteStore::open_in(&fs.mount.join("data")).await.unwrap();
    store.submit_job(new_job("job-before", "ci", T0)).await.unwrap();
    store.writable().await.unwrap();

    let filler = fs.mount.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);

    let mut failures = 0;
    for n in 0..5 {
        let outcome = store.submit_job(big_job(&format!("job-full-{n}"), T0 + n)).await;
        if outcome.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 5, "every big submit fails on a full filesystem");
    assert!(store.writable().await.is_err(), "writable says no while the disk is full");
    // Reads still work.
    assert!(store.get_job(&job_id("job-before")).await.unwrap().is_some());

    std::fs::remove_file(&filler).unwrap();

    // The same store, no reopen: the next probe and the next submits succeed.
    store.writable().await.unwrap();
    for n in 0..3 {
        let id = format!("job-after-{n}");
        store.submit_job(big_job(&id, T0 + 100 + n)).await.unwrap();
        assert!(store.get_job(&job_id(&id)).await.unwrap().is_some());
    }
    store.close().await;
}
