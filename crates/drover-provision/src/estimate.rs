//! The cost estimator: `{expected_usd, p95_usd, worst_usd, confidence, inputs}` for a lease
//! request against a fresh quote. Deterministic: the same inputs give the same numbers, bit for
//! bit; there is no sampling.
//!
//! # What a lease can cost
//!
//! A lease bills `rate` (USD per hour: the compute price, or the bid for an interruptible
//! lease, plus storage `disk_gb * storage_cost / 720`) for as long as any of its instances
//! exists, plus bandwidth `bandwidth_gb * inet_cost` (the dearer of upload and download, since
//! Vast bills bandwidth outside `dph_total`). How long is bounded by the provisioner, not
//! hoped for:
//!
//! - **Provisioning** `P`: the instance must reach `running` within `provision_max_s` of the
//!   grant, across every failover attempt, or the lease fails.
//! - **Runtime** `R`: the driver's `max_runtime_s`. The watchdog destroys the instance at
//!   `min(grant + provision_max_s + R, running_at + R)`; the estimate assumes the whole cap is
//!   used.
//! - **Teardown** `D`: from the destroy call to billing's end, bounded by the confirmed-destroy
//!   deadline `teardown_max_s`, once per attempt (at most `max_attempts`; attempts never
//!   overlap, because the next create waits for the previous destroy to be confirmed).
//! - **Price**: the instance's `dph_total` is checked against the quote once it runs; more than
//!   `rate_tolerance` above it and the instance is destroyed. A host price increase during the
//!   lease is accepted only if the reservation still covers it, otherwise the lease ends.
//!
//! # The model
//!
//! What is uncertain is modelled as independent terms with a mean and a standard deviation,
//! summed, and read through a normal distribution:
//!
//! | Term | Mean | Standard deviation | Bound (worst case) |
//! |---|---|---|---|
//! | billed time `T` (s) | `P̄ + R + D̄` | `sqrt(σP² + σD²)` | `P_max + R + K·D_max` |
//! | price drift since the quote | 0 | `σq = min(τ, s·sqrt(age_s / 60))` | `τ` |
//! | bandwidth overrun | `ε̄` | `σε` | `ε_max` |
//!
//! with `s` = `drift_per_sqrt_minute` (1% on-demand, 5% for a bid, whose market moves faster),
//! `τ` = `rate_tolerance`, `K` = `max_attempts`. Then, with `W = bandwidth_gb * inet_cost`:
//!
//! ```text
//! expected = rate * T̄ / 3600 + W * (1 + ε̄)
//! σ        = sqrt( (rate * σT / 3600)² + (rate * T̄ / 3600 * σq)² + (W * σε)² )
//! worst    = rate * (1 + τ) * T_max / 3600 + W * (1 + ε_max)
//! p95      = min(worst, expected + 1.6449 * σ)
//! confidence(budget) = 1                              if budget >= worst
//!                      Φ((budget - expected) / σ)      otherwise (σ > 0)
//!                      1 if budget >= expected else 0  when σ = 0
//! ```
//!
//! `Φ` is the standard normal distribution function, computed with a fixed rational
//! approximation of `erfc` (Numerical Recipes' `erfcc`, absolute error below 1.2e-7).
//!
//! Defaults ([`CostModel::default`]): `P̄` 90 s, `σP` 310 s, `P_max` 600 s; `D̄` 20 s, `σD` 30 s,
//! `D_max` 300 s; `K` 3; `τ` 2%; `ε̄` 10%, `σε` 25%, `ε_max` 100%.
//!
//! # The provisioning tail (calibration)
//!
//! `σP` is set so that the provisioning window is the 95th percentile of provisioning time:
//! `σP = (P_max - P̄) / 1.6449 = (600 - 90) / 1.6449 ≈ 310 s`. This is an assumption, not a
//! measurement: there is no Vast.ai provisioning telemetry in this repository. Issue 15's fault
//! matrix saw instances stay in `loading` until the window closed (hosts with slow or stuck
//! image pulls), so the model budgets for one rental in twenty using the whole window. With the
//! former `σP` of 60 s the window sat 8.5σ out, a stuck load counted as impossible, and a job
//! gated at its 95% bound was billed twice its budget. Whatever the tail, the budget itself
//! is enforced while a lease loads and runs by the provisioner's ceiling
//! ([`crate::provisioner::money`]).
//!
//! # Worked examples
//!
//! One RTX 4090 offer: `dph_base` 0.35 $/h, `storage_cost` 0.10 $/GB/month, `inet_up_cost`
//! 0.005 and `inet_down_cost` 0.004 $/GB. Request: 20 GiB of disk (21.47 GB), one hour of
//! runtime, 10 GiB (10.74 GB) of declared traffic, on-demand, quote 30 s old.
//!
//! - `rate` = 0.35 + 21.47 × 0.10 / 720 = 0.352983 $/h; `W` = 10.74 × 0.005 = 0.053687 $.
//! - `T̄` = 90 + 3600 + 20 = 3710 s; `σT` = sqrt(310² + 30²) = 311.45 s; `T_max` = 600 + 3600 +
//!   3 × 300 = 5100 s; `σq` = min(0.02, 0.01 × sqrt(0.5)) = 0.00707.
//! - **expected** = 0.352983 × 3710 / 3600 + 0.053687 × 1.1 = **0.422824 $**
//! - σ = sqrt(0.030538² + 0.002572² + 0.013422²) = 0.033456 $ (provisioning and teardown
//!   time, price drift, bandwidth)
//! - **worst** = 0.352983 × 1.02 × 5100 / 3600 + 0.053687 × 2 = **0.617434 $**
//! - **p95** = 0.422824 + 1.6449 × 0.033456 = **0.477854 $**
//! - Remaining budget 0.48 $: z = 1.709, **confidence 0.9563**: allowed (floor 0.95).
//! - Remaining budget 0.47 $: z = 1.410, **confidence 0.9207**: `CostGateError`.
//! - Remaining budget 1.00 $ (at least `worst`): **confidence 1**.
//!
//! The unit test `documented_examples` recomputes these numbers, so the docs cannot drift.

