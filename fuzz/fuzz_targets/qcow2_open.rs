//! qcow2 header, table and backing-chain parsing on arbitrary image bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    block::image::fuzz_open(data);
});
