//! Issue 15, one test per way the ledger settled below the bill or the budget was not a
//! ceiling, against the simulator's market faults. Each ends with the shared invariant
//! (`assert_no_leak_no_overspend`): nothing left billing, settled >= billed for every lease,
//! no job billed over its budget, and the day's settlements within the daily cap.

use crate::util::*;
use drover_proto::ErrorCode;
use drover_provision::{AcquireError, CostModel, JobContext, ProvisionerConfig};
use drover_vast::deadman::POLL_S as DEADMAN_POLL_S;

/// The provisioner's own defaults for the watchdog, as production runs it.
fn production_watchdog() -> ProvisionerConfig {
    let defaults = ProvisionerConfig::new("test");
    ProvisionerConfig { monitor_interval_s: defaults.monitor_interval_s, ..config() }
}

/// Waits until the simulated clock has passed `secs` more seconds.
async fn wait_sim(rig: &Rig, secs: f64) {
    let until = rig.clock.now_s() + secs;
    while rig.clock.now_s() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_price_increase_with_a_30_second_notice_is_answered_and_settled_from_the_bill() {
    // At 20x, the 30 s notice is 1.5 s of real time: a loaded machine cannot make it lapse.
    let rig = rig_at("price_increase=1.5,price_notice=30", production_watchdog(), 20.0).await;
    let lease = rig.prov.acquire(&request("job-notice-30"), &ctx()).await.unwrap();
    // The increase is answered before it takes effect, whatever the check interval's phase.
    wait_sim(&rig, 29.0).await;
    let answered = audit_events(&rig.store)
        .await
        .into_iter()
        .filter(|e| e.action == "vast.price_increase")
        .collect::<Vec<_>>();
    assert_eq!(answered.len(), 1, "answered within its 30 s notice: {answered:?}");
    assert_eq!(answered[0].metadata["answered"], true);
    wait_sim(&rig, 60.0).await;
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_price_increase_with_a_notice_shorter_than_a_check_is_seen_and_answered() {
    // A 20x increase takes effect 6 s after the instance runs (after the rent saw it run at
    // its quote, before any watchdog check): the watchdog sees the new price on the instance
    // and ends the lease. At 20x, 6 s is 0.3 s of real time.
    let rig = rig_at("price_increase=20,price_notice=6", production_watchdog(), 20.0).await;
    let lease = rig.prov.acquire(&request("job-notice-0"), &ctx()).await.unwrap();
    let store = rig.store.clone();
    let id = lease.lease_id.clone();
    eventually("the watchdog ends the lease", || {
        let (store, id) = (&store, &id);
        async move { !stored(store, id).await.is_open() }
    })
    .await;
    let actions = audit_actions(&rig.store).await;
    assert!(
        actions.iter().any(|(a, r)| a.starts_with("vast.price_") && r == "rejected"),
        "{actions:?}"
    );
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn an_underquoted_offer_is_refused_and_settled_at_no_less_than_its_bill() {
    let rig = rig("underquote=1.5").await;
    let err = rig.prov.acquire(&request("job-underquote"), &ctx()).await.unwrap_err();
    assert!(matches!(err, AcquireError::NotProvisioned { .. }), "{err:?}");
    let lease = &leases(&rig.store).await[0];
    let billed = billed_for(&rig, lease);
    assert!(billed > 0.0, "the instances billed while they loaded");
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_create_applied_after_its_504_is_found_by_label_and_accounted_to_the_lease() {
    let rig = rig("late_create=1").await;
    let lease = rig.prov.acquire(&request("job-late"), &ctx()).await.unwrap();
    let stats = rig.sim.stats();
    assert_eq!(stats.faults_fired["late_create_applied"], 1);
    assert_eq!(stats.contracts_created, 1, "the late instance is the lease's, never a second one");
    let rec = stored(&rig.store, &lease.lease_id).await;
    assert_eq!(rec.contracts.len(), 1);
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    let rec = stored(&rig.store, &lease.lease_id).await;
    assert!(rec.settled_usd.unwrap() >= billed_for(&rig, &rec));
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_502_on_create_with_nothing_created_is_confirmed_and_retried() {
    let rig = rig("create_bad_gateway=1").await;
    let lease = rig.prov.acquire(&request("job-502-create"), &ctx()).await.unwrap();
    assert_eq!(rig.sim.stats().faults_fired["create_bad_gateway"], 1);
    assert_eq!(rig.sim.stats().contracts_created, 1);
    let actions = audit_actions(&rig.store).await;
    assert!(actions.contains(&("vast.create".into(), "confirmed_absent".into())), "{actions:?}");
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn with_the_supervisor_down_the_instance_ends_itself_past_its_deadline() {
    let cfg = config();
    let grace = cfg.deadman_grace_s;
    let rig = rig_with("none", cfg).await;
    let mut req = request("job-deadman");
    req.max_runtime_s = 60;
    let lease = rig.prov.acquire(&req, &ctx()).await.unwrap();
    let label = stored(&rig.store, &lease.lease_id).await.label;
    let deadline_s = lease.deadline_unix_ms as f64 / 1000.0;
    // The supervisor dies: no watchdog, no reaper, nothing calls the provider.
    let Rig { sim, store, prov, clock, dir } = rig;
    drop(prov);
    let bound = deadline_s + grace + DEADMAN_POLL_S + 1.0;
    eventually("the bound passes", || async { clock.now_s() > bound + 5.0 }).await;
    let ledger = sim.ledger();
    let entries = ledger.with_label(&label);
    assert_eq!(entries.len(), 1);
    let ended = entries[0].ended_s.expect("the instance still bills with the supervisor down");
    assert!(ended <= bound, "ended {:.1} s after the deadline", ended - deadline_s);
    assert_eq!(sim.stats().self_destroyed, 1);
    // The next start reconciles the lease and settles it from the bill.
    let prov = drover_provision::Provisioner::start(client(&sim), store.clone(), config(), clock)
        .await
        .unwrap();
    let rig = Rig { sim, store, prov, clock, dir };
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn an_instance_stuck_loading_is_never_billed_above_the_jobs_budget() {
    // The production provisioning window, and a budget at the gate's 95% bound.
    let cfg = ProvisionerConfig { model: CostModel::default(), ..config() };
    let rig = rig_with("stuck_loading=10", cfg).await;
    let mut req = request("job-stuck-budget");
    req.max_runtime_s = 60;
    req.bandwidth_gib = 0.0;
    let dry = rig
        .prov
        .dry_run(&req.gpu, req.max_runtime_s, req.disk_gib, 0.0, 1000.0, "test")
        .await
        .unwrap();
    // A hair above the bound, so float rounding cannot turn the gate's answer.
    let p95 = dry.decision.unwrap().p95_usd * 1.0001;
    let ctx = JobContext { budget_usd: p95, actor: "driver:test".into() };
    let err = rig.prov.acquire(&req, &ctx).await.unwrap_err();
    let lease = &leases(&rig.store).await[0];
    let billed = billed_for(&rig, lease);
    assert!(billed <= p95 + 1e-9, "billed {billed} over the job's budget {p95}: {err}");
    assert!(billed > 0.0);
    assert!(
        matches!(err, AcquireError::BudgetCeiling { .. } | AcquireError::NotProvisioned { .. }),
        "{err:?}"
    );
    if matches!(err, AcquireError::BudgetCeiling { .. }) {
        assert_eq!(err.code(), ErrorCode::CostGateRejected);
    }
    assert_no_leak_no_overspend_within(&rig, p95).await;
}

#[tokio::test]
async fn an_instance_whose_price_would_pass_the_budget_while_loading_is_destroyed_first() {
    // The instance bills 40x its quote: the ceiling ends it before the job's budget is spent,
    // and the rent fails saying so.
    let rig = rig("underquote=40").await;
    let mut req = request("job-ceiling");
    req.max_runtime_s = 60;
    req.bandwidth_gib = 0.0;
    let dry = rig
        .prov
        .dry_run(&req.gpu, req.max_runtime_s, req.disk_gib, 0.0, 1000.0, "test")
        .await
        .unwrap();
    let budget = dry.decision.unwrap().p95_usd * 1.0001;
    let ctx = JobContext { budget_usd: budget, actor: "driver:test".into() };
    let err = rig.prov.acquire(&req, &ctx).await.unwrap_err();
    assert!(matches!(err, AcquireError::BudgetCeiling { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::CostGateRejected);
    assert!(err.to_wire().message.contains("budget"), "{:?}", err.to_wire());
    assert_no_leak_no_overspend_within(&rig, budget).await;
}

/// The `ledger.settle` audit event of the only lease.
async fn settle_event(rig: &Rig) -> serde_json::Value {
    let events: Vec<_> = audit_events(&rig.store)
        .await
        .into_iter()
        .filter(|e| e.action == "ledger.settle")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    serde_json::Value::Object(events[0].metadata.clone())
}

#[tokio::test]
async fn a_released_lease_settles_at_its_whole_bill_not_above_it() {
    // The accrued bound counts compute from the create call, but the provider bills compute
    // only once the instance loads: settling at the higher of the two put a fleet's ledger a
    // fifth above the account's bill. A whole bill is the measure.
    let rig = rig("none").await;
    let lease = rig.prov.acquire(&request("job-whole-bill"), &ctx()).await.unwrap();
    wait_sim(&rig, 120.0).await;
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
    let event = settle_event(&rig).await;
    assert_eq!(event["basis"], "bill", "{event}");
    let rec = leases(&rig.store).await.pop().unwrap();
    let billed = billed_for(&rig, &rec);
    let settled = rec.settled_usd.unwrap();
    let accrued = event["accrued_usd"].as_f64().unwrap();
    assert!(accrued > settled + 1e-6, "accrued {accrued} is not above settled {settled}");
    let expected = billed + rec.bandwidth_usd;
    assert!(
        settled >= expected && settled <= expected + 1e-6,
        "settled {settled}, billed {billed} + bandwidth {}",
        rec.bandwidth_usd
    );
}

#[tokio::test]
async fn a_bill_that_lags_behind_the_destroy_settles_at_the_accrued_bound() {
    // The provider's listing counts an hour late: what it says at settlement is not the whole
    // bill, so the lease settles at the accrued upper bound, never below what is billed later.
    let rig = rig("bill_lag=3600").await;
    let lease = rig.prov.acquire(&request("job-late-bill"), &ctx()).await.unwrap();
    wait_sim(&rig, 120.0).await;
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    let event = settle_event(&rig).await;
    assert_eq!(event["basis"], "accrued", "{event}");
    let rec = leases(&rig.store).await.pop().unwrap();
    assert_eq!(rec.settled_usd.unwrap(), event["settled_usd"].as_f64().unwrap());
    assert!(event["billed_usd"].as_f64().unwrap() < billed_for(&rig, &rec), "{event}");
    assert_no_leak_no_overspend(&rig).await;
}