use drover_proto::Pricing;
use serde::Serialize;

/// Bytes in a GiB over bytes in a GB: requests speak GiB, Vast.ai prices GB.
pub const GB_PER_GIB: f64 = 1.073_741_824;

/// The one-sided 95% quantile of the standard normal distribution.
const Z95: f64 = 1.644_853_626_951_472_2;

/// The parameters of the cost model. Every duration is in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CostModel {
    /// Expected time from grant to `running`. Default 90.
    pub provision_expected_s: f64,
    /// Its standard deviation. Default 310 (see the calibration in the module docs).
    pub provision_sd_s: f64,
    /// The provisioning window: no instance that is not running by then is kept. Default 600.
    pub provision_max_s: f64,
    /// Expected time from destroy to billing's end. Default 20.
    pub teardown_expected_s: f64,
    /// Its standard deviation. Default 30.
    pub teardown_sd_s: f64,
    /// The confirmed-destroy deadline. Default 300.
    pub teardown_max_s: f64,
    /// Most offers tried for one lease (failover). Default 3.
    pub max_attempts: u32,
    /// Most a running instance's price may exceed the quote before it is destroyed. Default 0.02.
    pub rate_tolerance: f64,
    /// Price drift per square-root minute of quote age, on-demand. Default 0.01.
    pub drift_on_demand: f64,
    /// Price drift per square-root minute of quote age, interruptible. Default 0.05.
    pub drift_interruptible: f64,
    /// Mean bandwidth overrun over the declared amount. Default 0.10.
    pub bandwidth_overrun_mean: f64,
    /// Its standard deviation. Default 0.25.
    pub bandwidth_overrun_sd: f64,
    /// Largest bandwidth overrun budgeted for. Default 1.0 (twice the declared traffic).
    pub bandwidth_overrun_max: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            provision_expected_s: 90.0,
            provision_sd_s: 310.0,
            provision_max_s: 600.0,
            teardown_expected_s: 20.0,
            teardown_sd_s: 30.0,
            teardown_max_s: 300.0,
            max_attempts: 3,
            rate_tolerance: 0.02,
            drift_on_demand: 0.01,
            drift_interruptible: 0.05,
            bandwidth_overrun_mean: 0.10,
            bandwidth_overrun_sd: 0.25,
            bandwidth_overrun_max: 1.0,
        }
    }
}

