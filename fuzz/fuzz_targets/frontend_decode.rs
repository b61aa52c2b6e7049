//! Any bytes a client sends after startup: framing, then every decoder the
//! session uses, then routing of what decodes. Must never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsplit::protocol::{codec, frontend};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec::decode_frame(&mut buf, 1 << 20) {
        let body = frame.body();
        let _ = frontend::query_text(body);
        let _ = frontend::parse(body);
        let _ = frontend::bind(body);
        let _ = frontend::target(body, "Describe");
        let _ = frontend::password(body);
    }
});
