//! Batch decoding as the collector does it (rmp-serde, then validation and
//! block expansion), differentially against messagepack-serde: when both
//! decoders accept the bytes they must agree.
#![no_main]

use ferry_proto::batch::Batch;
use ferry_proto::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let gateway = codec::from_bytes::<Batch>("Batch", data);
    if let Ok(batch) = &gateway {
        if batch.validate().is_ok() {
            for block in &batch.blocks {
                block.readings().unwrap();
            }
            for a in &batch.aggregates {
                if let Some(s) = &a.sketch {
                    let _ = s.quantile(0.5);
                }
            }
        }
        if let Ok(other) = codec::from_slice::<Batch>("Batch", data) {
            assert_eq!(
                codec::to_vec(batch).unwrap(),
                codec::to_vec(&other).unwrap()
            );
        }
    }
});
