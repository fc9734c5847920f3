//! Feeds arbitrary bytes to the server's frame decoder, as a hostile client
//! would: it must return frames or errors, never panic or over-allocate.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sessiond_proto::codec::FrameCodec;
use sessiond_proto::wire::{ClientFrame, ServerFrame};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut server_side = FrameCodec::<ClientFrame, ServerFrame>::new(64 << 10);
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(_)) = server_side.decode(&mut buffer) {}
    let _ = sessiond_proto::codec::decode::<ClientFrame>(data);
    let _ = sessiond_proto::codec::decode::<ServerFrame>(data);
});
