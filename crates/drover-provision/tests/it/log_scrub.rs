//! SR-006: whole provisioning flows run with a known key under full tracing capture (every
//! target, every level, the simulator's own logs included), and neither the key nor any of
//! its encodings appears in anything captured: log lines, errors, audit events, leases, wire
//! errors, `Debug` of every value handed out. The restricted key the simulator gives each
//! instance (`instance_api_key`) must not appear either.

use parking_lot::Mutex;
use std::io::Write;
use std::sync::Arc;

use crate::util::*;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use drover_proto::Pricing;
use drover_provision::JobContext;
use drover_vast::{ApiKey, VastClient};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn forms(secret: &str) -> Vec<(String, String)> {
    let mut out = vec![("plain".to_owned(), secret.to_owned())];
    for (name, text) in [
        ("", secret.to_owned()),
        ("bearer ", format!("Bearer {secret}")),
        ("basic ", format!(":{secret}")),
    ] {
        for (enc, e) in [
            ("base64", STANDARD.encode(&text)),
            ("base64-nopad", STANDARD_NO_PAD.encode(&text)),
            ("base64url", URL_SAFE.encode(&text)),
            ("base64url-nopad", URL_SAFE_NO_PAD.encode(&text)),
        ] {
            out.push((format!("{name}{enc}"), e));
        }
    }
    let pct: String =
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).collect();
    out.push(("percent".into(), pct));
    let plus: String =
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .collect::<String>()
            .replace("%20", "+");
    out.push(("form".into(), plus));
    out.push(("hex".into(), hex_lower(secret)));
    out.push(("HEX".into(), hex_lower(secret).to_ascii_uppercase()));
    out
}

fn hex_lower(secret: &str) -> String {
    secret.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_key_never_appears_in_captured_output() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut shown: Vec<String> = Vec::new();
    let instance_keys = runtime.block_on(async {
        let rig = rig("rate_limit=1,create_gateway_timeout=1").await;
        let mut instance_keys = Vec::new();

        // A whole lease: search, gate, reserve, create (answer lost), find by label, run,
        // status, logs, release, destroy, confirm, settle.
        let lease = rig.prov.acquire(&request("job-scrub"), &ctx()).await.unwrap();
        shown.push(format!("{lease:?} {}", serde_json::to_string(&lease).unwrap()));
        shown.push(format!("{:?}", rig.prov.status(&lease.lease_id).await.unwrap()));
        shown.push(format!("{:?}", rig.prov.logs(&lease.lease_id, 10).await.unwrap()));
        for c in leases(&rig.store).await.iter().flat_map(|l| l.contracts.clone()) {
            instance_keys.push(rig.sim.instance_api_key(c.contract_id).unwrap());
        }
        shown
            .push(format!("{:?}", rig.prov.release(&lease.lease_id, "driver:test").await.unwrap()));

        // An interruptible lease whose bid is too low: an error body that names a contract.
        rig.sim.set_faults("low_bid=1".parse().unwrap());
        let mut bid = request("job-scrub-bid");
        bid.gpu.pricing = Pricing::Interruptible;
        let lease = rig.prov.acquire(&bid, &ctx()).await.unwrap();
        shown
            .push(format!("{:?}", rig.prov.release(&lease.lease_id, "driver:test").await.unwrap()));

        // A refusal by the gate, with its wire form.
        let poor = JobContext { budget_usd: 0.01, actor: "driver:test".into() };
        let err = rig.prov.acquire(&request("job-scrub-poor"), &poor).await.unwrap_err();
        shown.push(format!("{err} {err:?} {:?}", err.to_wire()));

        // The account call: the real API returns the key itself in this body.
        let client = client(&rig.sim);
        let user = client.current_user().await.unwrap();
        shown.push(format!("{user:?} {client:?}"));

        // Refused keys, as 401 and as 404, and a wrong key.
        for fault in ["auth=401", "auth=404"] {
            rig.sim.set_faults(fault.parse().unwrap());
            let err = rig.prov.acquire(&request("job-scrub-auth"), &ctx()).await.unwrap_err();
            shown.push(format!("{err} {err:?} {:?}", err.to_wire()));
        }
        rig.sim.set_faults(Default::default());
        let wrong = VastClient::new(rig.sim.base_url(), ApiKey::new("wrong-key").unwrap(), retry())
            .unwrap();
        let err = wrong.list_instances(None).await.unwrap_err();
        shown.push(format!("{err} {err:?}"));

        // Issue 15: the provider echoes the key in an error body, in each encoding; the
        // refusal reaches the error, its wire form (what a driver and the job's events get),
        // the audit log, the store and the log, and the key must be in none of them.
        for enc in ["plain", "base64", "base64url", "hex", "url"] {
            rig.sim.set_faults(format!("echo_key={enc}").parse().unwrap());
            let err = rig.prov.acquire(&request("job-scrub-echo"), &ctx()).await.unwrap_err();
            shown.push(format!("{err} {err:?} {:?}", err.to_wire()));
            assert!(
                format!("{err}").contains("[redacted]"),
                "{enc}: the echo was seen and blanked"
            );
        }
        assert_eq!(rig.sim.stats().faults_fired["echo_key"], 5);
        rig.sim.set_faults(Default::default());

        for e in audit_events(&rig.store).await {
            shown.push(serde_json::to_string(&e).unwrap());
        }
        for l in leases(&rig.store).await {
            shown.push(format!("{l:?} {}", serde_json::to_string(&l).unwrap()));
        }
        shown.push(format!("{:?} {:?}", rig.sim.ledger(), rig.sim.stats()));
        assert_eq!(rig.sim.stats().api_key_in_url, 0, "the key went into a URL");
        assert_no_leak_no_overspend(&rig).await;
        instance_keys
    });
    drop(runtime);

    let logs = String::from_utf8(capture.0.lock().clone()).unwrap();
    assert!(logs.contains("vast call"), "the capture saw the client's logs");
    assert!(logs.contains("sim request"), "the capture saw the simulator's logs");
    assert!(logs.contains("audit"), "the capture saw audit events");
    assert!(logs.len() > 10_000, "full tracing was captured ({} bytes)", logs.len());
    let everything = format!("{logs}\n{}", shown.join("\n"));
    for (form, needle) in forms(KEY) {
        assert!(!everything.contains(&needle), "the API key appears ({form})");
    }
    assert!(!instance_keys.is_empty());
    for key in &instance_keys {
        for (form, needle) in forms(key) {
            assert!(!everything.contains(&needle), "an instance_api_key appears ({form})");
        }
    }
    // The redaction is what kept them out, not silence.
    assert!(logs.contains("[redacted]"), "secret-bearing fields were redacted in trace output");
}
