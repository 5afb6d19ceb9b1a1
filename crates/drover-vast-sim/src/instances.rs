//! The instance routes: show, manage (`state`, `label`) and destroy one instance, the
//! deprecated v0 list (410) and the paginated v1 list, the filter values, log requests and
//! their files, the account, and host price increases.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::search::{order_key, satisfies};
use super::{
    Shared, error, json_object, page_token, parse_id, query_pairs, read_token, reply, text,
};

pub(super) async fn show(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let now = sh.now();
    let row = sh.world().show(id, now);
    reply(200, json!({"instances": row}))
}

pub(super) async fn manage(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let m = match json_object(&body) {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    let running = match m.get("state").and_then(Value::as_str) {
        Some("running") => Some(true),
        Some("stopped") => Some(false),
        Some(_) => {
            return error(400, "invalid_args", "error 400: state must be running or stopped");
        }
        None => None,
    };
    let label = m.get("label").and_then(Value::as_str).map(str::to_owned);
    let now = sh.now();
    if sh.world().manage(id, running, label, now) {
        reply(200, json!({"success": true}))
    } else {
        error(404, "no_such_instance", "error 404/3102: Instance not found")
    }
}

pub(super) async fn destroy(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let now = sh.now();
    match sh.world().destroy(id, now) {
        Some(_) => reply(200, json!({"success": true})),
        None => error(404, "no_such_instance", "error 404/3102: Instance not found"),
    }
}

pub(super) async fn old_list() -> Response {
    error(
        410,
        "deprecated_endpoint",
        "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
    )
}

const LIST_FILTER_COLUMNS: &[&str] = &["actual_status", "gpu_name", "label", "id", "verification"];

pub(super) async fn list_v1(State(sh): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params: Map<String, Value> = query_pairs(query.as_deref().unwrap_or(""))
        .into_iter()
        .map(|(k, v)| {
            let parsed = serde_json::from_str(&v).unwrap_or(Value::String(v));
            (k, parsed)
        })
        .collect();
    let filters = match params.get("select_filters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return error(400, "invalid_request", "Error in query parameters: select_filters");
        }
    };
    if let Some(bad) = filters.keys().find(|k| !LIST_FILTER_COLUMNS.contains(&k.as_str())) {
        return error(
            400,
            "invalid_request",
            &format!("Error in query parameters: {} is not a valid search key", bad.escape_debug()),
        );
    }
    let limit = params.get("limit").and_then(Value::as_u64).unwrap_or(25).clamp(1, 25);
    let offset = match params.get("after_token") {
        None | Some(Value::Null) => 0,
        Some(Value::String(t)) => match read_token(t) {
            Some(o) => o,
            None => return error(400, "invalid_token", "Invalid pagination token"),
        },
        Some(_) => return error(400, "invalid_token", "Invalid pagination token"),
    };
    let now = sh.now();
    let mut rows: Vec<Value> = sh.world().list(now);
    let mut kept = Vec::new();
    for row in rows.drain(..) {
        let mut keep = true;
        for (col, cond) in &filters {
            match satisfies(&row, col, cond) {
                Ok(true) => {}
                Ok(false) => keep = false,
                Err(msg) => {
                    return error(
                        400,
                        "invalid_request",
                        &format!("Error in query parameters: {msg}"),
                    );
                }
            }
        }
        if keep {
            kept.push(row);
        }
    }
    if let Some(Value::Array(order)) = params.get("order_by") {
        let keys: Vec<(String, bool)> = order
            .iter()
            .filter_map(|o| {
                let col = o.get("col")?.as_str()?.to_owned();
                Some((col, o.get("dir").and_then(Value::as_str) == Some("desc")))
            })
            .collect();
        kept.sort_by(|a, b| {
            for (col, desc) in &keys {
                let o = order_key(&a[col.as_str()], &b[col.as_str()]);
                let o = if *desc { o.reverse() } else { o };
                if o.is_ne() {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    let total = kept.len();
    let mut label_counts = Map::new();
    for row in &kept {
        let label = row["label"].as_str().unwrap_or("").to_owned();
        let n = label_counts.get(&label).and_then(Value::as_u64).unwrap_or(0);
        label_counts.insert(label, json!(n + 1));
    }
    let limit = usize::try_from(limit).unwrap_or(25);
    let page: Vec<Value> = kept.into_iter().skip(offset).take(limit).collect();
    let next = (offset + page.len() < total).then(|| page_token(offset + page.len()));
    let cols: Option<Vec<String>> = match params.get("select_cols") {
        Some(Value::Array(c)) => {
            let c: Vec<String> = c.iter().filter_map(Value::as_str).map(str::to_owned).collect();
            (!c.iter().any(|x| x == "*")).then_some(c)
        }
        _ => None,
    };
    let page: Vec<Value> = match cols {
        None => page,
        Some(cols) => page
            .into_iter()
            .map(|row| {
                let mut out = Map::new();
                out.insert("id".into(), row["id"].clone());
                for c in &cols {
                    if let Some(v) = row.get(c.as_str()) {
                        out.insert(c.clone(), v.clone());
                    }
                }
                Value::Object(out)
            })
            .collect(),
    };
    reply(
        200,
        json!({
            "success": true, "instances_found": page.len(), "total_instances": total,
            "label_counts": label_counts, "next_token": next, "instances": page,
        }),
    )
}

pub(super) async fn filters(State(sh): State<Arc<Shared>>) -> Response {
    let now = sh.now();
    let rows = sh.world().list(now);
    let mut combos: Vec<Value> = Vec::new();
    for r in rows {
        let c = json!({
            "actual_status": r["actual_status"], "verification": r["verification"], "gpu_name": r["gpu_name"],
        });
        if !combos.contains(&c) {
            combos.push(c);
        }
    }
    reply(200, json!({"success": true, "filters": combos}))
}

pub(super) async fn request_logs(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let now = sh.now();
    let mut w = sh.world();
    if !w.exists(id, now) {
        return error(404, "no_such_instance", "error 404/3102: Instance not found");
    }
    let name = format!("{id}-{}", w.log_files.len() + 1);
    let text = w.log_text(id);
    w.log_files.insert(name.clone(), (0, text));
    reply(
        200,
        json!({"success": true, "msg": "logs requested", "result_url": format!("{}/_sim/logs/{name}.log", sh.base_url)}),
    )
}

pub(super) async fn log_file(State(sh): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let key = name.trim_end_matches(".log");
    let mut w = sh.world();
    match w.log_files.get_mut(key) {
        // The first fetch finds the upload not finished yet, as on the real service.
        Some((polls, _)) if *polls == 0 => {
            *polls += 1;
            text(404, "not ready")
        }
        Some((_, body)) => {
            let mut resp = Response::new(Body::from(body.clone()));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp
        }
        None => text(404, "no such log"),
    }
}

pub(super) async fn current_user(State(sh): State<Arc<Shared>>) -> Response {
    // The real endpoint returns the key itself; clients must drop it before printing.
    let key = sh.key.as_ref().map(|k| k.expose().to_owned());
    reply(
        200,
        json!({
            "id": 4242, "key_id": 77, "username": "drover-sim", "fullname": "drover simulator",
            "email": "sim@drover.invalid", "balance": 100.0, "credit": 100.0,
            "api_key": key, "ssh_key": Value::Null, "sid": "sim-session",
            "host_agreement_accepted": false, "has_billing": true, "can_pay": true,
        }),
    )
}

pub(super) async fn pending_increases(State(sh): State<Arc<Shared>>) -> Response {
    let now = sh.now();
    let list = sh.world().pending_increases(now);
    reply(200, json!({"success": true, "count": list.len(), "pending_price_increases": list}))
}

async fn answer(sh: &Shared, body: &Bytes, accept: bool) -> Response {
    let id = match json_object(body) {
        Ok(m) => m.get("pending_price_increase_id").and_then(Value::as_u64),
        Err(resp) => return resp,
    };
    let Some(id) = id else {
        return error(400, "invalid_args", "error 400: pending_price_increase_id is required");
    };
    let now = sh.now();
    if sh.world().answer_increase(id, accept, now) {
        reply(200, json!({"success": true}))
    } else {
        error(404, "not_found", "no such pending price increase")
    }
}

pub(super) async fn accept_increase(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    answer(&sh, &body, true).await
}

pub(super) async fn reject_increase(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    answer(&sh, &body, false).await
}
