//! `ferry_proto::stream::parse`: any bytes give a frame, "incomplete" or a
//! named error; a frame never claims more bytes than were given.
#![no_main]

use ferry_proto::stream::{self, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 16;
    let mut rest = data;
    loop {
        match stream::parse(rest, max) {
            Ok(Parsed::Frame {
                header,
                body,
                consumed,
            }) => {
                assert_eq!(body.len(), header.len as usize);
                assert!(consumed <= rest.len());
                assert_eq!(
                    stream::FrameHeader::parse(rest[..6].try_into().unwrap(), max),
                    Ok(header)
                );
                assert_eq!(&header.to_bytes()[..], &rest[..6]);
                rest = &rest[consumed..];
            }
            Ok(Parsed::Incomplete { needed }) => {
                assert!(needed > rest.len());
                break;
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
