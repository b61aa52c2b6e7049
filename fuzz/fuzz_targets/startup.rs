//! Any bytes as the first message of a connection (startup, SSL, GSSENC,
//! cancel). Must never panic nor buffer what a lying length claims.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsplit::protocol::codec;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let _ = codec::decode_startup(&mut buf);
});
