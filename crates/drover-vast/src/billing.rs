//! What the account was billed per instance: `GET /api/v0/charges/`, the listing behind
//! `vastai show invoices-v1 --charges`. The ledger settles a lease at no less than this.
//!
//! Each charge is `{"type": "instance", "source": "<instance id>", "amount": USD, "end": Unix
//! seconds, ...}`; charges of other types (volumes, serverless) are ignored. An instance's
//! charges are summed, and the latest `end` among them says how far the bill has been counted
//! (a charge without a numeric `end` leaves that unknown). Every page is read; a failed page
//! fails the whole call, so a partial bill is never mistaken for the whole of it.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{MAX_PAGES, Mode, malformed, success_json};
use crate::{VastClient, VastError};

/// Charges asked for per page (the API's most).
const CHARGES_PAGE: u32 = 100;

/// What one instance was billed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Billed {
    /// USD billed so far.
    pub usd: f64,
    /// The moment (Unix seconds) up to which the bill is counted: the latest `end` of the
    /// instance's charges. `None` when a charge did not say.
    pub through_s: Option<f64>,
}

impl Billed {
    fn add(&mut self, usd: f64, end: Option<f64>, first: bool) {
        self.usd += usd;
        self.through_s = match (first, self.through_s, end) {
            (true, _, e) => e,
            (false, Some(a), Some(b)) => Some(a.max(b)),
            (false, _, _) => None,
        };
    }
}

impl VastClient {
    /// What each instance that billed between `from_s` and `to_s` (Unix seconds) was billed
    /// so far, by instance id.
    pub async fn instance_charges(
        &self,
        from_s: f64,
        to_s: f64,
    ) -> Result<BTreeMap<u64, Billed>, VastError> {
        const OP: &str = "list charges";
        let filters = json!({"day": {"gte": from_s.floor(), "lte": to_s.ceil()}, "type": {"in": ["instance"]}});
        let mut billed: BTreeMap<u64, Billed> = BTreeMap::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query =
                vec![("select_filters", filters.clone()), ("limit", json!(CHARGES_PAGE))];
            if let Some(t) = &token {
                query.push(("after_token", Value::String(t.clone())));
            }
            let reply = self
                .request(OP, Method::GET, "/api/v0/charges/", &query, None, Mode::Idempotent)
                .await
                .map_err(|f| f.error)?;
            let v = success_json(OP, &reply)?;
            let Some(results) = v.get("results").and_then(Value::as_array) else {
                return Err(malformed(OP, reply.status, "no `results` array"));
            };
            for charge in results {
                if charge.get("type").and_then(Value::as_str) != Some("instance") {
                    continue;
                }
                let id = charge
                    .get("instance_id")
                    .and_then(Value::as_u64)
                    .or_else(|| charge.get("source").and_then(Value::as_str)?.parse().ok());
                let amount = charge.get("amount").and_then(Value::as_f64);
                let end = charge.get("end").and_then(Value::as_f64).filter(|e| e.is_finite());
                match (id, amount) {
                    (Some(id), Some(usd)) if usd.is_finite() && usd >= 0.0 => {
                        let first = !billed.contains_key(&id);
                        billed.entry(id).or_default().add(usd, end, first);
                    }
                    _ => {
                        return Err(malformed(
                            OP,
                            reply.status,
                            "a charge without an instance or an amount",
                        ));
                    }
                }
            }
            match v.get("next_token") {
                None | Some(Value::Null) => return Ok(billed),
                Some(Value::String(t)) if t.is_empty() => return Ok(billed),
                Some(Value::String(t)) => {
                    if token.as_deref() == Some(t.as_str()) {
                        return Err(malformed(OP, reply.status, "next_token repeats"));
                    }
                    token = Some(t.clone());
                }
                Some(_) => return Err(malformed(OP, reply.status, "next_token is not a string")),
            }
        }
        Err(malformed(OP, 200, &format!("more than {MAX_PAGES} pages")))
    }
}
