//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`.
//!
//! Its `components/schemas` are the [`ApiSchemas`] request validation compiles, with their
//! `$defs` hoisted into `components/schemas` beside them ([`components`]), so every `$ref`
//! resolves from the document root. Operations refer to them with
//! `$ref: "#/components/schemas/<Name>"`. Tests check that every route of the router is
//! described, that the served schemas judge bodies as validation does, and that the
//! committed copy (`schemas/api/openapi.json`) is current.

use serde_json::{Map, Value, json};

use crate::body::ApiSchemas;

/// The name of the idempotency header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Every route and method the router serves, as `(method, OpenAPI path)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/events"),
    ("post", "/v1/estimates"),
    ("get", "/v1/drivers"),
    ("get", "/v1/openapi.json"),
    ("get", "/metrics"),
];

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(name: &str) -> Value {
    json!({"application/json": {"schema": schema_ref(name)}})
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": json_content("ErrorBody")})
}

/// The responses every authenticated operation may give besides its own.
fn guarded(mut responses: Map<String, Value>, scope: Option<&str>) -> Value {
    responses.insert(
        "401".into(),
        json!({
            "description": "No token, or a malformed, unknown or revoked one.",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            "content": json_content("ErrorBody"),
        }),
    );
    if scope.is_some() {
        responses.insert("403".into(), error("The token lacks the scope."));
    }
    responses.insert(
        "429".into(),
        json!({
            "description": "The token's rate limit.",
            "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
            "content": json_content("ErrorBody"),
        }),
    );
    responses.insert("500".into(), error("Internal error; the log has it under request_id."));
    Value::Object(responses)
}

fn operation(
    id: &str,
    summary: &str,
    scope: Option<&str>,
    responses: Value,
    extra: Value,
) -> Value {
    let Value::Object(responses) = responses else { return Value::Null };
    let mut op = json!({
        "operationId": id,
        "summary": summary,
        "security": [{"bearer": scope.map_or_else(Vec::new, |s| vec![s])}],
        "responses": guarded(responses, scope),
    });
    if let (Value::Object(op), Value::Object(extra)) = (&mut op, extra) {
        op.extend(extra);
    }
    op
}

fn body(name: &str) -> Value {
    json!({"requestBody": {"required": true, "content": json_content(name)}})
}

fn invalid_body_responses(mut responses: Value) -> Value {
    if let Value::Object(map) = &mut responses {
        map.insert("400".into(), error("The body breaks its schema; `violations` says where."));
        map.insert("413".into(), error("The body is over the size limit."));
        map.insert("415".into(), error("The body is not application/json."));
    }
    responses
}

fn id_parameter() -> Value {
    json!({"name": "id", "in": "path", "required": true,
           "schema": {"type": "string", "minLength": 1, "maxLength": 64,
                      "pattern": drover_proto::JobId::PATTERN}})
}

/// Where a schema's own definitions (`#/$defs/<Name>`) live in the document.
const COMPONENT_PREFIX: &str = "#/components/schemas/";