/// Everything an estimate is computed from. Prices are `Option` because a quote can lack them;
/// a missing value is a gate rejection, never a default.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EstimateInputs {
    /// The offer the estimate prices (the dearest of the failover candidates).
    pub offer_id: u64,
    /// On-demand or interruptible.
    #[serde(serialize_with = "pricing_str")]
    pub pricing: Pricing,
    /// Compute price, USD per hour: `dph_base`, or the bid.
    pub compute_usd_per_hour: Option<f64>,
    /// Storage price, USD per GB per month.
    pub storage_usd_per_gb_month: Option<f64>,
    /// Upload price, USD per GB.
    pub inet_up_usd_per_gb: Option<f64>,
    /// Download price, USD per GB.
    pub inet_down_usd_per_gb: Option<f64>,
    /// Disk, GB.
    pub disk_gb: f64,
    /// Declared traffic, GB.
    pub bandwidth_gb: f64,
    /// The hard runtime cap, seconds.
    pub max_runtime_s: f64,
    /// Age of the quote when estimated, seconds.
    pub quote_age_s: f64,
    /// What is left of the job's budget, USD.
    pub remaining_budget_usd: f64,
}

fn pricing_str<S: serde::Serializer>(p: &Pricing, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match p {
        Pricing::OnDemand => "on_demand",
        Pricing::Interruptible => "interruptible",
    })
}

/// An estimate and what it was computed from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// The cost if everything takes its expected time.
    pub expected_usd: f64,
    /// The cost exceeded with probability 5%.
    pub p95_usd: f64,
    /// The cost if every bound is reached.
    pub worst_usd: f64,
    /// The probability that the cost stays within `inputs.remaining_budget_usd`.
    pub confidence: f64,
    /// The standard deviation of the cost, USD.
    pub sd_usd: f64,
    /// The rate used, USD per hour (compute plus storage).
    pub rate_usd_per_hour: f64,
    /// The inputs.
    pub inputs: EstimateInputs,
}

impl Estimate {
    /// The wire form carried by a `lease` and by `cost_gate_rejected` details.
    pub fn to_proto(&self) -> drover_proto::CostEstimate {
        drover_proto::CostEstimate {
            expected_usd: self.expected_usd,
            p95_usd: self.p95_usd,
            worst_usd: self.worst_usd,
            confidence: self.confidence,
        }
    }
}

