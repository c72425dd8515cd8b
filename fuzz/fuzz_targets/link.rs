//! Device-link messages: Uplink as the gateway decodes it (rmp-serde) and as
//! firmware would (messagepack-serde), Downlink likewise; accepted values
//! re-encode identically with both encoders.
#![no_main]

use ferry_proto::codec;
use ferry_proto::link::{Downlink, Uplink};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

fn both<T: DeserializeOwned + Serialize>(name: &'static str, data: &[u8]) {
    let a = codec::from_bytes::<T>(name, data);
    let b = codec::from_slice::<T>(name, data);
    for v in [a.as_ref().ok(), b.as_ref().ok()].into_iter().flatten() {
        let rmp = codec::to_vec(v).unwrap();
        let mut buf = [0u8; 1024];
        let n = codec::to_slice(v, &mut buf).unwrap();
        assert_eq!(&buf[..n], &rmp[..]);
    }
}

fuzz_target!(|data: &[u8]| {
    both::<Uplink>("Uplink", data);
    both::<Downlink>("Downlink", data);
});
