//! Offer search: `POST /api/v0/bundles/` and `PUT /api/v0/search/asks/`, the query language
//! over the [catalogue](super::catalogue) (`eq neq gt gte lt lte in notin`, `order`, `type`,
//! `limit`, `allocated_storage`; GPU names match with `_` or spaces).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{Shared, error, json_object, reply};

/// Whether two JSON values are equal for the query language: numbers as numbers, strings with
/// `_` read as a space (the CLI's GPU-name convention).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        // The CLI sends numbers from its query language as strings: `{"num_gpus": {"eq": "1"}}`.
        (Value::Number(x), Value::String(y)) | (Value::String(y), Value::Number(x)) => {
            y.trim().parse::<f64>().ok() == x.as_f64()
        }
        (Value::String(x), Value::String(y)) => x.replace('_', " ") == y.replace('_', " "),
        (Value::Bool(x), Value::Number(y)) | (Value::Number(y), Value::Bool(x)) => {
            y.as_f64() == Some(f64::from(u8::from(*x)))
        }
        _ => a == b,
    }
}

/// Whether `row` satisfies `cond` on `field`. A field the row lacks does not constrain it.
pub(super) fn satisfies(row: &Value, field: &str, cond: &Value) -> Result<bool, String> {
    let Some(actual) = row.get(field) else { return Ok(true) };
    let ops: Vec<(&str, &Value)> = match cond {
        Value::Object(m) => m.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        other => vec![("eq", other)],
    };
    for (op, want) in ops {
        let num = |v: &Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
        let cmp = |f: fn(f64, f64) -> bool| match (num(actual), num(want)) {
            (Some(a), Some(b)) => f(a, b),
            _ => false,
        };
        let list = || want.as_array().cloned().unwrap_or_else(|| vec![want.clone()]);
        let ok = match op {
            "eq" => same(actual, want),
            "neq" => !same(actual, want),
            "gt" => cmp(|a, b| a > b),
            "gte" => cmp(|a, b| a >= b),
            "lt" => cmp(|a, b| a < b),
            "lte" => cmp(|a, b| a <= b),
            "in" => list().iter().any(|w| same(actual, w)),
            "notin" => !list().iter().any(|w| same(actual, w)),
            other => return Err(format!("unknown operator {}", other.escape_debug())),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn order_key(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

const SEARCH_RESERVED: &[&str] =
    &["order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"];

fn run_search(sh: &Shared, q: &Map<String, Value>) -> Response {
    let storage = q.get("allocated_storage").and_then(Value::as_f64).unwrap_or(5.0);
    if !(storage.is_finite() && storage >= 0.0) {
        return error(400, "invalid_args", "error 400: allocated_storage must be a number >= 0");
    }
    let bid = match q.get("type").and_then(Value::as_str).unwrap_or("on-demand") {
        "bid" | "interruptible" => true,
        "on-demand" | "ondemand" | "reserved" => false,
        _ => {
            return error(
                400,
                "invalid_args",
                "error 400: type must be on-demand, reserved or bid",
            );
        }
    };
    let limit = q.get("limit").and_then(Value::as_u64).unwrap_or(64).clamp(1, 10_000);
    let order: Vec<(String, bool)> = match q.get("order") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| {
                let pair = i.as_array()?;
                let field = pair.first()?.as_str()?.to_owned();
                let desc = pair.get(1).and_then(Value::as_str) == Some("desc");
                Some((field, desc))
            })
            .collect(),
        _ => vec![("score".to_owned(), true)],
    };
    let w = sh.world();
    let mut rows = Vec::new();
    for offer in w.listed_offers() {
        let row = offer.to_json(storage, bid);
        let mut keep = true;
        for (field, cond) in q.iter().filter(|(k, _)| !SEARCH_RESERVED.contains(&k.as_str())) {
            match satisfies(&row, field, cond) {
                Ok(true) => {}
                Ok(false) => {
                    keep = false;
                    break;
                }
                Err(msg) => return error(400, "invalid_args", &format!("error 400: {msg}")),
            }
        }
        if keep {
            rows.push(row);
        }
    }
    drop(w);
    rows.sort_by(|a, b| {
        for (field, desc) in &order {
            let o = order_key(&a[field.as_str()], &b[field.as_str()]);
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        order_key(&a["id"], &b["id"])
    });
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    reply(200, json!({"offers": rows}))
}

pub(super) async fn search(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match json_object(&body) {
        Ok(q) => run_search(&sh, &q),
        Err(resp) => resp,
    }
}

pub(super) async fn search_new(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match json_object(&body) {
        Ok(outer) => match outer.get("q") {
            Some(Value::Object(q)) => run_search(&sh, q),
            _ => error(400, "invalid_args", "error 400: `q` must be an object"),
        },
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_language() {
        let row =
            json!({"gpu_name": "RTX 4090", "num_gpus": 2, "dph_total": 0.5, "verified": true});
        assert!(satisfies(&row, "gpu_name", &json!({"eq": "RTX_4090"})).unwrap());
        assert!(satisfies(&row, "gpu_name", &json!({"in": ["H100 SXM", "RTX 4090"]})).unwrap());
        assert!(!satisfies(&row, "gpu_name", &json!({"notin": ["RTX 4090"]})).unwrap());
        assert!(satisfies(&row, "num_gpus", &json!({"gte": 2, "lt": 3})).unwrap());
        assert!(satisfies(&row, "num_gpus", &json!({"eq": "2", "gte": "1.5"})).unwrap());
        assert!(!satisfies(&row, "dph_total", &json!({"lte": 0.4})).unwrap());
        assert!(satisfies(&row, "verified", &json!({"eq": true})).unwrap());
        assert!(satisfies(&row, "no_such_field", &json!({"eq": 1})).unwrap());
        assert!(satisfies(&row, "num_gpus", &json!({"like": 1})).is_err());
    }
}