/// Rewrites every `#/$defs/<Name>` reference in `schema` to `#/components/schemas/<Name>`.
fn rewrite_refs(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("$ref")
                && let Some(name) = reference.strip_prefix("#/$defs/")
            {
                *reference = format!("{COMPONENT_PREFIX}{name}");
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// The validated API schemas as OpenAPI components: each one's `$defs` hoisted next to it
/// under `components/schemas` (a definition several schemas share is the same type, so the
/// same schema), its `$id`/`$schema` dropped (the document's `jsonSchemaDialect` says the
/// dialect) and its references rewritten, so every `$ref` resolves from the document root as
/// OpenAPI tools resolve them. Validation itself keeps using [`ApiSchemas`]; a test checks
/// that both judge bodies alike.
pub fn components() -> Map<String, Value> {
    let mut components = Map::new();
    for compiled in ApiSchemas::shared().iter() {
        let mut schema = compiled.schema.clone();
        let defs = match &mut schema {
            Value::Object(map) => {
                map.remove("$id");
                map.remove("$schema");
                map.remove("$defs")
            }
            _ => None,
        };
        rewrite_refs(&mut schema);
        components.insert(compiled.name.to_owned(), schema);
        if let Some(Value::Object(defs)) = defs {
            for (name, mut def) in defs {
                rewrite_refs(&mut def);
                components.entry(name).or_insert(def);
            }
        }
    }
    components
}

/// The document.
pub fn document() -> Value {
    let schemas = components();
    let query_parameters: Vec<Value> = schemas
        .get("JobListQuery")
        .and_then(|q| q.get("properties"))
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    let mut parameter =
                        json!({"name": name, "in": "query", "required": false, "schema": schema});
                    if let Some(description) = schema.get("description") {
                        parameter["description"] = description.clone();
                    }
                    parameter
                })
                .collect()
        })
        .unwrap_or_default();

    let ok = |name: &str, description: &str| json!({"200": {"description": description, "content": json_content(name)}});
    let job_ok = |status: &str, description: &str| json!({status: {"description": description, "content": json_content("Job")}});

    let mut submit_responses = invalid_body_responses(job_ok("201", "Accepted; durable."));
    if let Value::Object(map) = &mut submit_responses {
        map.insert(
            "200".into(),
            json!({"description": "An Idempotency-Key replayed an earlier submission of the same body.",
                   "content": json_content("Job")}),
        );
        map.insert("409".into(), error("The Idempotency-Key was used for a different body."));
        map.insert("503".into(), error("The driver has not declared its actions yet."));
    }
    let mut get_responses = ok("Job", "The job.");
    let mut cancel_responses = ok("Job", "Cancellation recorded; the job as it is now.");
    for map in [&mut get_responses, &mut cancel_responses] {
        if let Value::Object(map) = map {
            map.insert("400".into(), error("The id breaks its grammar."));
            map.insert("404".into(), error("No such job."));
        }
    }
    if let Value::Object(map) = &mut cancel_responses {
        map.insert("409".into(), error("The job has already ended."));
    }
    let mut list_responses = ok("JobList", "A page of jobs, newest first.");
    if let Value::Object(map) = &mut list_responses {
        map.insert("400".into(), error("The query breaks its schema."));
    }
    let mut ready_responses = ok("Readiness", "Ready.");
    if let Value::Object(map) = &mut ready_responses {
        map.insert(
            "503".into(),
            json!({"description": "Not ready.", "content": json_content("Readiness")}),
        );
    }

    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": drover_proto::schema::DIALECT,
        "info": {
            "title": "drover API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Submit and follow GPU jobs run by sandboxed drivers. Every route but \
                /healthz needs `Authorization: Bearer <token>` (make one with `drover token new`). \
                Every request body is validated against the schema below before anything acts on it.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "A drover token: `drover_` and 48 base64url characters (256 random bits and a checksum)."}},
            "schemas": schemas,
        },
        "paths": {
            "/healthz": {"get": {
                "operationId": "healthz", "summary": "The process serves HTTP. No authentication.",
                "security": [],
                "responses": ok("Health", "Alive."),
            }},
            "/readyz": {"get": operation("readyz", "Whether the supervisor can take jobs. Without a token (a probe) the body has no checks; with one it names each.", None, ready_responses, json!({"security": [{}, {"bearer": []}]}))},
            "/v1/jobs": {
                "post": operation("submitJob", "Submit a job. Acknowledged (201) only once it is durable.",
                    Some("jobs:write"), submit_responses,
                    {
                        let mut extra = body("JobSpec");
                        extra["parameters"] = json!([{"name": IDEMPOTENCY_KEY, "in": "header", "required": false,
                            "description": "Retrying with the same key and body returns the first job (200); the same key with another body is 409. Scoped to the token.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": drover_proto::api::IDEMPOTENCY_KEY_LEN, "pattern": "^[!-~]+$"}}]);
                        extra
                    }),
                "get": operation("listJobs", "List jobs, newest first.", Some("jobs:read"), list_responses,
                    json!({"parameters": query_parameters})),
            },
            "/v1/jobs/{id}": {
                "get": operation("getJob", "One job.", Some("jobs:read"), get_responses,
                    json!({"parameters": [id_parameter()]})),
                "delete": operation("cancelJob", "Cancel a job.", Some("jobs:write"), cancel_responses,
                    json!({"parameters": [id_parameter()]})),
            },
            "/v1/jobs/{id}/events": {"get": operation("jobEvents",
                "The job's events as server-sent events (`id` = seq, `event` = type, `data` = JobEvent); resumable with Last-Event-ID; ends after the terminal state.",
                Some("jobs:read"),
                json!({"200": {"description": "An event stream.", "content": {"text/event-stream": {"schema": schema_ref("JobEvent")}}},
                       "400": error("The id or Last-Event-ID is malformed."),
                       "404": error("No such job.")}),
                json!({"parameters": [id_parameter(), {"name": "Last-Event-ID", "in": "header", "required": false,
                    "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"}}]})),
            },
            "/v1/estimates": {"post": operation("estimate",
                "Dry-run cost estimate through the estimator and the gate; nothing is rented.",
                Some("jobs:write"), invalid_body_responses(ok("EstimateResponse", "The estimate and the gate's decision.")),
                json!({"requestBody": {"required": true, "content": {"application/json": {"schema":
                    {"oneOf": [schema_ref("EstimateRequest"),
                        {"allOf": [schema_ref("JobSpec"), {"required": ["gpu"], "properties": {"gpu": {"type": "object"}}}],
                         "description": "A job spec, estimated for its gpu, max_runtime_s and budget_usd (disk from params.disk_gib)."}]}}}}}))},
            "/v1/drivers": {"get": operation("listDrivers", "Registered drivers, their actions and params schemas, and health.",
                Some("drivers:read"), ok("DriverList", "The drivers."), json!({}))},
            "/v1/openapi.json": {"get": operation("openapi", "This document.", None,
                json!({"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}}),
                json!({}))},
            "/metrics": {"get": operation("metrics", "Prometheus metrics.", Some("metrics:read"),
                json!({"200": {"description": "Prometheus text format 0.0.4, or OpenMetrics 1.0 when Accept asks for application/openmetrics-text.",
                    "content": {"text/plain": {"schema": {"type": "string"}}, "application/openmetrics-text": {"schema": {"type": "string"}}}}}),
                json!({}))},
        },
    })
}
