//! Request validation (SR-002): every body and query string is checked against its schema
//! before any handler logic runs.
//!
//! ```text
//! Content-Type application/json? -- no --> 415
//! Content-Length / bytes read over the limit? -- yes --> 413 (the rest is not read)
//! strict JSON (UTF-8, no duplicate keys, nesting <= 128)? -- no --> 400, violation at ""
//! schema (drover-proto's, compiled once)? -- no --> 400, every violation with its pointers
//! typed value built from the parsed tree
//! ```
//!
//! The schemas are [`drover_proto::api::API_SCHEMAS`], compiled once per process
//! ([`ApiSchemas::shared`]); `GET /v1/openapi.json` serves the very same values. Violations are
//! produced by `drover-transport`'s [`SchemaChecker`], so the API and the driver protocol
//! report errors the same way: JSON pointers, offending values masked, at most 64.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use bytes::Bytes;
use drover_proto::Violation;
use drover_proto::api::{API_SCHEMAS, ApiErrorCode, EstimateRequest, JobListQuery, JobSpec};
use drover_schema::SchemaChecker;
use drover_schema::json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::state::ApiState;

/// One compiled API schema.
#[derive(Debug)]
pub struct CompiledSchema {
    /// Its OpenAPI component name.
    pub name: &'static str,
    /// The schema, exactly as validation uses it and OpenAPI serves it.
    pub schema: Value,
    /// The compiled validator.
    pub checker: SchemaChecker,
}

/// Every API schema, compiled.
#[derive(Debug)]
pub struct ApiSchemas {
    by_name: HashMap<&'static str, Arc<CompiledSchema>>,
    ordered: Vec<Arc<CompiledSchema>>,
}

impl ApiSchemas {
    /// The process-wide set, compiled on first use.
    pub fn shared() -> &'static ApiSchemas {
        static SHARED: OnceLock<ApiSchemas> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut by_name = HashMap::new();
            let mut ordered = Vec::new();
            for api in API_SCHEMAS {
                let schema = (api.generate)();
                let checker = match SchemaChecker::new(&schema) {
                    Ok(checker) => checker,
                    // Invariant: drover-proto's tests compile every API schema; a schema
                    // that does not compile is a build defect, not an input error.
                    Err(error) => panic!("API schema {} does not compile: {error}", api.name),
                };
                let compiled = Arc::new(CompiledSchema { name: api.name, schema, checker });
                by_name.insert(api.name, compiled.clone());
                ordered.push(compiled);
            }
            ApiSchemas { by_name, ordered }
        })
    }

    /// The schema named `name` (an OpenAPI component name such as `JobSpec`).
    pub fn get(&self, name: &str) -> Option<&CompiledSchema> {
        self.by_name.get(name).map(|s| s.as_ref())
    }

    /// Every schema, in [`API_SCHEMAS`] order.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledSchema> {
        self.ordered.iter().map(|s| s.as_ref())
    }
}

/// A request body type with a schema in [`ApiSchemas`].
pub trait ApiBody: DeserializeOwned + Send {
    /// Its component name.
    const NAME: &'static str;
}

impl ApiBody for JobSpec {
    const NAME: &'static str = "JobSpec";
}

impl ApiBody for EstimateRequest {
    const NAME: &'static str = "EstimateRequest";
}

impl ApiBody for JobListQuery {
    const NAME: &'static str = "JobListQuery";
}

/// Checks `value` against `T`'s schema and builds `T` from it.
pub fn check_value<T: ApiBody>(value: Value) -> Result<T, ApiError> {
    let schema = ApiSchemas::shared()
        .get(T::NAME)
        .ok_or_else(|| ApiError::internal(format!("no schema named {}", T::NAME)))?;
    if let Err(violations) = schema.checker.check(&value) {
        return Err(ApiError::invalid(violations.list));
    }
    // JSON Schema counts `57.0` as an integer, serde's integer types do not: a number the
    // schema accepted as an integer is handed to the type as one.
    let mut value = value;
    integral_numbers_as_integers(&mut value);
    // The schema and the type are generated from each other; a value that passes the schema
    // and fails here is a defect, reported without echoing serde's message (which can quote
    // input).
    serde_json::from_value(value).map_err(|_| {
        ApiError::violation("", "", "the document matches the schema but not the type")
    })
}

