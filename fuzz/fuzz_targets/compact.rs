//! Revision 4's compact batches and definitions as the collector decodes
//! them (rmp-serde, then `Definitions::validate` and `CompactBatch::resolve`
//! against the decoded definitions), differentially against
//! messagepack-serde; and revision 5's value references (`References::resolve`
//! against two generations of references, which must give back the same
//! batch as the columns hold). Input: a length byte splitting the data into
//! the definitions' bytes and the batch's bytes.
#![no_main]

use ferry_proto::codec;
use ferry_proto::compact::{CompactBatch, Definitions, References};
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
    // References: generations 1 and 2, with values taken from the input's
    // bytes (NaN payloads, −0.0, infinities among them).
    let mut refs = References::default();
    let values: Vec<(u32, f64)> = data
        .chunks_exact(8)
        .take(8)
        .enumerate()
        .map(|(i, c)| (i as u32, f64::from_le_bytes(c.try_into().unwrap())))
        .collect();
    let (first, second) = values.split_at(values.len() / 2);
    refs.set(0, 1, first).unwrap();
    refs.set(1, 2, second).unwrap();
    let before = refs.clone();
    let key = |id: u32| -> Option<ferry_proto::series::SeriesKey> {
        let d = defs.as_ref()?;
        let i = d.ids.iter().position(|&x| x == id)?;
        Some(d.keys[i].clone())
    };
    match refs.resolve(&compact, key) {
        Ok(batch) => {
            batch.validate().unwrap();
            assert_eq!(batch.reading_count(), compact.reading_count());
            // Without references the batch resolves the same.
            if compact.ref_base == 0 {
                let plain = compact.resolve(key).unwrap();
                assert_eq!(
                    codec::to_vec(&plain).unwrap(),
                    codec::to_vec(&batch).unwrap()
                );
            }
        }
        Err(_) => assert_eq!(format!("{refs:?}"), format!("{before:?}")),
    }
});
