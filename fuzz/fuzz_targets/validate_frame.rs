//! Arbitrary bytes as one frame payload through validate-then-deserialize. Whatever is
//! accepted must re-encode (passing the outgoing check) and decode back to the same frame.
#![no_main]

use drover_transport::FrameValidator;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let validator = FrameValidator::shared();
    if let Ok(frame) = validator.decode(data) {
        let bytes = validator.encode(&frame).expect("an accepted frame re-encodes");
        let again = validator.decode(&bytes).expect("a re-encoded frame is accepted");
        assert_eq!(again, frame);
    }
});
