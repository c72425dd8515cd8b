//! Session messages (Hello, Welcome, Ack, ErrorMsg, AgentStatus) through
//! both decoders; a decoded AgentStatus is validated (never panics).
#![no_main]

use ferry_proto::codec;
use ferry_proto::session::{Ack, AgentStatus, ErrorMsg, Hello, Welcome};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

fn both<T: DeserializeOwned + Serialize>(name: &'static str, data: &[u8]) {
    let a = codec::from_bytes::<T>(name, data);
    let b = codec::from_slice::<T>(name, data);
    if let (Ok(a), Ok(b)) = (&a, &b) {
        assert_eq!(codec::to_vec(a).unwrap(), codec::to_vec(b).unwrap());
    }
    if let Err(e) = a {
        assert_eq!(e.message, name);
    }
}

fuzz_target!(|data: &[u8]| {
    both::<Hello>("Hello", data);
    both::<Welcome>("Welcome", data);
    both::<Ack>("Ack", data);
    both::<ErrorMsg>("ErrorMsg", data);
    both::<AgentStatus>("AgentStatus", data);
    if let Ok(status) = codec::from_bytes::<AgentStatus>("AgentStatus", data) {
        let _ = status.validate();
    }
});
