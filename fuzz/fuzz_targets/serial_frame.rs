//! The serial deframer and `decode_frame`: arbitrary line bytes never panic,
//! payloads respect the size limit, and a valid payload re-frames to a frame
//! that decodes to the same payload.
#![no_main]

use ferry_proto::serial::{self, Deframer, MAX_LINK_PAYLOAD, MAX_SERIAL_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Deframer::new();
    for &b in data {
        if let Some(Ok(payload)) = d.push(b) {
            assert!(payload.len() <= MAX_LINK_PAYLOAD);
            let mut frame = [0u8; MAX_SERIAL_FRAME];
            let n = serial::encode_frame(payload, &mut frame).unwrap();
            let copy = payload.to_vec();
            let back = serial::decode_frame(&mut frame[..n - 1]).unwrap();
            assert_eq!(back, &copy[..]);
        }
    }
    let mut buf = data.to_vec();
    let _ = serial::decode_frame(&mut buf);
});
