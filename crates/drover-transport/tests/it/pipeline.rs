//! The validation pipeline, payload by payload: every error path has its own code, points at
//! the offending value, and never echoes it.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use drover_proto::{ErrorCode, Frame, Message, MessageType, examples};
use drover_transport::{FrameValidator, InvalidFrame};
use serde_json::{Value, json};

fn decode(payload: &[u8]) -> Result<Frame, InvalidFrame> {
    FrameValidator::shared().decode(payload)
}

fn decode_value(value: &Value) -> Result<Frame, InvalidFrame> {
    decode(&serde_json::to_vec(value).unwrap())
}

/// The (instance path, schema path) pairs of a rejection, sorted.
fn pointers(invalid: &InvalidFrame) -> Vec<(String, String)> {
    let mut out: Vec<_> = invalid
        .violations()
        .iter()
        .map(|v| (v.instance_path.clone(), v.schema_path.clone()))
        .collect();
    out.sort();
    out
}

fn example(message_type: MessageType) -> Value {
    let frame =
        examples::frames().into_iter().find(|f| f.msg.message_type() == message_type).unwrap();
    serde_json::to_value(frame).unwrap()
}

#[test]
fn every_message_type_round_trips_through_encode_and_decode() {
    let validator = FrameValidator::shared();
    for frame in examples::frames() {
        let bytes = validator.encode(&frame).unwrap();
        assert_eq!(decode(&bytes).unwrap(), frame, "{}", frame.msg.message_type());
    }
}

#[test]
fn invalid_utf8_has_its_own_code() {
    let mut payload = br#"{"msg":{"type":"log","level":"info","message":"#.to_vec();
    payload.extend_from_slice(b"\"\xff\xfe\"}}");
    let err = decode(&payload).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidUtf8);
    assert!(matches!(err, InvalidFrame::InvalidUtf8 { offset: 47 }), "{err:?}");
}

#[test]
fn bad_json_empty_payload_and_trailing_data_are_invalid_json() {
    for payload in [&b""[..], b"{", b"{\"msg\":}", b"[1,2", b"{} {}", b"nul", b"{\"a\":1,}"] {
        let err = decode(payload).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidJson, "{:?}", String::from_utf8_lossy(payload));
    }
}

#[test]
fn duplicate_keys_are_rejected_even_when_both_values_are_valid() {
    let payload = br#"{"msg":{"type":"ping"},"msg":{"type":"ping"},"id":1}"#;
    assert_eq!(decode(payload).unwrap_err().code(), ErrorCode::InvalidJson);
    let payload = br#"{"id":1,"msg":{"type":"cancel_job","job_id":"a","job_id":"b","reason":""}}"#;
    assert_eq!(decode(payload).unwrap_err().code(), ErrorCode::InvalidJson);
}

