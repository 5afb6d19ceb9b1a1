//! Properties over generated input: framing is independent of how bytes are split, and no
//! input, however hostile, makes the decoder or the validator panic.

// Test code: a failed unwrap is a failed test, with the reason in the panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use bytes::BytesMut;
use drover_proto::*;
use drover_transport::codec::{Decoded, FrameCodec};
use drover_transport::{Connection, FrameValidator, Inbound};
use proptest::prelude::*;
use serde_json::Value;
use tokio_util::codec::Decoder;

fn job_id() -> impl Strategy<Value = JobId> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}".prop_map(|s| s.parse().unwrap())
}

/// Valid frames: every example, plus event frames with generated content.
fn valid_frame() -> impl Strategy<Value = Frame> {
    let examples = examples::frames();
    prop_oneof![
        (0..examples.len()).prop_map(move |i| examples[i].clone()),
        (
            job_id(),
            0.0..1e12f64,
            proptest::option::of(1.0..1e12f64),
            proptest::option::of("\\PC{0,200}")
        )
            .prop_map(|(job_id, current, total, message)| Frame::event(JobProgress {
                job_id,
                current,
                total,
                unit: None,
                message,
            })),
        (job_id(), proptest::collection::vec(any::<String>(), 1..40), any::<u32>()).prop_map(
            |(job_id, lines, dropped)| Frame::event(JobLog {
                job_id,
                stream: LogStream::Stderr,
                lines,
                dropped: dropped.into(),
            })
        ),
        ("\\PC{0,300}", 1u64..(1 << 53)).prop_map(|(message, id)| Frame::reply(
            MsgId::new(id).unwrap(),
            WireError { code: ErrorCode::Internal, message, violations: vec![], details: None },
        )),
    ]
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut wire = Vec::new();
    for frame in frames {
        let payload = FrameValidator::shared().encode(frame).unwrap();
        wire.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        wire.extend_from_slice(&payload);
    }
    wire
}

/// Splits `wire` at the given cut points (taken modulo its length).
fn split(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| wire[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frames_split_anywhere_decode_to_the_same_messages(
        frames in proptest::collection::vec(valid_frame(), 1..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let wire = encode(&frames);
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in split(&wire, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                let Decoded::Frame(payload) = item else { panic!("unexpected {item:?}") };
                decoded.push(FrameValidator::shared().decode(&payload).unwrap());
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn a_connection_reading_partial_reads_yields_the_same_messages(
        frames in proptest::collection::vec(valid_frame(), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        // Events only, so that a supervisor accepts them all without correlation state.
        let frames: Vec<Frame> = frames
            .into_iter()
            .filter(|f| f.msg.message_type().role() == Role::Event && f.msg.message_type().sender() == Party::Driver)
            .collect();
        let wire = encode(&frames);
        let mut script = tokio_test::io::Builder::new();
        for chunk in split(&wire, &cuts) {
            script.read(&chunk);
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let received = runtime.block_on(async {
            let mut conn = Connection::new(script.build(), Party::Supervisor);
            let mut out = Vec::new();
            while let Some(inbound) = conn.recv().await.unwrap() {
                let Inbound::Event(msg) = inbound else { panic!("unexpected {inbound:?}") };
                out.push(msg);
            }
            out
        });
        let expected: Vec<Message> = frames.into_iter().map(|f| f.msg).collect();
        prop_assert_eq!(received, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), small_limit in any::<bool>()) {
        let mut codec = if small_limit { FrameCodec::with_max_frame_bytes(64) } else { FrameCodec::new() };
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(Decoded::Frame(payload))) => { let _ = FrameValidator::shared().decode(&payload); }
                Ok(Some(Decoded::TooLarge(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // The same bytes as one payload, straight into the validator.
        let _ = FrameValidator::shared().decode(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics_and_what_passes_is_typed(value in arbitrary_json()) {
        let validator = FrameValidator::shared();
        let _ = validator.check(&value);
        // Wrapped as a message body of every type, it is either rejected or decodes.
        for &message_type in MessageType::ALL {
            let mut frame = serde_json::json!({"msg": value.clone()});
            if let Some(object) = frame["msg"].as_object_mut() {
                object.insert("type".into(), message_type.as_str().into());
            }
            let _ = validator.decode(&serde_json::to_vec(&frame).unwrap());
        }
    }

    #[test]
    fn mutated_examples_are_rejected_or_round_trip(
        index in 0..MessageType::ALL.len(),
        path_choice in any::<prop::sample::Index>(),
        replacement in arbitrary_json(),
    ) {
        let frame = examples::frames().swap_remove(index);
        let mut value = serde_json::to_value(&frame).unwrap();
        let paths = leaf_paths(&value, String::new());
        let path = path_choice.get(&paths).clone();
        if let Some(slot) = value.pointer_mut(&path) {
            *slot = replacement;
        }
        let validator = FrameValidator::shared();
        if let Ok(decoded) = validator.decode(&serde_json::to_vec(&value).unwrap()) {
            // Whatever is accepted re-encodes to a frame that is accepted again, unchanged.
            let again = validator.decode(&validator.encode(&decoded).unwrap()).unwrap();
            prop_assert_eq!(again, decoded);
        }
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON pointers to every node of `value`.
fn leaf_paths(value: &Value, prefix: String) -> Vec<String> {
    let mut out = vec![prefix.clone()];
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.extend(leaf_paths(
                    v,
                    format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")),
                ));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                out.extend(leaf_paths(v, format!("{prefix}/{i}")));
            }
        }
        _ => {}
    }
    out
}
