//! Local GPUs without a GPU: a fake machine (character devices made with `mknod` carrying
//! `/dev/null`'s numbers, `information` files as the NVIDIA kernel module writes them, and a
//! fake `nvidia-smi` first on `PATH`) under the test-only `DROVER_GPU_TEST_ROOT`, so that the
//! real inventory, device set, sandbox and supervisor code runs against it; and the "no GPU"
//! answers of `drover sandbox gpu-check` and `gpu-workload` where no GPU exists (CI).
//!
//! The fake machine needs root (`mknod`, and `drover exec`/`serve` dropping to uid 65534, as
//! the sandbox tests do); CI runs them as root. Without root they say why and return.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;
use serde_json::Value;

const UUID0: &str = "GPU-0a0a0a0a-1111-2222-3333-444444444444";
const UUID1: &str = "GPU-1b1b1b1b-5555-6666-7777-888888888888";

/// Ends the calling test unless this runs as root (see `drover_testkit::privileged`).
macro_rules! require_root {
    () => {
        if !drover_testkit::privileged::is_root() {
            drover_testkit::skip_or_fail!(
                "the fake GPU machine needs root (mknod, privilege drop); CI runs as root"
            );
        }
    };
}

/// Two GPUs whose minors are the reverse of their indices (index 0 is /dev/nvidia1), the
/// control and unified-memory nodes, and `bin/nvidia-smi` answering the inventory query.
struct FakeMachine {
    dir: tempfile::TempDir,
}

