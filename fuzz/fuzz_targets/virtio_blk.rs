//! virtio-blk's request path: a fuzzer-written descriptor table, available
//! ring and buffers, processed against an in-memory disk
//! (`devices::virtio::block::fuzz::fuzz_queue`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::virtio::block::fuzz::fuzz_queue(data);
});