#[test]
fn deep_nesting_is_bounded() {
    // 200 levels of arrays inside a log field: over serde_json's 128-level limit.
    let deep = format!(
        r#"{{"msg":{{"type":"log","level":"info","message":"m","fields":{{"x":{}{}}}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let err = decode(deep.as_bytes()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidJson);
    assert!(err.to_string().contains("recursion limit"), "{err}");
    // Deep but within the limit: parsed, validated (fields are free-form), accepted.
    let ok = format!(
        r#"{{"msg":{{"type":"log","level":"info","message":"m","fields":{{"x":{}{}}}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(decode(ok.as_bytes()).is_ok());
}

#[test]
fn unknown_fields_are_violations_at_their_object() {
    let mut frame = example(MessageType::JobState);
    frame["msg"]["extra"] = json!(1);
    frame["unexpected"] = json!(true);
    let err = decode_value(&frame).unwrap_err();
    assert_eq!(err.code(), ErrorCode::SchemaViolation);
    assert_eq!(
        pointers(&err),
        [
            ("".to_owned(), "/additionalProperties".to_owned()),
            ("/msg".to_owned(), "/properties/msg/additionalProperties".to_owned()),
        ]
    );
}

#[test]
fn unknown_type_is_its_own_code_and_answers_the_request_id() {
    let err = decode(br#"{"id":9,"msg":{"type":"format_disk"}}"#).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownType);
    assert_eq!(err.request_id().map(|id| id.get()), Some(9));
    assert_eq!(err.locations()[0].instance_path, "/msg/type");
    // A very long type name is not echoed in full.
    let long = format!(r#"{{"msg":{{"type":"{}"}}}}"#, "x".repeat(10_000));
    let err = decode(long.as_bytes()).unwrap_err();
    assert!(err.to_string().len() < 200, "{err}");
}

#[test]
fn missing_or_malformed_envelope_points_at_the_problem() {
    let cases: [(&[u8], &str, &str); 5] = [
        (b"[1]", "", "/type"),
        (br#"{"id":1}"#, "", "/required"),
        (br#"{"msg":"ping"}"#, "/msg", "/properties/msg"),
        (br#"{"msg":{}}"#, "/msg", "/properties/msg"),
        (br#"{"msg":{"type":7}}"#, "/msg/type", "/properties/msg"),
    ];
    for (payload, instance, schema) in cases {
        let err = decode(payload).unwrap_err();
        assert_eq!(err.code(), ErrorCode::SchemaViolation);
        assert_eq!(pointers(&err), [(instance.to_owned(), schema.to_owned())]);
    }
}

#[test]
fn numbers_out_of_range_are_violations() {
    let mut welcome = example(MessageType::Welcome);
    welcome["msg"]["heartbeat_ms"] = json!(10_000_000_000_u64); // beyond u32 and the schema max
    welcome["msg"]["protocol_version"] = json!(0);
    welcome["re"] = json!(9_007_199_254_740_992_u64); // 2^53
    let err = decode_value(&welcome).unwrap_err();
    assert_eq!(
        pointers(&err),
        [
            (
                "/msg/heartbeat_ms".to_owned(),
                "/properties/msg/properties/heartbeat_ms/maximum".to_owned()
            ),
            (
                "/msg/protocol_version".to_owned(),
                "/properties/msg/properties/protocol_version/minimum".to_owned()
            ),
            ("/re".to_owned(), "/$defs/MsgId/maximum".to_owned()),
        ]
    );
    // A float where an integer belongs, and a u8 field past 255.
    let mut acquire = example(MessageType::AcquireGpu);
    acquire["msg"]["disk_gib"] = json!(20.5);
    acquire["msg"]["gpu"]["count"] = json!(300);
    let err = decode_value(&acquire).unwrap_err();
    let paths: Vec<_> = pointers(&err).into_iter().map(|(i, _)| i).collect();
    assert_eq!(paths, ["/msg/disk_gib", "/msg/gpu/count"]);
}

#[test]
fn strings_and_arrays_are_bounded() {
    let mut log = serde_json::to_value(examples::job_log(1)).unwrap();
    log["msg"]["lines"] = json!(vec!["x"; 4097]);
    let err = decode_value(&log).unwrap_err();
    assert_eq!(pointers(&err)[0].0, "/msg/lines");

    let mut log = serde_json::to_value(examples::job_log(1)).unwrap();
    log["msg"]["lines"] = json!(["ok", "y".repeat(16 * 1024 + 1)]);
    assert_eq!(pointers(&decode_value(&log).unwrap_err())[0].0, "/msg/lines/1");

    let mut cancel = example(MessageType::CancelJob);
    cancel["msg"]["job_id"] = json!("j".repeat(65));
    assert_eq!(pointers(&decode_value(&cancel).unwrap_err())[0].0, "/msg/job_id");
}

#[test]
fn roles_fix_the_envelope() {
    // A request without an id, a reply without re, an event with an id, and both id and re.
    let cases = [
        json!({"msg": {"type": "ping"}}),
        json!({"msg": {"type": "pong"}}),
        json!({"id": 1, "msg": {"type": "job_state", "job_id": "j", "state": "running"}}),
        json!({"id": 1, "re": 2, "msg": {"type": "ping"}}),
        json!({"id": 1, "msg": {"type": "error", "code": "internal", "message": ""}}),
    ];
    for frame in cases {
        let err = decode_value(&frame).unwrap_err();
        assert_eq!(err.code(), ErrorCode::SchemaViolation, "{frame}");
    }
    // `error` may be a reply or an event.
    assert!(
        decode_value(&json!({"msg": {"type": "error", "code": "internal", "message": ""}})).is_ok()
    );
    assert!(
        decode_value(
            &json!({"re": 3, "msg": {"type": "error", "code": "internal", "message": ""}})
        )
        .is_ok()
    );
}

#[test]
fn null_is_not_a_spelling_of_absent() {
    let mut state = example(MessageType::JobState);
    state["msg"]["message"] = Value::Null;
    assert_eq!(pointers(&decode_value(&state).unwrap_err())[0].0, "/msg/message");
    let mut ping = example(MessageType::Ping);
    ping["re"] = Value::Null;
    assert_eq!(decode_value(&ping).unwrap_err().code(), ErrorCode::SchemaViolation);
}

#[test]
fn enums_and_patterns_are_enforced() {
    let mut state = example(MessageType::JobState);
    state["msg"]["state"] = json!("exploded");
    assert_eq!(pointers(&decode_value(&state).unwrap_err())[0].0, "/msg/state");

    let mut hello = example(MessageType::Hello);
    hello["msg"]["schema_sha256"] = json!("ABC");
    hello["msg"]["actions"] = json!({"Bad-Name": true});
    let paths: Vec<_> =
        pointers(&decode_value(&hello).unwrap_err()).into_iter().map(|(i, _)| i).collect();
    assert_eq!(paths, ["/msg/actions", "/msg/schema_sha256"]);
}

#[test]
fn every_violation_is_collected_up_to_the_cap() {
    let mut log = serde_json::to_value(examples::job_log(1)).unwrap();
    log["msg"]["lines"] = json!(vec![json!(1); 100]);
    let InvalidFrame::SchemaViolation { violations, .. } = decode_value(&log).unwrap_err() else {
        panic!()
    };
    assert_eq!(violations.total, 100);
    assert_eq!(violations.list.len(), 64);
    let wire = InvalidFrame::SchemaViolation { message_type: None, id: None, violations }.to_wire();
    assert_eq!(wire.details.unwrap()["total_violations"], 100);
}

#[test]
fn errors_never_echo_secret_bearing_values() {
    let secret = "sk_live_0123456789abcdef0123456789abcdef";
    // The secret as a value breaking a pattern, as an over-long value, as an unknown key, as
    // an unknown type, and inside broken JSON.
    let mut acquire = example(MessageType::AcquireGpu);
    acquire["msg"]["env"] = json!({ "TOKEN": format!("{secret}{}", "x".repeat(300)) });
    acquire["msg"]["image"] = json!(format!("{secret} with spaces"));
    let mut hello = example(MessageType::Hello);
    hello["msg"]["driver"]["version"] = json!(secret.repeat(3));
    let cases = vec![
        serde_json::to_vec(&acquire).unwrap(),
        serde_json::to_vec(&hello).unwrap(),
        format!(r#"{{"msg":{{"type":"{secret}"}}}}"#).into_bytes(),
        format!(r#"{{"msg":{{"type":"ping","{}":1}},"id":1}}"#, secret.repeat(4)).into_bytes(),
        format!(r#"{{"msg":{{"type":"ping"}},"id":"{secret}}}"#).into_bytes(),
    ];
    for payload in cases {
        let err = decode(&payload).unwrap_err();
        let wire = serde_json::to_string(&err.to_wire()).unwrap();
        let shown = format!("{err} {err:?} {wire}");
        assert!(!shown.contains(secret), "echoed: {shown}");
    }
}

#[test]
fn outgoing_frames_are_checked_too() {
    let mut frame = examples::job_progress();
    if let Message::JobProgress(progress) = &mut frame.msg {
        progress.current = f64::NAN; // serializes as null: not a number, so not a valid frame
    }
    let err = FrameValidator::shared().encode(&frame).unwrap_err();
    assert_eq!(err.code(), ErrorCode::SchemaViolation);
    assert_eq!(err.violations()[0].instance_path, "/msg/current");
}

#[test]
fn too_large_reports_len_and_max_in_details() {
    let err =
        InvalidFrame::TooLarge(drover_transport::FrameTooLarge { len: 2_000_000, max: 1_048_576 });
    let wire = err.to_wire();
    assert_eq!(wire.code, ErrorCode::FrameTooLarge);
    let details = wire.details.unwrap();
    assert_eq!(
        (details["len"].as_u64(), details["max"].as_u64()),
        (Some(2_000_000), Some(1_048_576))
    );
}
