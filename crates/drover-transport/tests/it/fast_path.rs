//! The validation fast path against the full path: whatever the fast path accepts, the full
//! path (strict parse to a tree, the compiled `jsonschema` validator, the typed frame from the
//! tree) accepts too, as the same frame; and it does accept the ordinary frames it was built
//! for, or it would be no fast path.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use drover_proto::*;
use drover_transport::FrameValidator;
use proptest::prelude::*;
use serde_json::{Value, json};

/// `frame` as JSON text with `msg.type` written first, as the SDKs write it.
fn text_type_first(frame: &Value) -> String {
    let Some(envelope) = frame.as_object() else { return frame.to_string() };
    let mut parts = Vec::new();
    for (key, value) in envelope {
        let value = match (key.as_str(), value.as_object()) {
            ("msg", Some(msg)) => {
                let mut fields: Vec<String> = Vec::new();
                if let Some(tag) = msg.get("type") {
                    fields.push(format!("\"type\":{tag}"));
                }
                for (k, v) in msg.iter().filter(|(k, _)| *k != "type") {
                    fields.push(format!("{}:{v}", Value::from(k.as_str())));
                }
                format!("{{{}}}", fields.join(","))
            }
            _ => value.to_string(),
        };
        parts.push(format!("{}:{value}", Value::from(key.as_str())));
    }
    format!("{{{}}}", parts.join(","))
}

/// The property every payload must have: the fast path's frame, when it gives one, is the full
/// path's frame; and `decode` is the full path's answer.
fn agree(payload: &[u8]) -> Result<Option<Frame>, TestCaseError> {
    let validator = FrameValidator::shared();
    let full = validator.decode_full(payload);
    let fast = validator.decode_fast(payload);
    if let Some(frame) = &fast {
        prop_assert_eq!(
            full.as_ref().ok(),
            Some(frame),
            "fast path accepted what the full path does not: {}",
            String::from_utf8_lossy(payload)
        );
    }
    prop_assert_eq!(validator.decode(payload), full);
    Ok(fast)
}

#[test]
fn the_fast_path_handles_the_frames_a_driver_streams() {
    let fast = FrameValidator::shared().fast_path_types();
    for t in [
        MessageType::JobProgress,
        MessageType::JobLog,
        MessageType::JobState,
        MessageType::JobResult,
        MessageType::Log,
        MessageType::Ping,
        MessageType::Pong,
        MessageType::Ack,
        MessageType::Error,
    ] {
        assert!(fast.contains(&t), "{t} takes the full path");
    }
}

