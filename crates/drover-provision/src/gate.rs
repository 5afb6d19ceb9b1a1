//! The cost gate (SR-007): nothing is rented unless the estimate says, with at least the
//! configured confidence (never below 0.95), that the cost stays within the job's remaining
//! budget, and the global daily cap covers the worst case. Everything else fails closed.
//!
//! | Case | Result |
//! |---|---|
//! | `confidence >= floor`, fresh quote, valid inputs, `day_committed + worst <= daily_cap` | allowed |
//! | `confidence < floor` | [`GateReason::LowConfidence`] |
//! | quote older than `max_quote_age_s` (or from the future) | [`GateReason::StaleQuote`] |
//! | any missing, NaN, infinite or negative input | [`GateReason::InvalidInput`] |
//! | the daily cap cannot cover `worst_usd` | [`GateReason::DailyCap`] |
//! | any other estimator error | [`GateReason::Estimator`] |
//!
//! The floor comes from [`GateConfig`]; a configured floor below 0.95 (or above 1, or not a
//! number) is refused when the gate is built, so it can be raised but never lowered.

use drover_proto::config::GateConfig;
use serde_json::{Map, Value, json};

use crate::estimate::{CostModel, Estimate, EstimateError, EstimateInputs, check_input};

/// The lowest confidence floor there can be.
pub const MIN_CONFIDENCE_FLOOR: f64 = 0.95;

/// Why the gate refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateReason {
    /// The confidence is below the floor.
    #[error("confidence {confidence:.4} is below the floor {floor}")]
    LowConfidence {
        /// The estimate's confidence.
        confidence: f64,
        /// The floor.
        floor: f64,
    },
    /// The quote is too old (or its age is negative: a clock problem).
    #[error("the quote is {age_s:.1} s old; the gate accepts at most {max_s} s")]
    StaleQuote {
        /// Its age, seconds.
        age_s: f64,
        /// The limit, seconds.
        max_s: f64,
    },
    /// An input is missing, NaN, infinite or negative.
    #[error("input `{field}` is {problem}")]
    InvalidInput {
        /// The input.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The global daily cap cannot cover the worst case.
    #[error(
        "the daily cap of {cap_usd:.2} USD cannot cover the worst case of {worst_usd:.4} USD ({committed_usd:.4} USD already committed today)"
    )]
    DailyCap {
        /// Worst case of this rental.
        worst_usd: f64,
        /// Already committed today (open reservations and settled costs).
        committed_usd: f64,
        /// The cap.
        cap_usd: f64,
    },
    /// The estimator failed.
    #[error("the estimator failed: {0}")]
    Estimator(EstimateError),
}

/// A refused rental: the reason, and the estimate when there was one. Nothing was rented.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cost gate rejected the rental: {reason}")]
pub struct CostGateError {
    /// Why.
    pub reason: GateReason,
    /// The estimate, if one could be made.
    pub estimate: Option<Box<Estimate>>,
}

