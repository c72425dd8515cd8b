//! Revision 4's compact batches and definitions as the collector decodes
//! them (rmp-serde, then `Definitions::validate` and `CompactBatch::resolve`
//! against the decoded definitions), differentially against
//! messagepack-serde. Input: a length byte splitting the data into the
//! definitions' bytes and the batch's bytes.
#![no_main]

use ferry_proto::codec;
use ferry_proto::compact::{CompactBatch, Definitions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (defs, batch) = rest.split_at((split as usize).min(rest.len()));
    let defs = codec::from_bytes::<Definitions>("Definitions", defs)
        .ok()
        .filter(|d| d.validate().is_ok());
    let Ok(compact) = codec::from_bytes::<CompactBatch>("CompactBatch", batch) else {
        return;
    };
    if let Ok(other) = codec::from_slice::<CompactBatch>("CompactBatch", batch) {
        assert_eq!(
            codec::to_vec(&compact).unwrap(),
            codec::to_vec(&other).unwrap()
        );
    }
    let _ = compact.series_ids();
    let resolved = compact.resolve(|id| {
        let d = defs.as_ref()?;
        let i = d.ids.iter().position(|&x| x == id)?;
        Some(d.keys[i].clone())
    });
    if let Ok(batch) = resolved {
        // A resolved batch is a valid one, with the readings the columns hold.
        batch.validate().unwrap();
        assert_eq!(batch.reading_count(), compact.reading_count());
    }
});