#[test]
fn every_example_decodes_the_same_on_both_paths() {
    let validator = FrameValidator::shared();
    let fast_types = validator.fast_path_types();
    for frame in examples::frames() {
        // As drover writes it.
        let payload = validator.encode(&frame).unwrap();
        let fast = agree(&payload).unwrap();
        if fast_types.contains(&frame.msg.message_type()) {
            assert_eq!(fast.as_ref(), Some(&frame), "{}", String::from_utf8_lossy(&payload));
        }
        // With sorted keys, `type` is not first unless it is alone: the fast path declines
        // and the full path decodes.
        let sorted = serde_json::to_vec(&serde_json::to_value(&frame).unwrap()).unwrap();
        let type_first = String::from_utf8_lossy(&sorted).contains(r#""msg":{"type""#);
        assert_eq!(agree(&sorted).unwrap().is_some(), type_first && fast.is_some());
        assert_eq!(validator.decode(&sorted).unwrap(), frame);
    }
}

#[test]
fn frames_the_schema_refuses_are_refused_with_their_violations() {
    let validator = FrameValidator::shared();
    let cases = [
        // Too long by one character, counted in characters (each é is two bytes).
        json!({"msg": {"type": "job_progress", "job_id": "j", "current": 1, "unit": "é".repeat(33)}}),
        json!({"msg": {"type": "job_progress", "job_id": "-j", "current": 1}}),
        json!({"msg": {"type": "job_progress", "job_id": "j", "current": -1}}),
        json!({"msg": {"type": "job_progress", "job_id": "j", "current": 1, "total": 0}}),
        json!({"msg": {"type": "job_progress", "job_id": "j", "current": 1, "extra": 1}}),
        json!({"msg": {"type": "job_progress", "job_id": "j"}}),
        json!({"id": 1, "msg": {"type": "job_progress", "job_id": "j", "current": 1}}),
        json!({"msg": {"type": "job_log", "job_id": "j", "stream": "stdin", "lines": ["a"]}}),
        json!({"msg": {"type": "job_log", "job_id": "j", "stream": {"stdout": null}, "lines": ["a"]}}),
        json!({"msg": {"type": "job_log", "job_id": "j", "stream": "stdout", "lines": []}}),
        json!({"msg": {"type": "job_log", "job_id": "j", "stream": "stdout", "lines": [1]}}),
        json!({"msg": {"type": "ping"}}),
        json!({"id": 0, "msg": {"type": "ping"}}),
        json!({"id": 9_007_199_254_740_992u64, "msg": {"type": "ping"}}),
        json!({"re": 1, "id": 1, "msg": {"type": "pong"}}),
    ];
    for case in cases {
        let payload = text_type_first(&case);
        assert_eq!(validator.decode_fast(payload.as_bytes()), None, "{payload}");
        let err = validator.decode(payload.as_bytes()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::SchemaViolation, "{payload}: {err}");
        assert!(!err.violations().is_empty(), "{payload}");
    }
    // Duplicate keys, at the top, in the message and deep inside a free-form value.
    for payload in [
        r#"{"msg":{"type":"ping"},"id":1,"id":2}"#,
        r#"{"msg":{"type":"job_progress","job_id":"j","current":1,"current":2}}"#,
        r#"{"re":1,"msg":{"type":"error","code":"internal","message":"m","details":{"a":{"b":1,"b":1}}}}"#,
    ] {
        assert_eq!(validator.decode_fast(payload.as_bytes()), None, "{payload}");
        let err = validator.decode(payload.as_bytes()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidJson, "{payload}: {err}");
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..(1 << 54)).prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        (0.0f64..2.0).prop_map(Value::from),
        Just(json!(2.0)),
        "\\PC{0,40}".prop_map(Value::String),
        "[a-z0-9._ -]{0,70}".prop_map(Value::String),
        "[é€a]{30,70}".prop_map(Value::String),
        prop::sample::select(vec!["stdout", "stderr", "info", "running", "failed", "internal"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON pointers to every node of `value`.
fn paths(value: &Value, prefix: String) -> Vec<String> {
    let mut out = vec![prefix.clone()];
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.extend(paths(
                    v,
                    format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")),
                ));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                out.extend(paths(v, format!("{prefix}/{i}")));
            }
        }
        _ => {}
    }
    out
}

/// One change to a frame's tree.
#[derive(Clone, Debug)]
enum Mutation {
    Replace(Value),
    Remove,
    AddKey(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => arbitrary_json().prop_map(Mutation::Replace),
        1 => Just(Mutation::Remove),
        1 => (prop::sample::select(vec!["id", "re", "type", "extra", "message", "total", "dropped"]), arbitrary_json())
            .prop_map(|(k, v)| Mutation::AddKey(k.to_owned(), v)),
    ]
}

fn mutate(value: &mut Value, path: &str, mutation: &Mutation) {
    let (parent, last) = path.rsplit_once('/').unwrap_or(("", ""));
    match mutation {
        Mutation::Replace(replacement) => {
            if let Some(slot) = value.pointer_mut(path) {
                *slot = replacement.clone();
            }
        }
        Mutation::Remove => match value.pointer_mut(parent) {
            Some(Value::Object(map)) => drop(map.remove(last)),
            Some(Value::Array(items)) => {
                if let Ok(i) = last.parse::<usize>()
                    && i < items.len()
                {
                    items.remove(i);
                }
            }
            _ => {}
        },
        Mutation::AddKey(key, v) => {
            if let Some(Value::Object(map)) = value.pointer_mut(path) {
                map.insert(key.clone(), v.clone());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn mutated_frames_get_the_same_answer_on_both_paths(
        index in 0..MessageType::ALL.len() + 3,
        changes in proptest::collection::vec((any::<prop::sample::Index>(), mutation()), 1..3),
    ) {
        let mut frames = examples::frames();
        frames.push(examples::job_log(20));
        let frame = frames.swap_remove(index % frames.len());
        let mut value = serde_json::to_value(&frame).unwrap();
        for (at, change) in &changes {
            let all = paths(&value, String::new());
            let path = at.get(&all).clone();
            mutate(&mut value, &path, change);
        }
        agree(text_type_first(&value).as_bytes())?;
        agree(value.to_string().as_bytes())?;
    }

    #[test]
    fn generated_progress_and_logs_take_the_fast_path(
        job in "[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
        current in 0.0..1e12f64,
        message in proptest::option::of("\\PC{0,256}"),
        lines in proptest::collection::vec("\\PC{0,300}", 1..20),
    ) {
        let validator = FrameValidator::shared();
        let job_id: JobId = job.parse().unwrap();
        let progress = Frame::event(JobProgress { job_id: job_id.clone(), current, total: None, unit: None, message });
        let log = Frame::event(JobLog { job_id, stream: LogStream::Stdout, lines, dropped: 0 });
        for frame in [progress, log] {
            let payload = validator.encode(&frame).unwrap();
            prop_assert_eq!(agree(&payload)?, Some(frame));
        }
    }
}
