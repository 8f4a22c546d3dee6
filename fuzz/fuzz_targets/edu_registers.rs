//! edu's BAR0 registers and configuration space on arbitrary accesses,
//! including DMA into a small guest memory.
#![no_main]

use devices::edu::Edu;
use devices::pci::device::PciDevice;
use devices::pci::msi::FakeMsiSink;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut edu = Edu::with_memory(mem, FakeMsiSink::new()).unwrap();
    for op in vlab_fuzz::ops(data, 1 << 20) {
        let bytes = op.value.to_le_bytes();
        let mut buf = [0u8; 8];
        match (op.target % 2, op.write) {
            (0, true) => edu.bar_write(0, op.offset, &bytes[..op.width]),
            (0, false) => edu.bar_read(0, op.offset, &mut buf[..op.width]),
            (_, true) => {
                let _ = edu.config_write((op.offset % 0x1000) as usize, &bytes[..op.width]);
            }
            (_, false) => edu.config_read((op.offset % 0x1000) as usize, &mut buf[..op.width]),
        }
    }
});
