//! What the account was billed per instance: `GET /api/v0/charges/`, the listing behind
//! `vastai show invoices-v1 --charges`. The ledger settles a lease at no less than this.
//!
//! Each charge is `{"type": "instance", "source": "<instance id>", "amount": USD, ...}`;
//! charges of other types (volumes, serverless) are ignored. Every page is read; a failed page
//! fails the whole call, so a partial bill is never mistaken for the whole of it.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};

use super::{MAX_PAGES, Mode, VastClient, VastError, malformed, success_json};

/// Charges asked for per page (the API's most).
const CHARGES_PAGE: u32 = 100;

impl VastClient {
    /// The amount billed so far for each instance that billed between `from_s` and `to_s`
    /// (Unix seconds), by instance id.
    pub async fn instance_charges(
        &self,
        from_s: f64,
        to_s: f64,
    ) -> Result<BTreeMap<u64, f64>, VastError> {
        const OP: &str = "list charges";
        let filters = json!({"day": {"gte": from_s.floor(), "lte": to_s.ceil()}, "type": {"in": ["instance"]}});
        let mut billed: BTreeMap<u64, f64> = BTreeMap::new();
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
                match (id, amount) {
                    (Some(id), Some(usd)) if usd.is_finite() && usd >= 0.0 => {
                        *billed.entry(id).or_default() += usd;
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