impl FakeMachine {
    fn new() -> FakeMachine {
        let dir = tempfile::Builder::new().prefix("drover-fake-gpus-").tempdir().unwrap();
        let root = dir.path();
        for sub in ["dev", "bin", "proc/driver/nvidia/gpus"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for (bus, minor) in [("0000:19:00.0", 1), ("0000:3b:00.0", 0)] {
            let info = root.join("proc/driver/nvidia/gpus").join(bus);
            std::fs::create_dir_all(&info).unwrap();
            std::fs::write(
                info.join("information"),
                format!(
                    "Model:\t\t NVIDIA Fake H200\nDevice Minor:\t {minor}\nGPU Excluded:\t No\n"
                ),
            )
            .unwrap();
        }
        let null = nix::sys::stat::makedev(1, 3);
        for node in ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
            nix::sys::stat::mknod(
                &root.join("dev").join(node),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                null,
            )
            .unwrap();
            // mknod applies the umask.
            std::fs::set_permissions(
                root.join("dev").join(node),
                std::fs::Permissions::from_mode(0o666),
            )
            .unwrap();
        }
        let smi = root.join("bin/nvidia-smi");
        std::fs::write(
            &smi,
            format!(
                "#!/bin/sh\n[ \"$1 $2\" = \"--query-gpu=index,uuid,name,pci.bus_id --format=csv,noheader\" ] || exit 9\n\
                 echo '0, {UUID0}, NVIDIA Fake H200, 00000000:19:00.0'\n\
                 echo '1, {UUID1}, NVIDIA Fake H200, 00000000:3B:00.0'\n"
            ),
        )
        .unwrap();
        for path in [root, &root.join("bin"), &smi] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        FakeMachine { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `drover ARGS` on this machine: its nvidia-smi first on PATH, its root as the test root.
    fn drover(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
        command
            .env("PATH", format!("{}:/usr/bin:/bin", self.root().join("bin").display()))
            .env("DROVER_GPU_TEST_ROOT", self.root())
            .stdin(Stdio::null());
        command
    }
}

fn gpu_profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sandbox/gpu.toml")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What a sandboxed shell given `--gpu GPU` can open, and its visibility variables.
fn opened_by(machine: &FakeMachine, gpu: &str) -> String {
    let dev = machine.root().join("dev");
    let script = format!(
        "for n in nvidia0 nvidia1 nvidiactl nvidia-uvm nvidia-uvm-tools; do \
           if [ ! -e {dev}/$n ]; then echo \"$n absent\"; \
           elif true <> {dev}/$n; then echo \"$n open\"; else echo \"$n denied\"; fi; \
         done 2>/dev/null; echo \"cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES\"",
        dev = dev.display()
    );
    let output = machine
        .drover()
        .args(["exec", "--gpu", gpu, "--profile"])
        .arg(gpu_profile())
        .args(["--", "/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

#[test]
fn a_driver_given_one_gpu_can_open_only_that_gpu_and_the_control_nodes() {
    require_root!();
    let machine = FakeMachine::new();
    // GPU 0 is /dev/nvidia1 on this machine (its minor), GPU 1 is /dev/nvidia0. The other GPU's
    // node does not even exist in the driver's private tree (the GPU profile requires it).
    let first = opened_by(&machine, "0");
    assert_eq!(
        first,
        format!(
            "nvidia0 absent\nnvidia1 open\nnvidiactl open\nnvidia-uvm open\nnvidia-uvm-tools open\n\
             cuda={UUID0} nvidia={UUID0}\n"
        )
    );
    // The other GPU, by UUID: the mirror image. Neither can open the other's node.
    let second = opened_by(&machine, UUID1);
    assert!(second.starts_with("nvidia0 open\nnvidia1 absent\n"), "{second}");
    assert!(second.ends_with(&format!("cuda={UUID1} nvidia={UUID1}\n")), "{second}");
}

#[test]
fn a_gpu_that_is_not_there_is_refused_by_name() {
    require_root!();
    let machine = FakeMachine::new();
    let output = machine
        .drover()
        .args(["exec", "--gpu", "7", "--profile"])
        .arg(gpu_profile())
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("GPU 7 is not on this machine"), "{stderr}");
    assert!(stderr.contains(&format!("0 {UUID0}, 1 {UUID1}")), "{stderr}");

    // drover serve refuses to start with a driver naming a missing GPU, by index or UUID.
    let token = ApiToken::generate().unwrap();
    for (gpus, named) in [("[1, 4]", "GPU 4"), ("[\"GPU-dead-beef\"]", "GPU GPU-dead-beef")] {
        let extra = format!(
            "\n[[drivers]]\nname = \"trainer\"\ncommand = [\"/bin/true\"]\nprofile = {:?}\ngpus = {gpus}\n",
            gpu_profile()
        );
        let (_dir, _data, config) = common::config_dir(&token, &extra);
        let output = machine
            .drover()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
        assert!(stderr.contains("driver trainer: gpus:"), "{stderr}");
        assert!(stderr.contains(&format!("{named} is not on this machine")), "{stderr}");
    }
}

#[test]
fn drivers_and_sandbox_status_show_which_gpu_each_driver_holds() {
    require_root!();
    let machine = FakeMachine::new();
    let token = ApiToken::generate().unwrap();
    let extra = format!(
        "\n[[drivers]]\nname = \"first\"\ncommand = [\"/bin/sleep\", \"60\"]\nprofile = {p:?}\ngpus = [0]\n\
         \n[[drivers]]\nname = \"second\"\ncommand = [\"/bin/sleep\", \"60\"]\nprofile = {p:?}\ngpus = [\"{UUID1}\"]\n\
         \n[[drivers]]\nname = \"plain\"\ncommand = [\"/bin/sleep\", \"60\"]\n",
        p = gpu_profile()
    );
    let (_dir, _data, config) = common::config_dir(&token, &extra);

    let output =
        machine.drover().args(["sandbox", "status", "--json", "--config"]).arg(&config).output();
    let output = output.unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["gpus"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(status["gpus"][0]["node"], format!("{}/dev/nvidia1", machine.root().display()));
    let drivers = &status["drivers"];
    assert_eq!(drivers[0]["name"], "first");
    assert_eq!(drivers[0]["gpus"][0]["uuid"], UUID0, "{drivers}");
    assert_eq!(drivers[1]["gpus"][0]["index"], 1, "{drivers}");
    assert_eq!(drivers[2]["gpus"], Value::Array(Vec::new()), "{drivers}");

    let mut child = machine
        .drover()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let url = line.trim().strip_prefix("drover serve: listening on ").expect(&line).to_owned();
    let mut serve = common::Serve { child, url };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let list = loop {
            match client.drivers().await {
                Ok(answer) => break answer.body,
                Err(error) => assert!(Instant::now() < deadline, "{error}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let held = |name: &str| {
            let driver = list.drivers.iter().find(|d| d.name.as_str() == name).unwrap();
            driver.gpus.iter().map(|g| (g.index, g.uuid.to_string())).collect::<Vec<_>>()
        };
        assert_eq!(held("first"), [(0, UUID0.to_owned())]);
        assert_eq!(held("second"), [(1, UUID1.to_owned())]);
        assert!(held("plain").is_empty());
    });
    common::terminate(&mut serve);
}

/// Issue 14's finding: CUDA's `cuInit` (like glibc's `pthread_setname_np`) writes
/// `/proc/self/task/<tid>/comm`, which failed in the sandbox (ENOENT under the host's procfs in
/// a pid namespace, EACCES under Landlock), so every CUDA program died with
/// CUDA_ERROR_OPERATING_SYSTEM. Under the GPU profile the write now works, in the driver's own
/// procfs; /proc/sys stays read-only; the default profile still cannot write /proc.
#[test]
fn under_the_gpu_profile_threads_can_name_themselves_as_cuda_does() {
    require_root!();
    let script = "if printf cuda-worker > /proc/self/task/$$/comm; then cat /proc/$$/comm; else echo denied; fi; \
                  if echo x > /proc/sys/kernel/hostname; then echo sys-writable; else echo sys-read-only; fi";
    let run = |profile: Option<PathBuf>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_drover"));
        command.arg("exec");
        if let Some(profile) = profile {
            command.arg("--profile").arg(profile);
        }
        let output =
            command.args(["--", "/bin/sh", "-c", script]).stdin(Stdio::null()).output().unwrap();
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    assert_eq!(run(Some(gpu_profile())), "cuda-worker\nsys-read-only\n");
    assert_eq!(run(None), "denied\nsys-read-only\n");
}

#[test]
fn gpu_check_without_a_gpu_says_so_and_exits_2() {
    // No nvidia-smi at all (CI): the inventory finds no GPU.
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["sandbox", "gpu-check", "--json"])
        .env("PATH", "/nonexistent")
        .env_remove("DROVER_GPU_TEST_ROOT")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["gpu"], false);
    assert_eq!(answer["reason"], "nvidia-smi is not on PATH (no NVIDIA driver here)");
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["sandbox", "gpu-check"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(text(&output).0, "no GPU: nvidia-smi is not on PATH (no NVIDIA driver here)\n");
}

#[test]
fn gpu_check_with_gpus_listed_but_no_cuda_library_says_no_gpu() {
    require_root!();
    // nvidia-smi lists GPUs, but libcuda.so.1 is not there: the outside run answers no GPU.
    // (Where a real libcuda exists this would run CUDA against fake nodes; CI has none.)
    let machine = FakeMachine::new();
    let output = machine.drover().args(["sandbox", "gpu-check", "--json", "--gpu", "1"]).output();
    let output = output.unwrap();
    let (stdout, stderr) = text(&output);
    let answer: Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    if answer["gpu"] == true {
        // A machine with an NVIDIA driver installed: the workload ran and cannot have verified
        // against fake nodes; the report must still name each side.
        assert!(answer["outside"].is_object() && answer["inside"].is_object(), "{answer}");
        return;
    }
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.contains("libcuda.so.1"), "{answer}");
}

#[test]
fn the_workload_without_a_gpu_reports_why_and_exits_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["sandbox", "gpu-workload"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    let report: Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    match report["ok"].as_bool() {
        // A machine with a GPU: the workload must have verified its result.
        Some(true) => assert!(report["kernel_gbps"].as_f64().unwrap() > 0.0, "{report}"),
        _ => {
            assert_eq!(report["no_gpu"], true, "{report}\n{stderr}");
            assert_eq!(output.status.code(), Some(2));
            assert_eq!(report["stage"], "no_gpu");
            assert!(report["error"].as_str().unwrap().starts_with("no GPU: "), "{report}");
        }
    }
}
