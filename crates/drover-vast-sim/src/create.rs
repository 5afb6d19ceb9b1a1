//! `PUT /api/v0/asks/{id}/`: renting an offer, with the real API's answers
//! (`{"success":true,"new_contract":N,"instance_api_key":...}`; a gone offer is 404 code 3603
//! or 410 `no_such_ask`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::faults::take;
use super::state::{CreateArgs, CreateResult};
use super::{Shared, error, json_object, parse_id, reply, text};

fn create_args(m: &Map<String, Value>) -> Result<CreateArgs, Response> {
    let bad =
        |msg: &str| error(400, "invalid_args", &format!("error 400/3467: Invalid args: {msg}"));
    let image = match m.get("image") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 1024 => s.clone(),
        _ => return Err(bad("image is required and at most 1024 characters")),
    };
    let disk = match m.get("disk") {
        None | Some(Value::Null) => 10.0,
        Some(v) => match v.as_f64() {
            Some(d) if d.is_finite() && (8.0..=100_000.0).contains(&d) => d,
            _ => return Err(bad("disk must be a number from 8 to 100000")),
        },
    };
    let label = match m.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 256 => Some(s.clone()),
        _ => return Err(bad("label must be a string of at most 256 characters")),
    };
    let env = match m.get("env") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(e)) => {
            let mut out = Vec::new();
            let mut total = 0usize;
            for (k, v) in e {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    _ => return Err(bad("env values must be strings")),
                };
                if v.chars().count() > 256 {
                    return Err(bad("an env value is longer than 256 characters"));
                }
                total += k.len() + v.len();
                out.push((k.clone(), v));
            }
            if total > 32_768 {
                return Err(bad("env is larger than 32768 characters"));
            }
            out
        }
        Some(_) => return Err(bad("invalid env type: env must be a dict")),
    };
    let onstart = match m.get("onstart") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        _ => return Err(bad("onstart must be a string")),
    };
    let args_len = match m.get("args") {
        None | Some(Value::Null) => 0,
        Some(v) => v.to_string().len(),
    };
    if onstart.as_ref().map_or(0, String::len) + args_len > 4096 {
        return Err(bad("onstart and args together are longer than 4096 characters"));
    }
    let price = match m.get("price") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(p) if p.is_finite() && (0.001..=128.0).contains(&p) => Some(p),
            _ => {
                return Err(error(
                    400,
                    "invalid_price",
                    "error 400: price must be from 0.001 to 128",
                ));
            }
        },
    };
    Ok(CreateArgs { image, disk, label, env, onstart, price })
}

pub(super) async fn create(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let offer_id = match parse_id(&id) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let args = match json_object(&body).and_then(|m| create_args(&m)) {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let now = sh.now();
    let result = {
        let mut world = sh.world();
        if take(&mut world.faults.late_create) {
            world.fired("late_create");
            world.create_later(offer_id, args, now);
            return text(504, "<html><body><h1>504 Gateway Time-out</h1></body></html>");
        }
        world.create(offer_id, args, now)
    };
    match result {
        CreateResult::Ok { contract, instance_api_key } => reply(
            200,
            json!({"success": true, "new_contract": contract, "instance_api_key": instance_api_key}),
        ),
        CreateResult::LowBid { contract, min_bid } => reply(
            400,
            json!({
                "success": false, "error": "invalid_price",
                "msg": format!("error 400: your bid is below the current minimum of {min_bid:.4}; the instance was created stopped"),
                "new_contract": contract,
            }),
        ),
        CreateResult::OfferGone { status: 410 } => error(
            410,
            "no_such_ask",
            &format!(
                "error 410/3907: no_such_ask Instance type {offer_id} is no longer available."
            ),
        ),
        CreateResult::OfferGone { .. } => reply(
            404,
            json!({
                "success": false, "error": "invalid_args",
                "msg": format!("error 404/3603: no_such_ask Instance type by id {offer_id} is not available."),
                "ask_id": offer_id,
            }),
        ),
    }
}
