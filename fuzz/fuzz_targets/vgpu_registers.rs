//! vgpu's register model and engine: arbitrary register writes and reads,
//! with the engine stepped over a guest memory the fuzzer also fills.
#![no_main]

use devices::vgpu::{Vgpu, VecMemory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (mem_bytes, ops) = data.split_at(data.len().min(4096));
    let mut mem = VecMemory::new(0x1000, 4096);
    mem.bytes[..mem_bytes.len()].copy_from_slice(mem_bytes);
    let mut fb = vec![0u8; 64 * 64 * 4];
    let mut dev = Vgpu::new();
    for op in vlab_fuzz::ops(ops, 0x1000) {
        match op.target % 3 {
            0 => {
                let _ = dev.write_reg(op.offset, op.width, op.value);
            }
            1 => {
                let _ = dev.read_reg(op.offset, op.width);
            }
            _ => {
                let _ = dev.set_bus_master(op.write);
                let _ = dev.step(&mem, &mut fb);
            }
        }
    }
});
