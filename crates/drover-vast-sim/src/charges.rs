//! `GET /api/v0/charges/`: what the simulated account was billed, per instance, as the real
//! API's charges listing shapes it (`vastai show invoices-v1 --charges`): `results` of
//! `{"type": "instance", "source", "amount", "description", "start", "end"}`, `count`,
//! `total`, `next_token`. Filters: `select_filters` `{"day": {"gte": S, "lte": S}}` in Unix
//! seconds (default: the last 7 days), `limit` (default 20, at most 100), `after_token`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{Shared, error, page_token, query_pairs, read_token, reply};

/// Most charges in one page.
const MAX_LIMIT: usize = 100;

pub(super) async fn charges(State(sh): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params: Map<String, Value> = query_pairs(query.as_deref().unwrap_or(""))
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::String(v))))
        .collect();
    let now = sh.now();
    let day = params.get("select_filters").and_then(|f| f.get("day"));
    let bound = |name: &str, default: f64| -> Result<f64, Response> {
        match day.and_then(|d| d.get(name)) {
            None => Ok(default),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                error(400, "invalid_request", "Error in query parameters: select_filters.day")
            }),
        }
    };
    let (from, to) = match (bound("gte", now - 7.0 * 86_400.0), bound("lte", now)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let limit = match params.get("limit") {
        None => 20,
        Some(v) => match v.as_u64().and_then(|l| usize::try_from(l).ok()) {
            Some(l) if (1..=MAX_LIMIT).contains(&l) => l,
            _ => return error(400, "invalid_request", "limit must be from 1 to 100"),
        },
    };
    let offset = match params.get("after_token").and_then(Value::as_str) {
        None => 0,
        Some(t) => match read_token(t) {
            Some(o) => o,
            None => return error(400, "invalid_token", "Invalid pagination token"),
        },
    };
    let all = sh.world().charges(from, to, now);
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    let next = offset + page.len();
    let next_token = if next < total { Value::from(page_token(next)) } else { Value::Null };
    reply(
        200,
        json!({"results": page, "count": page.len(), "total": total, "next_token": next_token}),
    )
}
