//! One test per simulator fault, through the whole lease lifecycle. Each ends by asserting,
//! from the simulator's own billing ledger, that nothing was left billing and nothing was
//! billed beyond a lease's reservation or a job's budget.

use crate::util::*;
use drover_proto::{ErrorCode, LeasePhase, Pricing};
use drover_provision::{AcquireError, GateReason, JobContext, Provisioner};
use drover_vast::{CreateRequest, VastError};
use drover_vast_sim::Faults;

/// Acquire, check it runs, release, check the ledger.
async fn round_trip(rig: &Rig, job: &str) -> drover_proto::Lease {
    let lease = rig.prov.acquire(&request(job), &ctx()).await.expect("acquire");
    assert_eq!(lease.state, LeasePhase::Running);
    let released = rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_eq!(released.state, LeasePhase::Released);
    lease
}

#[tokio::test]
async fn no_fault_full_lifecycle() {
    let rig = rig("none").await;
    let lease = rig.prov.acquire(&request("job-1"), &ctx()).await.unwrap();
    assert_eq!(lease.state, LeasePhase::Running);
    assert_eq!(lease.gpu_model.as_deref(), Some("RTX 4090"));
    let est = lease.estimate.clone().unwrap();
    assert!(
        est.confidence >= 0.95 && est.expected_usd <= est.p95_usd && est.p95_usd <= est.worst_usd
    );
    let status = rig.prov.status(&lease.lease_id).await.unwrap();
    assert_eq!(status.state, LeasePhase::Running);
    let logs = rig.prov.logs(&lease.lease_id, 2).await.unwrap();
    assert_eq!(logs.lines.len(), 2);
    assert!(logs.truncated);
    let released = rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_eq!(released.state, LeasePhase::Released);
    // Releasing twice is harmless.
    let again = rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_eq!(again.cost_usd, released.cost_usd);
    let actions = audit_actions(&rig.store).await;
    for expected in [
        ("gate.decide", "allowed"),
        ("ledger.reserve", "ok"),
        ("vast.create", "ok"),
        ("lease.running", "ok"),
        ("vast.destroy", "ok"),
        ("ledger.settle", "ok"),
    ] {
        assert!(
            actions.iter().any(|(a, r)| (a.as_str(), r.as_str()) == expected),
            "{expected:?} in {actions:?}"
        );
    }
    let stats = rig.sim.stats();
    assert_eq!(stats.contracts_created, 1);
    assert_eq!(stats.api_key_in_url, 0);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn rate_limited_without_retry_after() {
    let rig = rig("rate_limit=3").await;
    round_trip(&rig, "job-429").await;
    assert_eq!(rig.sim.stats().faults_fired["rate_limit"], 3);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn bad_gateway_and_unavailable_are_retried() {
    let rig = rig("bad_gateway=2,unavailable=1").await;
    round_trip(&rig, "job-502").await;
    let fired = rig.sim.stats().faults_fired;
    assert_eq!((fired["bad_gateway"], fired["unavailable"]), (2, 1));
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn gateway_timeout_on_reads_is_retried() {
    let rig = rig("gateway_timeout=2").await;
    round_trip(&rig, "job-504").await;
    assert_eq!(rig.sim.stats().faults_fired["gateway_timeout"], 2);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn gateway_timeout_on_create_finds_the_instance_by_label() {
    let rig = rig("create_gateway_timeout=1").await;
    let lease = round_trip(&rig, "job-504c").await;
    // The create was acted on; it was found by its label and never repeated.
    assert_eq!(rig.sim.stats().contracts_created, 1);
    let actions = audit_actions(&rig.store).await;
    assert!(actions.contains(&("vast.create".into(), "unknown".into())));
    let rec = stored(&rig.store, &lease.lease_id).await;
    assert_eq!(rec.contracts.len(), 1);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn slow_create_past_the_timeout_is_never_created_twice() {
    let rig = rig("slow_create=2500").await;
    round_trip(&rig, "job-slow").await;
    assert_eq!(rig.sim.stats().contracts_created, 1, "a timed-out create was repeated");
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn slow_responses_everywhere() {
    let rig = rig("slow=30").await;
    round_trip(&rig, "job-slow-all").await;
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn auth_failure_as_401_and_as_404() {
    for status in [401u16, 404] {
        let rig = rig("none").await;
        rig.sim.set_faults(format!("auth={status}").parse().unwrap());
        let err = rig.prov.acquire(&request("job-auth"), &ctx()).await.unwrap_err();
        match &err {
            AcquireError::Provider(e @ VastError::Auth { .. }) => assert!(e.is_auth()),
            other => panic!("{other:?}"),
        }
        assert_eq!(err.code(), ErrorCode::ProviderUnavailable);
        assert_eq!(rig.sim.stats().contracts_created, 0);
        assert_no_leak_no_overspend(&rig).await;
    }
}

#[tokio::test]
async fn key_revoked_during_a_lease_keeps_it_open_until_the_reaper_can_finish() {
    let rig = rig("none").await;
    let lease = rig.prov.acquire(&request("job-revoked"), &ctx()).await.unwrap();
    rig.sim.set_faults("auth=404".parse().unwrap());
    assert!(rig.prov.release(&lease.lease_id, "driver:test").await.is_err());
    // Fail closed: the lease is not settled while its instance may bill.
    let rec = stored(&rig.store, &lease.lease_id).await;
    assert!(rec.is_open());
    assert_eq!(rig.sim.ledger().live().len(), 1);
    rig.sim.set_faults(Faults::default());
    let report = rig.prov.reap_once().await.unwrap();
    assert_eq!(report.settled, vec![lease.lease_id.clone()]);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn offer_gone_between_search_and_create_fails_over() {
    let rig = rig("offer_gone=2").await;
    let lease = round_trip(&rig, "job-gone").await;
    let gone = audit_actions(&rig.store)
        .await
        .iter()
        .filter(|(a, r)| a == "vast.create" && r == "offer_gone")
        .count();
    assert_eq!(gone, 2, "both 404/3603 and 410 were seen as offer gone");
    assert_eq!(rig.sim.stats().contracts_created, 1);
    let rec = stored(&rig.store, &lease.lease_id).await;
    assert_eq!(rec.contracts.len(), 1);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn every_offer_gone_is_a_provider_error_and_rents_nothing() {
    let rig = rig("offer_gone=10").await;
    let err = rig.prov.acquire(&request("job-nogo"), &ctx()).await.unwrap_err();
    assert!(matches!(err, AcquireError::NotProvisioned { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::ProviderUnavailable);
    assert_eq!(rig.sim.stats().contracts_created, 0);
    let lease = &leases(&rig.store).await[0];
    assert_eq!(
        lease.settled_usd,
        Some(lease.bandwidth_usd),
        "only the declared traffic is settled"
    );
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn the_same_offer_sold_twice_never_leaves_two_instances() {
    let rig = rig("none").await;
    let first = rig.prov.acquire(&request("job-a"), &ctx()).await.unwrap();
    rig.sim.set_faults("double_sale".parse().unwrap());
    let second = rig.prov.acquire(&request("job-b"), &ctx()).await.unwrap();
    assert_eq!(rig.sim.stats().faults_fired["double_sale"], 1);
    let rec = stored(&rig.store, &second.lease_id).await;
    assert_eq!(rec.contracts.len(), 2, "the ghost instance, then the failover");
    assert!(rec.contracts[0].gone_unix_ms.is_some(), "the ghost was destroyed before the failover");
    assert!(rec.contracts[1].created_unix_ms >= rec.contracts[0].gone_unix_ms.unwrap());
    assert_eq!(rig.sim.ledger().live().len(), 2, "one instance per lease");
    rig.prov.release(&first.lease_id, "driver:test").await.unwrap();
    rig.prov.release(&second.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn bid_too_low_leaves_a_stopped_instance_that_is_destroyed() {
    let rig = rig("low_bid=1").await;
    let mut req = request("job-bid");
    req.gpu.pricing = Pricing::Interruptible;
    let lease = rig.prov.acquire(&req, &ctx()).await.unwrap();
    let actions = audit_actions(&rig.store).await;
    assert!(actions.contains(&("vast.create".into(), "error_with_contract".into())), "{actions:?}");
    let ledger = rig.sim.ledger();
    let stopped = &ledger.entries[0];
    assert!(stopped.ended_s.is_some(), "the stopped instance still bills");
    assert!(stopped.compute_usd == 0.0 && stopped.storage_usd > 0.0, "stopped: storage only");
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn stuck_in_loading_is_destroyed_when_the_window_closes() {
    let rig = rig("stuck_loading=3").await;
    let err = rig.prov.acquire(&request("job-stuck"), &ctx()).await.unwrap_err();
    assert!(matches!(err, AcquireError::NotProvisioned { .. }), "{err:?}");
    assert!(rig.sim.stats().contracts_created >= 1);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn terminal_exited_and_offline_fail_over() {
    for fault in ["exited=1", "offline=1"] {
        let rig = rig(fault).await;
        let lease = round_trip(&rig, "job-term").await;
        let rec = stored(&rig.store, &lease.lease_id).await;
        assert_eq!(rec.contracts.len(), 2, "{fault}: the failed instance, then the next offer");
        assert_eq!(rig.sim.stats().contracts_created, 2);
        assert_no_leak_no_overspend(&rig).await;
    }
}

#[tokio::test]
async fn a_first_read_of_null_is_not_taken_as_gone() {
    let rig = rig("null_first_read=1").await;
    round_trip(&rig, "job-null").await;
    assert_eq!(rig.sim.stats().faults_fired["null_first_read"], 1);
    assert_eq!(rig.sim.stats().contracts_created, 1);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_host_price_increase_beyond_the_reservation_ends_the_lease() {
    let rig = rig("price_increase=3").await;
    let lease = rig.prov.acquire(&request("job-price"), &ctx()).await.unwrap();
    let store = rig.store.clone();
    let id = lease.lease_id.clone();
    eventually("the watchdog ends the lease", || {
        let (store, id) = (&store, &id);
        async move { !stored(store, id).await.is_open() }
    })
    .await;
    let actions = audit_actions(&rig.store).await;
    assert!(actions.contains(&("vast.price_increase".into(), "rejected".into())), "{actions:?}");
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_small_host_price_increase_within_the_reservation_is_accepted() {
    let rig = rig("price_increase=1.01").await;
    let lease = rig.prov.acquire(&request("job-price-ok"), &ctx()).await.unwrap();
    let store = rig.store.clone();
    eventually("the increase is answered", || {
        let store = &store;
        async move { audit_events(store).await.iter().any(|e| e.action == "vast.price_increase") }
    })
    .await;
    let actions = audit_actions(&rig.store).await;
    assert!(actions.contains(&("vast.price_increase".into(), "accepted".into())), "{actions:?}");
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_destroy_that_does_nothing_is_caught_by_the_confirmation() {
    let rig = rig("destroy_noop=2").await;
    round_trip(&rig, "job-noop").await;
    let stats = rig.sim.stats();
    assert_eq!(stats.faults_fired["destroy_noop"], 2);
    assert!(stats.destroys >= 3, "destroy was retried until confirmed: {stats:?}");
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn the_watchdog_destroys_at_the_hard_deadline() {
    let rig = rig("none").await;
    let mut req = request("job-deadline");
    req.max_runtime_s = 60;
    let lease = rig.prov.acquire(&req, &ctx()).await.unwrap();
    let store = rig.store.clone();
    let id = lease.lease_id.clone();
    eventually("the deadline ends the lease", || {
        let (store, id) = (&store, &id);
        async move { !stored(store, id).await.is_open() }
    })
    .await;
    let rec = stored(&rig.store, &lease.lease_id).await;
    assert_eq!(rec.status_message.as_deref(), Some("deadline reached"));
    let ended = rig.sim.ledger().entries[0].ended_s.unwrap();
    let deadline_s = lease.deadline_unix_ms as f64 / 1000.0;
    assert!(ended >= deadline_s && ended <= deadline_s + 30.0, "destroyed at the deadline");
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn the_gate_refuses_low_confidence_and_rents_nothing() {
    let rig = rig("none").await;
    let poor = JobContext { budget_usd: 0.02, actor: "driver:test".into() };
    let err = rig.prov.acquire(&request("job-poor"), &poor).await.unwrap_err();
    let AcquireError::Gate(gate) = &err else { panic!("{err:?}") };
    assert!(matches!(gate.reason, GateReason::LowConfidence { .. }));
    let wire = err.to_wire();
    assert_eq!(wire.code, ErrorCode::CostGateRejected);
    assert_eq!(wire.details.as_ref().unwrap()["reason"], "low_confidence");
    assert!(wire.details.as_ref().unwrap()["confidence"].as_f64().unwrap() < 0.95);
    let rejected =
        audit_events(&rig.store).await.into_iter().find(|e| e.action == "gate.decide").unwrap();
    assert_eq!(rejected.result, "rejected");
    assert!(
        rejected.metadata["estimate"]["worst_usd"].as_f64().is_some(),
        "the numbers are audited"
    );
    assert!(leases(&rig.store).await.is_empty());
    assert_eq!(rig.sim.stats().contracts_created, 0);
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn the_daily_cap_covers_worst_cases_across_jobs() {
    let mut cfg = config();
    cfg.gate.daily_cap_usd = 0.4;
    let rig = rig_with("none", cfg).await;
    let first = rig.prov.acquire(&request("job-cap-1"), &ctx()).await.unwrap();
    let err = rig.prov.acquire(&request("job-cap-2"), &ctx()).await.unwrap_err();
    let AcquireError::Gate(gate) = &err else { panic!("{err:?}") };
    assert!(matches!(gate.reason, GateReason::DailyCap { .. }), "{gate:?}");
    rig.prov.release(&first.lease_id, "driver:test").await.unwrap();
    // Settled below its reservation, the first lease frees room for the second.
    let second = rig.prov.acquire(&request("job-cap-2"), &ctx()).await.unwrap();
    rig.prov.release(&second.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn a_failed_list_is_an_error_and_the_reaper_destroys_nothing_on_it() {
    let rig = rig("none").await;
    let lease = rig.prov.acquire(&request("job-list"), &ctx()).await.unwrap();
    rig.sim.set_faults("bad_gateway=1000".parse().unwrap());
    let err = client(&rig.sim).list_instances(None).await.unwrap_err();
    assert!(
        matches!(err, VastError::Server { status: 502, .. } | VastError::Deadline { .. }),
        "{err:?}"
    );
    assert!(rig.prov.reap_once().await.is_err());
    rig.sim.set_faults(Faults::default());
    assert_eq!(rig.sim.ledger().live().len(), 1, "the held lease's instance survived");
    rig.prov.release(&lease.lease_id, "driver:test").await.unwrap();
    assert_no_leak_no_overspend(&rig).await;
}

#[tokio::test]
async fn the_reaper_destroys_only_this_deployments_orphans() {
    let rig = rig("none").await;
    let held = rig.prov.acquire(&request("job-held"), &ctx()).await.unwrap();
    let c = client(&rig.sim);
    let offers = rig.sim.offers();
    let mut made = Vec::new();
    for (i, label) in
        ["drover:test:lorphan1", "drover:other-deployment:l1", "test-owned"].iter().enumerate()
    {
        let req = CreateRequest {
            client_id: "me",
            image: "busybox".into(),
            disk: 10.0,
            label: (*label).into(),
            onstart: None,
            env: Default::default(),
            price: None,
            runtype: "ssh",
            cancel_unavail: true,
            target_state: "running",
        };
        match c.create_instance(offers[20 + i].id, &req).await {
            drover_vast::CreateOutcome::Created { contract_id } => made.push(contract_id),
            other => panic!("{other:?}"),
        }
    }
    let report = rig.prov.reap_once().await.unwrap();
    assert_eq!(report.destroyed, vec![made[0]], "only our own orphan");
    assert!(!rig.sim.instance_exists(made[0]));
    assert!(rig.sim.instance_exists(made[1]) && rig.sim.instance_exists(made[2]));
    assert_eq!(rig.sim.ledger().with_label(&format!("drover:test:{}", held.lease_id)).len(), 1);
    assert!(rig.sim.ledger().with_label(&format!("drover:test:{}", held.lease_id))[0].is_live());
    rig.prov.release(&held.lease_id, "driver:test").await.unwrap();
    for id in &made[1..] {
        c.destroy_instance(*id).await.unwrap();
    }
    let sim = &rig.sim;
    eventually("test instances gone", || async move { sim.ledger().live().is_empty() }).await;
    // The other deployment's instance is not this test's to judge; drop it from the check.
    let ledger = rig.sim.ledger();
    assert!(ledger.live().is_empty());
    for lease in leases(&rig.store).await {
        assert!(!lease.is_open());
        assert!(billed_for(&rig, &lease) <= lease.reserved_usd + 1e-6);
    }
}

#[tokio::test]
async fn killed_mid_rent_the_reaper_on_restart_destroys_the_orphan() {
    let clock = drover_provision::Clock::scaled(SPEED);
    let sim = simulator("slow_create=400", clock).await;
    let (store, dir) = store().await;
    let prov = Provisioner::start(client(&sim), store.clone(), config(), clock).await.unwrap();
    let prov = std::sync::Arc::new(prov);
    let task = {
        let prov = std::sync::Arc::clone(&prov);
        tokio::spawn(async move { prov.acquire(&request("job-crash"), &ctx()).await })
    };
    // The create has been acted on, but its answer is still on the way: kill everything.
    let s = &sim;
    eventually("the instance exists", || async move { s.stats().contracts_created == 1 }).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    drop(prov);
    let open = leases(&store).await;
    assert_eq!(open.len(), 1);
    assert!(open[0].is_open() && open[0].contracts.is_empty(), "the contract id was never learnt");
    assert_eq!(sim.ledger().live().len(), 1, "an instance bills with no owner");

    // Restart on the same store once the killed replica's heartbeat has expired: the
    // start-up reaper takes its lease over and finds the instance by its label.
    sim.set_faults(Faults::default());
    tokio::time::sleep(std::time::Duration::from_secs_f64(config().replica_expiry_s + 0.1)).await;
    let restarted = Provisioner::start(client(&sim), store.clone(), config(), clock).await.unwrap();
    let rig = Rig { sim, store, prov: restarted, clock, dir };
    let lease = &leases(&rig.store).await[0];
    assert_eq!(lease.status_message.as_deref(), Some("reaped: no live owner"));
    assert_eq!(lease.contracts.len(), 1);
    assert_no_leak_no_overspend(&rig).await;
}
