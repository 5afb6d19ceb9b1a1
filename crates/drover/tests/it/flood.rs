//! Issue 21: a flood of idle and slowloris connections against a real `drover serve` whose
//! descriptor limit is lowered to 256 (with `prlimit`, so a few hundred connections exceed
//! it). While the flood goes on, an authenticated submit still succeeds, and a driver killed
//! meanwhile is restarted and the server becomes ready again: the accept loop keeps
//! `api.limits.fd_reserve` descriptors free and closes connections that do not send their
//! headers in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use drover::client::{ApiClient, Token};
use drover_api::token::ApiToken;

/// Connections the flood keeps open at once: more than the server's 256 descriptors.
const FLOOD: usize = 400;

#[test]
fn a_connection_flood_leaves_room_for_clients_and_for_driver_restarts() {
    let token = ApiToken::generate().unwrap();
    let (_dir, _data, config) = config_dir(
        &token,
        "\n[api.limits]\nheader_read_timeout_ms = 1500\nmax_connections_per_peer = 100000\n\
         fd_reserve = 64\n",
    );
    let mut command = Command::new("prlimit");
    command
        .args(["--nofile=256:256", "--"])
        .arg(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("VASTAI_API_KEY");
    let serve = start_command(command);
    let address = serve.url.trim_start_matches("http://").to_owned();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = ApiClient::new(&serve.url, Token::new(token.expose()).unwrap()).unwrap();
        wait_ready(&client).await;

        // The flood: FLOOD connections, each sending half a request header and then nothing;
        // any the server closes is opened again, until the test ends.
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let flood = {
            let (stop, opened, address) = (stop.clone(), opened.clone(), address.clone());
            std::thread::spawn(move || {
                let mut held: Vec<std::net::TcpStream> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    held.retain(|s| s.peek(&mut [0u8; 1]).map(|n| n > 0).unwrap_or(true));
                    while held.len() < FLOOD && !stop.load(Ordering::SeqCst) {
                        let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
                            break;
                        };
                        let _ = stream.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n");
                        stream.set_nonblocking(true).unwrap();
                        held.push(stream);
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while opened.load(Ordering::SeqCst) < FLOOD {
            assert!(Instant::now() < deadline, "the flood could not open its connections");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A driver dies during the flood.
        let pid = driver_pid(serve.child.id()).expect("the driver process");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .unwrap();

        // An authenticated client is still served.
        let started = Instant::now();
        let submitted =
            tokio::time::timeout(Duration::from_secs(60), client.submit(job(5.0), None))
                .await
                .expect("the submit was answered during the flood")
                .unwrap();
        assert_eq!(submitted.status, 201, "{}", submitted.raw);
        eprintln!("submit answered after {:?} of flood", started.elapsed());

        // The driver is restarted and the server is ready again, flood or not.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pid_now = driver_pid(serve.child.id());
            let ready = tokio::time::timeout(Duration::from_secs(30), client.readiness())
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|answer| answer.body.ready);
            if ready && pid_now.is_some_and(|p| p != pid) {
                break;
            }
            assert!(Instant::now() < deadline, "the killed driver was not restarted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let drivers = client.drivers().await.unwrap().body;
        assert!(
            drivers.drivers.iter().all(|d| d.health != drover_proto::api::DriverHealth::Failed),
            "{drivers:?}"
        );
        stop.store(true, Ordering::SeqCst);
        flood.join().unwrap();
    });
}
