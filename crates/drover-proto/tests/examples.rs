//! Every message type has an example, and every example satisfies both its own schema and the
//! general frame schema, and survives a serde round trip unchanged.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use drover_proto::schema::{frame_schema, message_schema};
use drover_proto::{Frame, MessageType, examples};

#[test]
fn one_example_per_message_type_in_order() {
    let types: Vec<MessageType> = examples::frames().iter().map(|f| f.msg.message_type()).collect();
    assert_eq!(types, MessageType::ALL);
}

#[test]
fn examples_round_trip_and_satisfy_their_schemas() {
    let frame_validator = jsonschema::validator_for(&frame_schema()).unwrap();
    for frame in examples::frames() {
        let message_type = frame.msg.message_type();
        let value = serde_json::to_value(&frame).unwrap();
        let own = jsonschema::validator_for(&message_schema(message_type)).unwrap();
        let errors: Vec<String> = own.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{message_type}: {errors:?}");
        assert!(frame_validator.is_valid(&value), "{message_type} fails frame.json");
        let back: Frame = serde_json::from_value(value).unwrap();
        assert_eq!(back, frame);
    }
}

#[test]
fn a_message_schema_rejects_every_other_type() {
    let frames = examples::frames();
    for &schema_type in MessageType::ALL {
        let validator = jsonschema::validator_for(&message_schema(schema_type)).unwrap();
        for frame in frames.iter().filter(|f| f.msg.message_type() != schema_type) {
            let value = serde_json::to_value(frame).unwrap();
            assert!(
                !validator.is_valid(&value),
                "{schema_type} schema accepts a {}",
                frame.msg.message_type()
            );
        }
    }
}

#[test]
fn sizes_of_the_benchmark_frames() {
    let progress = serde_json::to_vec(&examples::job_progress()).unwrap();
    assert!((120..=180).contains(&progress.len()), "job_progress is {} bytes", progress.len());
    let log = serde_json::to_vec(&examples::job_log(500)).unwrap();
    assert!((35_000..=45_000).contains(&log.len()), "job_log(500) is {} bytes", log.len());
}