/// Why no estimate could be made. The gate turns every one of these into a rejection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EstimateError {
    /// An input is missing, NaN, infinite or negative.
    #[error("input `{field}` is {problem}")]
    Input {
        /// The input.
        field: &'static str,
        /// `missing`, `NaN`, `infinite` or `negative`.
        problem: &'static str,
    },
    /// A model parameter is not a finite non-negative number.
    #[error("model parameter `{0}` is invalid")]
    Model(&'static str),
    /// A result is not finite or is beyond the largest amount handled.
    #[error("the estimate `{0}` is out of range")]
    OutOfRange(&'static str),
}

/// Checks one number: present, finite, not negative.
pub fn check_input(field: &'static str, value: Option<f64>) -> Result<f64, EstimateError> {
    let v = value.ok_or(EstimateError::Input { field, problem: "missing" })?;
    if v.is_nan() {
        return Err(EstimateError::Input { field, problem: "NaN" });
    }
    if v.is_infinite() {
        return Err(EstimateError::Input { field, problem: "infinite" });
    }
    if v < 0.0 {
        return Err(EstimateError::Input { field, problem: "negative" });
    }
    Ok(v)
}

impl CostModel {
    fn check(&self) -> Result<(), EstimateError> {
        let params = [
            ("provision_expected_s", self.provision_expected_s),
            ("provision_sd_s", self.provision_sd_s),
            ("provision_max_s", self.provision_max_s),
            ("teardown_expected_s", self.teardown_expected_s),
            ("teardown_sd_s", self.teardown_sd_s),
            ("teardown_max_s", self.teardown_max_s),
            ("rate_tolerance", self.rate_tolerance),
            ("drift_on_demand", self.drift_on_demand),
            ("drift_interruptible", self.drift_interruptible),
            ("bandwidth_overrun_mean", self.bandwidth_overrun_mean),
            ("bandwidth_overrun_sd", self.bandwidth_overrun_sd),
            ("bandwidth_overrun_max", self.bandwidth_overrun_max),
        ];
        for (name, v) in params {
            if !(v.is_finite() && v >= 0.0) {
                return Err(EstimateError::Model(name));
            }
        }
        if self.max_attempts == 0 {
            return Err(EstimateError::Model("max_attempts"));
        }
        Ok(())
    }

    /// Estimates a lease. Every input is checked first; see the module docs for the model.
    pub fn estimate(&self, inputs: &EstimateInputs) -> Result<Estimate, EstimateError> {
        self.check()?;
        let compute = check_input("compute_usd_per_hour", inputs.compute_usd_per_hour)?;
        let storage = check_input("storage_usd_per_gb_month", inputs.storage_usd_per_gb_month)?;
        let up = check_input("inet_up_usd_per_gb", inputs.inet_up_usd_per_gb)?;
        let down = check_input("inet_down_usd_per_gb", inputs.inet_down_usd_per_gb)?;
        let disk = check_input("disk_gb", Some(inputs.disk_gb))?;
        let traffic = check_input("bandwidth_gb", Some(inputs.bandwidth_gb))?;
        let runtime = check_input("max_runtime_s", Some(inputs.max_runtime_s))?;
        let age = check_input("quote_age_s", Some(inputs.quote_age_s))?;
        let budget = check_input("remaining_budget_usd", Some(inputs.remaining_budget_usd))?;

        let rate = compute + disk * storage / 720.0;
        let w = traffic * up.max(down);
        let k = f64::from(self.max_attempts);
        let t_mean = self.provision_expected_s + runtime + self.teardown_expected_s;
        let t_sd = self.provision_sd_s.hypot(self.teardown_sd_s);
        let t_max = self.provision_max_s + runtime + k * self.teardown_max_s;
        let drift = match inputs.pricing {
            Pricing::OnDemand => self.drift_on_demand,
            Pricing::Interruptible => self.drift_interruptible,
        };
        let sd_q = self.rate_tolerance.min(drift * (age / 60.0).sqrt());

        let time_cost = rate * t_mean / 3600.0;
        let expected = time_cost + w * (1.0 + self.bandwidth_overrun_mean);
        let sd =
            (rate * t_sd / 3600.0).hypot(time_cost * sd_q).hypot(w * self.bandwidth_overrun_sd);
        let worst = rate * (1.0 + self.rate_tolerance) * t_max / 3600.0
            + w * (1.0 + self.bandwidth_overrun_max);
        let p95 = (expected + Z95 * sd).min(worst);
        let confidence = if budget >= worst {
            1.0
        } else if sd > 0.0 {
            normal_cdf((budget - expected) / sd)
        } else if budget >= expected {
            1.0
        } else {
            0.0
        };
        for (name, v) in
            [("expected_usd", expected), ("p95_usd", p95), ("worst_usd", worst), ("sd_usd", sd)]
        {
            if !(v.is_finite() && (0.0..=drover_proto::limits::MAX_USD).contains(&v)) {
                return Err(EstimateError::OutOfRange(name));
            }
        }
        if !(0.0..=1.0).contains(&confidence) {
            return Err(EstimateError::OutOfRange("confidence"));
        }
        Ok(Estimate {
            expected_usd: expected,
            p95_usd: p95,
            worst_usd: worst,
            confidence,
            sd_usd: sd,
            rate_usd_per_hour: rate,
            inputs: inputs.clone(),
        })
    }
}

/// The standard normal distribution function, `Φ(z) = erfc(-z / √2) / 2`.
pub fn normal_cdf(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' `erfcc`; |error| < 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The inputs of the module docs' worked example.
    pub(crate) fn example(budget: f64) -> EstimateInputs {
        EstimateInputs {
            offer_id: 1,
            pricing: Pricing::OnDemand,
            compute_usd_per_hour: Some(0.35),
            storage_usd_per_gb_month: Some(0.10),
            inet_up_usd_per_gb: Some(0.005),
            inet_down_usd_per_gb: Some(0.004),
            disk_gb: 20.0 * GB_PER_GIB,
            bandwidth_gb: 10.0 * GB_PER_GIB,
            max_runtime_s: 3600.0,
            quote_age_s: 30.0,
            remaining_budget_usd: budget,
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn documented_examples() {
        let m = CostModel::default();
        let e = m.estimate(&example(0.48)).unwrap();
        assert!(close(e.rate_usd_per_hour, 0.352983, 5e-7), "{}", e.rate_usd_per_hour);
        assert!(close(e.expected_usd, 0.422824, 5e-7), "{}", e.expected_usd);
        assert!(close(e.sd_usd, 0.033456, 5e-7), "{}", e.sd_usd);
        assert!(close(e.worst_usd, 0.617434, 5e-7), "{}", e.worst_usd);
        assert!(close(e.p95_usd, 0.477854, 5e-7), "{}", e.p95_usd);
        assert!(close(e.confidence, 0.9563, 5e-5), "{}", e.confidence);
        let low = m.estimate(&example(0.47)).unwrap();
        assert!(close(low.confidence, 0.9207, 5e-5), "{}", low.confidence);
        let rich = m.estimate(&example(1.0)).unwrap();
        assert!((rich.confidence - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn deterministic_and_monotone() {
        let m = CostModel::default();
        assert_eq!(m.estimate(&example(0.43)), m.estimate(&example(0.43)));
        let mut last = 0.0;
        for cents in 30..70 {
            let c = m.estimate(&example(f64::from(cents) / 100.0)).unwrap().confidence;
            assert!(c >= last, "confidence falls as the budget grows");
            last = c;
        }
        // An older quote is less certain.
        let mut old = example(0.45);
        old.quote_age_s = 3000.0;
        assert!(
            m.estimate(&old).unwrap().confidence < m.estimate(&example(0.45)).unwrap().confidence
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let m = CostModel::default();
        let mut i = example(1.0);
        i.storage_usd_per_gb_month = None;
        assert_eq!(
            m.estimate(&i),
            Err(EstimateError::Input { field: "storage_usd_per_gb_month", problem: "missing" })
        );
        let mut i = example(1.0);
        i.compute_usd_per_hour = Some(f64::NAN);
        assert!(matches!(m.estimate(&i), Err(EstimateError::Input { problem: "NaN", .. })));
        let mut i = example(1.0);
        i.bandwidth_gb = f64::INFINITY;
        assert!(matches!(m.estimate(&i), Err(EstimateError::Input { problem: "infinite", .. })));
        let mut i = example(1.0);
        i.inet_up_usd_per_gb = Some(-0.1);
        assert!(matches!(m.estimate(&i), Err(EstimateError::Input { problem: "negative", .. })));
        let mut i = example(1.0);
        i.compute_usd_per_hour = Some(1e300);
        assert!(matches!(m.estimate(&i), Err(EstimateError::OutOfRange(_))));
        let bad_model = CostModel { teardown_max_s: f64::NAN, ..CostModel::default() };
        assert!(matches!(bad_model.estimate(&example(1.0)), Err(EstimateError::Model(_))));
    }

    #[test]
    fn normal_distribution() {
        assert!(close(normal_cdf(0.0), 0.5, 1e-7));
        assert!(close(normal_cdf(1.6448536), 0.95, 1e-6));
        assert!(close(normal_cdf(-1.959964), 0.025, 1e-6));
        assert!(normal_cdf(40.0) <= 1.0 && normal_cdf(-40.0) >= 0.0);
    }
}
