//! Arbitrary bytes as a DriverTransport stream: the codec splits them into frames (with a
//! limit chosen by the first input byte, so oversize skipping is reached), every frame goes
//! through the validator. Nothing may panic, and a codec error must end the stream.
#![no_main]

use bytes::BytesMut;
use drover_transport::FrameValidator;
use drover_transport::codec::{Decoded, FrameCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&limit_choice, stream)) = data.split_first() else { return };
    let max = [16, 256, 4096, 1 << 20][usize::from(limit_choice % 4)];
    let mut codec = FrameCodec::with_max_frame_bytes(max);
    // Feed the stream in chunks whose sizes also come from the input, as a socket would.
    let chunk = usize::from(limit_choice / 4).max(1);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Decoded::Frame(payload))) => {
                    assert!(payload.len() <= max as usize);
                    let _ = FrameValidator::shared().decode(&payload);
                }
                Ok(Some(Decoded::TooLarge(too_large))) => assert!(too_large.len > u64::from(max)),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
