//! Issue 17: nothing on gate decisions or provider calls reached `/metrics`. A refused and
//! an allowed rental, an estimate and a refused key each move their series.

use crate::util::{SPEED, config, ctx, request, retry, simulator, store};
use drover_provision::{
    AcquireError, Clock, JobContext, ProvisionMetrics, Provisioner, ProvisionerConfig,
};
use drover_vast::{ApiKey, VastClient};
use prometheus_client::registry::Registry;

fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry).unwrap();
    text
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn gate_decisions_and_provider_calls_are_counted() {
    let metrics = ProvisionMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let clock = Clock::scaled(SPEED);
    let sim = simulator("", clock).await;
    let (store, _dir) = store().await;
    let client = crate::util::client(&sim).with_metrics(metrics.provider().clone());
    let cfg = ProvisionerConfig { metrics: metrics.clone(), ..config() };
    let prov = Provisioner::start(client, store, cfg, clock).await.unwrap();

    let poor = JobContext { budget_usd: 0.0001, actor: "driver:test".into() };
    let refused = prov.acquire(&request("job-poor"), &poor).await.unwrap_err();
    let AcquireError::Gate(rejection) = &refused else { panic!("{refused:?}") };
    let lease = prov.acquire(&request("job-rich"), &ctx()).await.unwrap();
    prov.release(&lease.lease_id, "driver:test").await.unwrap();
    let text = render(&registry);
    let reason = rejection.reason_code();
    assert_eq!(
        value(
            &text,
            &format!(
                "drover_gate_decisions_total{{purpose=\"rental\",decision=\"refused\",reason=\"{reason}\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "drover_gate_decisions_total{purpose=\"rental\",decision=\"allowed\",reason=\"none\"}"
        ),
        1.0
    );
    // Two searches (one per acquire), a create, and the calls the watchdog and the release
    // made, each timed.
    let searches =
        value(&text, "drover_provider_calls_total{operation=\"search_offers\",outcome=\"ok\"}");
    assert!(searches >= 2.0, "{text}");
    assert!(
        value(&text, "drover_provider_calls_total{operation=\"create_instance\",outcome=\"ok\"}")
            >= 1.0
    );
    assert!(
        value(&text, "drover_provider_calls_total{operation=\"destroy_instance\",outcome=\"ok\"}")
            >= 1.0
    );
    assert_eq!(inf_bucket(&text, "search_offers"), searches);

    // An estimate is a decision too, counted apart from rentals.
    let gpu = request("job-estimate").gpu;
    let dry = prov.dry_run(&gpu, 600, 20, 1.0, 100.0, "token:test").await.unwrap();
    assert!(dry.decision.is_ok());
    let text = render(&registry);
    assert_eq!(
        value(
            &text,
            "drover_gate_decisions_total{purpose=\"estimate\",decision=\"allowed\",reason=\"none\"}"
        ),
        1.0
    );

    // A provider refusing the key is an `auth` outcome.
    let stranger = VastClient::new(sim.base_url(), ApiKey::new("not-the-key").unwrap(), retry())
        .unwrap()
        .with_metrics(metrics.provider().clone());
    stranger.list_instances(None).await.unwrap_err();
    let text = render(&registry);
    assert_eq!(
        value(&text, "drover_provider_calls_total{operation=\"list_instances\",outcome=\"auth\"}"),
        1.0
    );
    prov.shutdown().await;
}

/// The `+Inf` bucket of `operation`'s duration histogram, whatever order the labels come in.
fn inf_bucket(text: &str, operation: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with("drover_provider_call_duration_seconds_bucket{")
                && l.contains(&format!("operation=\"{operation}\""))
                && l.contains("le=\"+Inf\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no +Inf bucket for {operation} in\n{text}"))
}