impl CostGateError {
    /// A stable short name of the reason, for audit events and wire details.
    pub fn reason_code(&self) -> &'static str {
        match self.reason {
            GateReason::LowConfidence { .. } => "low_confidence",
            GateReason::StaleQuote { .. } => "stale_quote",
            GateReason::InvalidInput { .. } => "invalid_input",
            GateReason::DailyCap { .. } => "daily_cap",
            GateReason::Estimator(_) => "estimator_error",
        }
    }

    /// The `details` of a `cost_gate_rejected` wire error (fewer than 32 fields, numbers only
    /// where numbers exist; NaN and infinities are written as `null`).
    pub fn details(&self) -> Map<String, Value> {
        let mut d = Map::new();
        d.insert("reason".into(), json!(self.reason_code()));
        d.insert("explanation".into(), json!(self.reason.to_string()));
        if let Some(e) = &self.estimate {
            for (k, v) in [
                ("expected_usd", e.expected_usd),
                ("p95_usd", e.p95_usd),
                ("worst_usd", e.worst_usd),
                ("confidence", e.confidence),
                ("remaining_budget_usd", e.inputs.remaining_budget_usd),
            ] {
                d.insert(k.into(), finite(v));
            }
        }
        d
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

/// A gate configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("gate configuration: {0}")]
pub struct GateConfigError(&'static str);

/// The gate, built from a validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    floor: f64,
    max_quote_age_s: f64,
    daily_cap_usd: f64,
    model: CostModel,
}

impl Gate {
    /// Builds a gate. A floor below [`MIN_CONFIDENCE_FLOOR`] is an error, never a silent clamp.
    pub fn new(config: &GateConfig, model: CostModel) -> Result<Self, GateConfigError> {
        let floor = config.confidence_floor;
        if !(floor.is_finite() && (MIN_CONFIDENCE_FLOOR..=1.0).contains(&floor)) {
            return Err(GateConfigError("confidence_floor must be from 0.95 to 1"));
        }
        if config.max_quote_age_s == 0 {
            return Err(GateConfigError("max_quote_age_s must be at least 1"));
        }
        let cap = config.daily_cap_usd;
        if !(cap.is_finite() && (0.0..=drover_proto::limits::MAX_USD).contains(&cap)) {
            return Err(GateConfigError("daily_cap_usd must be a finite amount >= 0"));
        }
        Ok(Self {
            floor,
            max_quote_age_s: f64::from(config.max_quote_age_s),
            daily_cap_usd: cap,
            model,
        })
    }

    /// The confidence floor.
    pub fn floor(&self) -> f64 {
        self.floor
    }

    /// The global daily cap, USD.
    pub fn daily_cap_usd(&self) -> f64 {
        self.daily_cap_usd
    }

    /// The cost model.
    pub fn model(&self) -> &CostModel {
        &self.model
    }

    /// Decides on one rental. `day_committed_usd` is what today's leases have reserved or
    /// settled so far.
    pub fn decide(
        &self,
        inputs: &EstimateInputs,
        day_committed_usd: f64,
    ) -> Result<Estimate, CostGateError> {
        let reject = |reason, estimate: Option<Estimate>| CostGateError {
            reason,
            estimate: estimate.map(Box::new),
        };
        let committed = check_input("day_committed_usd", Some(day_committed_usd))
            .map_err(|e| reject(input_reason(e), None))?;
        // The age is checked for sign and type first, then for freshness.
        let age = check_input("quote_age_s", Some(inputs.quote_age_s))
            .map_err(|e| reject(input_reason(e), None))?;
        if age > self.max_quote_age_s {
            return Err(reject(
                GateReason::StaleQuote { age_s: age, max_s: self.max_quote_age_s },
                None,
            ));
        }
        let estimate = self.model.estimate(inputs).map_err(|e| reject(input_reason(e), None))?;
        // NaN compares as neither: it is rejected like a low confidence.
        if estimate.confidence.partial_cmp(&self.floor).is_none_or(std::cmp::Ordering::is_lt) {
            let confidence = estimate.confidence;
            return Err(reject(
                GateReason::LowConfidence { confidence, floor: self.floor },
                Some(estimate),
            ));
        }
        if committed + estimate.worst_usd > self.daily_cap_usd {
            return Err(reject(
                GateReason::DailyCap {
                    worst_usd: estimate.worst_usd,
                    committed_usd: committed,
                    cap_usd: self.daily_cap_usd,
                },
                Some(estimate),
            ));
        }
        Ok(estimate)
    }
}

fn input_reason(e: EstimateError) -> GateReason {
    match e {
        EstimateError::Input { field, problem } => GateReason::InvalidInput { field, problem },
        other => GateReason::Estimator(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::normal_cdf;

    fn inputs(budget: f64) -> EstimateInputs {
        crate::estimate::tests::example(budget)
    }

    fn gate() -> Gate {
        Gate::new(&GateConfig::default(), CostModel::default()).unwrap()
    }

    /// The budget at which the confidence is exactly `p`: expected + sd * Φ⁻¹(p), found by
    /// bisection on the estimator itself so the test does not trust a second formula.
    fn budget_for(p: f64) -> f64 {
        let m = CostModel::default();
        let (mut lo, mut hi) = (0.0, 0.6);
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if m.estimate(&inputs(mid)).unwrap().confidence < p { lo = mid } else { hi = mid }
        }
        hi
    }

    #[test]
    fn boundary() {
        let g = gate();
        let at = budget_for(0.95);
        let allowed = g.decide(&inputs(at), 0.0).unwrap();
        assert!(
            allowed.confidence >= 0.95 && allowed.confidence < 0.9501,
            "{}",
            allowed.confidence
        );
        let below = budget_for(0.9499);
        let err = g.decide(&inputs(below), 0.0).unwrap_err();
        match err.reason {
            GateReason::LowConfidence { confidence, floor } => {
                assert!((0.9498..0.95).contains(&confidence), "{confidence}");
                assert!((floor - 0.95).abs() < f64::EPSILON);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.estimate.is_some());
        assert_eq!(err.details()["reason"], "low_confidence");
        // Sanity: the normal quantile is where the docs say.
        assert!((normal_cdf(1.6448536) - 0.95).abs() < 1e-6);
    }

    #[test]
    fn floor_can_be_raised_never_lowered() {
        for bad in [0.94, 0.9499, -1.0, 1.01, f64::NAN, f64::INFINITY] {
            let cfg = GateConfig { confidence_floor: bad, ..GateConfig::default() };
            assert!(Gate::new(&cfg, CostModel::default()).is_err(), "{bad}");
        }
        let raised = GateConfig { confidence_floor: 0.99, ..GateConfig::default() };
        let g = Gate::new(&raised, CostModel::default()).unwrap();
        let at95 = budget_for(0.95);
        assert!(matches!(
            g.decide(&inputs(at95), 0.0).unwrap_err().reason,
            GateReason::LowConfidence { .. }
        ));
        assert!(g.decide(&inputs(budget_for(0.99)), 0.0).is_ok());
    }

    #[test]
    fn stale_quote() {
        let g = gate();
        let mut i = inputs(10.0);
        i.quote_age_s = 60.0;
        assert!(g.decide(&i, 0.0).is_ok(), "the limit itself is fresh");
        i.quote_age_s = 60.5;
        assert!(matches!(g.decide(&i, 0.0).unwrap_err().reason, GateReason::StaleQuote { .. }));
        i.quote_age_s = -1.0;
        assert!(matches!(
            g.decide(&i, 0.0).unwrap_err().reason,
            GateReason::InvalidInput { field: "quote_age_s", problem: "negative" }
        ));
    }

    #[test]
    fn every_invalid_input_is_rejected() {
        let g = gate();
        type Setter = fn(&mut EstimateInputs, f64);
        let fields: &[(&str, Setter)] = &[
            ("compute_usd_per_hour", |i, v| i.compute_usd_per_hour = Some(v)),
            ("storage_usd_per_gb_month", |i, v| i.storage_usd_per_gb_month = Some(v)),
            ("inet_up_usd_per_gb", |i, v| i.inet_up_usd_per_gb = Some(v)),
            ("inet_down_usd_per_gb", |i, v| i.inet_down_usd_per_gb = Some(v)),
            ("disk_gb", |i, v| i.disk_gb = v),
            ("bandwidth_gb", |i, v| i.bandwidth_gb = v),
            ("max_runtime_s", |i, v| i.max_runtime_s = v),
            ("quote_age_s", |i, v| i.quote_age_s = v),
            ("remaining_budget_usd", |i, v| i.remaining_budget_usd = v),
        ];
        for (field, set) in fields {
            for (bad, problem) in [
                (f64::NAN, "NaN"),
                (f64::INFINITY, "infinite"),
                (f64::NEG_INFINITY, "infinite"),
                (-0.5, "negative"),
            ] {
                let mut i = inputs(10.0);
                set(&mut i, bad);
                let err = g.decide(&i, 0.0).unwrap_err();
                // -inf is both infinite and negative; infinite is reported first.
                assert_eq!(
                    err.reason,
                    GateReason::InvalidInput { field, problem },
                    "{field} = {bad}"
                );
                assert_eq!(err.reason_code(), "invalid_input");
            }
        }
        type Clear = fn(&mut EstimateInputs);
        let missing: &[(&str, Clear)] = &[
            ("compute_usd_per_hour", |i| i.compute_usd_per_hour = None),
            ("storage_usd_per_gb_month", |i| i.storage_usd_per_gb_month = None),
            ("inet_up_usd_per_gb", |i| i.inet_up_usd_per_gb = None),
            ("inet_down_usd_per_gb", |i| i.inet_down_usd_per_gb = None),
        ];
        for (field, clear) in missing {
            let mut i = inputs(10.0);
            clear(&mut i);
            assert_eq!(
                g.decide(&i, 0.0).unwrap_err().reason,
                GateReason::InvalidInput { field, problem: "missing" }
            );
        }
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            assert!(matches!(
                g.decide(&inputs(10.0), bad).unwrap_err().reason,
                GateReason::InvalidInput { field: "day_committed_usd", .. }
            ));
        }
    }

    #[test]
    fn daily_cap_must_cover_the_worst_case() {
        let cfg = GateConfig { daily_cap_usd: 1.0, ..GateConfig::default() };
        let g = Gate::new(&cfg, CostModel::default()).unwrap();
        let worst = CostModel::default().estimate(&inputs(10.0)).unwrap().worst_usd;
        assert!(g.decide(&inputs(10.0), 1.0 - worst).is_ok());
        let err = g.decide(&inputs(10.0), 1.0 - worst + 0.001).unwrap_err();
        assert!(matches!(err.reason, GateReason::DailyCap { .. }));
        assert_eq!(err.details()["reason"], "daily_cap");
    }

    #[test]
    fn estimator_errors_are_rejections() {
        let g = Gate::new(
            &GateConfig::default(),
            CostModel { max_attempts: 0, ..CostModel::default() },
        )
        .unwrap();
        assert!(matches!(
            g.decide(&inputs(10.0), 0.0).unwrap_err().reason,
            GateReason::Estimator(_)
        ));
        let mut huge = inputs(10.0);
        huge.compute_usd_per_hour = Some(1e308);
        assert!(matches!(
            gate().decide(&huge, 0.0).unwrap_err().reason,
            GateReason::Estimator(EstimateError::OutOfRange(_))
        ));
    }
}