/// Rewrites every number with no fractional part (`57.0`, `1e3`) that fits an `i64` or `u64`
/// as that integer, so integer fields accept what their schema accepts.
fn integral_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) if !number.is_i64() && !number.is_u64() => {
            let Some(float) = number.as_f64() else { return };
            // Exactly representable and in range: the casts below cannot truncate.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            if float.fract() == 0.0 && float.abs() < 9.0e15 {
                *value =
                    if float < 0.0 { Value::from(float as i64) } else { Value::from(float as u64) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}

/// A validated JSON body of type `T`, with its raw bytes (for the idempotency digest).
#[derive(Debug)]
pub struct ValidJson<T> {
    /// The typed body.
    pub value: T,
    /// The bytes as received.
    pub raw: Bytes,
}

fn is_json(parts: &axum::http::HeaderMap) -> bool {
    let Some(value) = parts.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
}

impl<T: ApiBody> FromRequest<Arc<ApiState>> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let (value, raw) = read_json(request, state).await?;
        let value = check_value::<T>(value)?;
        Ok(Self { value, raw })
    }
}

/// A request's JSON body, parsed but not yet checked against a schema: 415 unless it is
/// `application/json`, 413 over `api.max_body_bytes`, 400 unless it is strict JSON.
pub async fn read_json(
    request: Request,
    state: &Arc<ApiState>,
) -> Result<(Value, Bytes), ApiError> {
    {
        let limit = state.settings.max_body_bytes;
        if !is_json(request.headers()) {
            return Err(ApiError::new(ApiErrorCode::UnsupportedMediaType)
                .with_message("the body must be application/json"));
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let raw = read_limited(request.into_body(), limit).await?;
        let value =
            json::parse(&raw).map_err(|error| ApiError::violation("", "", error.to_string()))?;
        Ok((value, raw))
    }
}

fn too_large() -> ApiError {
    ApiError::new(ApiErrorCode::PayloadTooLarge).with_message("the body is over the size limit")
}

async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => {
            Err(ApiError::new(ApiErrorCode::InvalidRequest)
                .with_message("the body could not be read"))
        }
    }
}

/// A validated query string of type `T`. Values arrive as text; those that read as
/// non-negative integers are checked as numbers, so `limit=abc` is a type violation at
/// `/limit` and `limit=0` a `minimum` violation.
#[derive(Debug)]
pub struct ValidQuery<T>(pub T);

impl<T: ApiBody> FromRequestParts<Arc<ApiState>> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<ApiState>) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let mut map = Map::new();
        let mut violations = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(key), Some(value)) = (decode(key), decode(value)) else {
                violations.push(Violation {
                    instance_path: String::new(),
                    schema_path: String::new(),
                    message: "the query string is not valid UTF-8 after percent-decoding"
                        .to_owned(),
                });
                continue;
            };
            let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
            if map.contains_key(&key) {
                violations.push(Violation {
                    instance_path: truncate_pointer(pointer),
                    schema_path: String::new(),
                    message: "the parameter is repeated".to_owned(),
                });
                continue;
            }
            // Cursors are strings in the schema even when they look like numbers, and keep
            // their text (`000…1` is not `1`: its length is checked).
            let value = match value.parse::<u64>() {
                Ok(n) if !value.starts_with('+') && key != "cursor" => Value::from(n),
                _ => Value::String(value),
            };
            map.insert(key, value);
        }
        if !violations.is_empty() {
            return Err(ApiError::invalid(violations));
        }
        check_value::<T>(Value::Object(map)).map(ValidQuery)
    }
}

fn truncate_pointer(pointer: String) -> String {
    drover_proto::text::truncate(&pointer, drover_proto::limits::POINTER_LEN)
}

/// `application/x-www-form-urlencoded` decoding of one key or value.
fn decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|c| c.into_owned())
}
