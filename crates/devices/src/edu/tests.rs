use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::irq::FakeIrq;
use crate::pci::config::{
    PCI_BASE_ADDRESS_0, PCI_CAP_ID_MSI, PCI_CLASS_DEVICE, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_DEVICE_ID, PCI_INTERRUPT_PIN, PCI_REVISION_ID,
    PCI_STATUS, PCI_STATUS_INTERRUPT, PCI_STATUS_REC_MASTER_ABORT, PCI_VENDOR_ID,
};
use crate::pci::msi::{
    FakeMsiSink, MsiMessage, PCI_MSI_ADDRESS_HI, PCI_MSI_ADDRESS_LO, PCI_MSI_DATA_64,
    PCI_MSI_FLAGS, PCI_MSI_FLAGS_64BIT, PCI_MSI_FLAGS_ENABLE,
};

const MIB: u64 = 1 << 20;
const MSI_ADDR: u64 = 0xfee0_1000;
const MSI_DATA: u16 = 0x4041;

struct Rig {
    edu: Edu,
    mem: GuestMemoryMmap,
    irq: Arc<FakeIrq>,
    sink: Arc<FakeMsiSink>,
}

/// 2 MiB of RAM at 0 and 1 MiB at 4 MiB; INTx attached; memory decoding and
/// bus mastering on.
fn rig() -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 2 * MIB as usize),
        (GuestAddress(4 * MIB), MIB as usize),
    ])
    .unwrap();
    let sink = FakeMsiSink::new();
    let mut edu = Edu::with_memory(mem.clone(), sink.clone()).unwrap();
    let irq = Arc::new(FakeIrq::new());
    edu.config_mut().attach_intx(irq.clone(), 11);
    let mut r = Rig {
        edu,
        mem,
        irq,
        sink,
    };
    r.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    r
}

impl Rig {
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.edu.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn r64(&mut self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.edu.bar_read(0, off, &mut b);
        u64::from_le_bytes(b)
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.edu.bar_write(0, off, &v.to_le_bytes());
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.edu.bar_write(0, off, &v.to_le_bytes());
    }
    fn command(&mut self, cmd: u16) {
        self.edu.config_write(PCI_COMMAND, &cmd.to_le_bytes());
    }
    fn cfg16(&mut self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.edu.config_read(off, &mut b);
        u16::from_le_bytes(b)
    }
    fn msi_offset(&self) -> usize {
        self.edu.config().find_capability(PCI_CAP_ID_MSI).unwrap()
    }
    fn enable_msi(&mut self, on: bool) {
        let off = self.msi_offset();
        self.edu
            .config_write(off + PCI_MSI_ADDRESS_LO, &(MSI_ADDR as u32).to_le_bytes());
        self.edu.config_write(off + PCI_MSI_ADDRESS_HI, &[0; 4]);
        self.edu
            .config_write(off + PCI_MSI_DATA_64, &MSI_DATA.to_le_bytes());
        let ctrl = if on { PCI_MSI_FLAGS_ENABLE } else { 0 };
        self.edu
            .config_write(off + PCI_MSI_FLAGS, &ctrl.to_le_bytes());
    }
    /// Program and start a transfer.
    fn dma(&mut self, src: u64, dst: u64, count: u64, cmd: u64) {
        self.w64(REG_DMA_SRC, src);
        self.w64(REG_DMA_DST, dst);
        self.w64(REG_DMA_COUNT, count);
        self.w64(REG_DMA_CMD, cmd);
    }
    fn pattern(&self, addr: u64, len: usize, seed: u8) -> Vec<u8> {
        let p: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect();
        self.mem.write_slice(&p, GuestAddress(addr)).unwrap();
        p
    }
    fn ram(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn pci_identity_bar_pin_and_msi_capability() {
    let mut r = rig();
    assert_eq!(r.cfg16(PCI_VENDOR_ID), 0x1234);
    assert_eq!(r.cfg16(PCI_DEVICE_ID), 0x11e8);
    assert_eq!(r.cfg16(PCI_REVISION_ID) & 0xff, 0x10);
    assert_eq!(r.cfg16(PCI_CLASS_DEVICE), 0xff00);
    assert_eq!(r.edu.config().read_u8(PCI_INTERRUPT_PIN), 1);
    // BAR0 sizes as 1 MiB 32-bit non-prefetchable memory.
    r.edu.config_write(PCI_BASE_ADDRESS_0, &[0xff; 4]);
    assert_eq!(r.edu.config().read_u32(PCI_BASE_ADDRESS_0), 0xfff0_0000);
    assert_eq!(r.edu.config().bar(0).unwrap().size, EDU_BAR0_SIZE);
    assert!(r.edu.config().bar(1).is_none());
    // One vector, 64-bit, no per-vector masking.
    let off = r.msi_offset();
    assert_eq!(r.cfg16(off + PCI_MSI_FLAGS), PCI_MSI_FLAGS_64BIT);
}

#[test]
fn identification_and_liveness() {
    let mut r = rig();
    assert_eq!(r.r32(REG_ID), 0x0100_00ed);
    r.w32(REG_ID, 0);
    assert_eq!(r.r32(REG_ID), EDU_ID);
    assert_eq!(r.r32(REG_LIVENESS), 0);
    for v in [0x1234_5678, 0, u32::MAX, 0x8000_0001] {
        r.w32(REG_LIVENESS, v);
        assert_eq!(r.r32(REG_LIVENESS), !v);
    }
}

#[test]
fn factorial_values_wrap_at_32_bits() {
    let mut r = rig();
    for (n, want) in [
        (0, 1),
        (1, 1),
        (5, 120),
        (12, 479_001_600),
        (13, (6_227_020_800u64 % (1 << 32)) as u32),
        (33, 0x8000_0000),
        (34, 0),
        (u32::MAX, 0),
    ] {
        r.w32(REG_FACTORIAL, n);
        assert_eq!(r.r32(REG_STATUS) & STATUS_COMPUTING, 0);
        assert_eq!(r.r32(REG_FACTORIAL), want, "{n}!");
    }
    // Agrees with the plain wrapping product.
    for n in 0..100u32 {
        let naive = (1..=n).fold(1u32, |a, k| a.wrapping_mul(k));
        assert_eq!(factorial(n), naive, "{n}!");
    }
    // No interrupt unless asked for.
    assert_eq!(r.edu.irq_status(), 0);
}

#[test]
fn status_register_and_factorial_interrupt() {
    let mut r = rig();
    // Only the IRQ-after-factorial bit is writable.
    r.w32(REG_STATUS, 0xffff_ffff);
    assert_eq!(r.r32(REG_STATUS), STATUS_IRQ_FACT);
    r.w32(REG_FACTORIAL, 5);
    assert_eq!(r.r32(REG_FACTORIAL), 120);
    assert_eq!(r.r32(REG_IRQ_STATUS), IRQ_FACT);
    assert!(r.irq.level());
    r.w32(REG_IRQ_ACK, IRQ_FACT);
    assert!(!r.irq.level());
    r.w32(REG_STATUS, STATUS_COMPUTING);
    assert_eq!(r.r32(REG_STATUS), 0);
    r.w32(REG_FACTORIAL, 3);
    assert_eq!(r.r32(REG_IRQ_STATUS), 0);
    assert_eq!(r.irq.rising_edges(), 1);
}

#[test]
fn intx_follows_interrupt_status() {
    let mut r = rig();
    assert_eq!(r.r32(REG_IRQ_RAISE), u32::MAX, "write-only reads all-ones");
    r.w32(REG_IRQ_RAISE, 0x5);
    assert_eq!(r.r32(REG_IRQ_STATUS), 0x5);
    assert!(r.irq.level());
    assert_ne!(r.cfg16(PCI_STATUS) & PCI_STATUS_INTERRUPT, 0);
    r.w32(REG_IRQ_RAISE, 0x100);
    r.w32(REG_IRQ_ACK, 0x1);
    assert!(r.irq.level());
    assert_eq!(r.r32(REG_IRQ_STATUS), 0x104);
    // INTX_DISABLE holds the line low; the status bit still shows.
    r.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    assert!(!r.irq.level());
    r.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    assert!(r.irq.level());
    r.w32(REG_IRQ_ACK, 0xffff_ffff);
    assert_eq!(r.r32(REG_IRQ_STATUS), 0);
    assert!(!r.irq.level());
    assert_eq!(r.cfg16(PCI_STATUS) & PCI_STATUS_INTERRUPT, 0);
    // Raising 0 raises nothing.
    r.w32(REG_IRQ_RAISE, 0);
    assert!(!r.irq.level());
    assert_eq!(r.irq.rising_edges(), 2);
    assert!(r.sink.take().is_empty());
}

#[test]
fn msi_replaces_intx_when_enabled() {
    let mut r = rig();
    r.enable_msi(true);
    let msg = MsiMessage {
        address: MSI_ADDR,
        data: u32::from(MSI_DATA),
    };
    r.w32(REG_IRQ_RAISE, 0x2);
    assert_eq!(r.sink.take(), vec![msg]);
    assert!(!r.irq.level());
    // Every raise while the status is non-zero sends a message.
    r.w32(REG_IRQ_RAISE, 0);
    assert_eq!(r.sink.take(), vec![msg]);
    r.w32(REG_IRQ_ACK, 0x2);
    assert_eq!(r.r32(REG_IRQ_STATUS), 0);
    assert!(r.sink.take().is_empty());
    r.w32(REG_IRQ_RAISE, 0);
    assert!(r.sink.take().is_empty());
    // A DMA interrupt goes out as MSI too.
    r.dma(0x1000, DMA_BUF_ADDR, 16, DMA_CMD_START | DMA_CMD_IRQ);
    assert_eq!(r.sink.take(), vec![msg]);
    // Switching MSI off with an interrupt pending moves it to INTx.
    r.enable_msi(false);
    assert!(r.irq.level());
    r.w32(REG_IRQ_ACK, IRQ_DMA);
    assert!(!r.irq.level());
    assert!(r.sink.take().is_empty());
}

#[test]
fn dma_round_trip_ram_to_edu_to_ram() {
    let mut r = rig();
    let data = r.pattern(0x1000, 100, 3);
    r.dma(0x1000, DMA_BUF_ADDR, 100, DMA_CMD_START);
    assert_eq!(r.r64(REG_DMA_CMD), 0, "start bit clears when done");
    assert_eq!(&r.edu.buffer()[..100], &data[..]);
    // Back out, from the middle of the buffer, with the interrupt.
    let tail = r.pattern(0x3000, 0x100, 9);
    r.dma(0x3000, DMA_BUF_ADDR + 0xf00, 0x100, DMA_CMD_START);
    r.dma(
        DMA_BUF_ADDR,
        0x1_0000 + 100,
        100,
        DMA_CMD_START | DMA_CMD_TO_RAM | DMA_CMD_IRQ,
    );
    assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_TO_RAM | DMA_CMD_IRQ);
    assert_eq!(r.ram(0x1_0000 + 100, 100), data);
    assert_eq!(r.r32(REG_IRQ_STATUS), IRQ_DMA);
    assert!(r.irq.level());
    r.dma(DMA_BUF_ADDR + 0xf00, 0x5000, 0x100, 3);
    assert_eq!(r.ram(0x5000, 0x100), tail);
    // The whole buffer in one go, into the second RAM region.
    r.dma(DMA_BUF_ADDR, 4 * MIB, 0x1000, 3);
    assert_eq!(r.ram(4 * MIB, 0x1000), r.edu.buffer());
    // An empty transfer is fine, even at the end of the buffer.
    r.dma(0x1000, DMA_BUF_ADDR + 0x1000, 0, 1);
    assert_eq!(r.r64(REG_DMA_CMD), 1 & !DMA_CMD_START);
    let s = r.edu.stats();
    assert_eq!((s.dma_done, s.dma_refused), (6, 0));
    assert_eq!(r.edu.dma_stats().ok, 6);
}

#[test]
fn dma_refused_without_bus_master() {
    let mut r = rig();
    r.pattern(0x1000, 64, 1);
    r.command(PCI_COMMAND_MEMORY);
    r.dma(0x1000, DMA_BUF_ADDR, 64, DMA_CMD_START | DMA_CMD_IRQ);
    // Completed with the error bit, interrupt still raised, no data.
    assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_ERROR | DMA_CMD_IRQ);
    assert_eq!(r.r32(REG_IRQ_STATUS), IRQ_DMA);
    assert!(r.edu.buffer().iter().all(|&b| b == 0));
    let s = r.edu.stats();
    assert_eq!(s.dma_refused, 1);
    assert!(matches!(
        s.last_dma_error,
        Some(EduDmaError::Dma(DmaError::BusMasterDisabled { .. }))
    ));
    assert_eq!(r.edu.dma_stats().refused, 1);
    // No master abort: no transaction was started.
    assert_eq!(r.cfg16(PCI_STATUS) & PCI_STATUS_REC_MASTER_ABORT, 0);
    // Turning bus mastering on lets the same transfer through and clears
    // the error bit.
    r.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    r.w64(REG_DMA_CMD, DMA_CMD_START);
    assert_eq!(r.r64(REG_DMA_CMD), 0);
    assert_eq!(r.edu.buffer()[..64], r.ram(0x1000, 64)[..]);
}

#[test]
fn dma_refused_outside_guest_ram() {
    let mut r = rig();
    r.pattern(0x1000, 32, 5);
    r.dma(0x1000, DMA_BUF_ADDR, 32, 1);
    let before = r.edu.buffer().to_vec();
    // Source in the hole between the RAM regions; straddling the end of RAM.
    for src in [3 * MIB, 2 * MIB - 16, 5 * MIB] {
        r.dma(src, DMA_BUF_ADDR, 32, 1);
        assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_ERROR);
        assert!(matches!(
            r.edu.stats().last_dma_error,
            Some(EduDmaError::Dma(DmaError::NotRam { .. }))
        ));
    }
    assert_eq!(r.edu.buffer(), &before[..]);
    // Destination outside RAM.
    r.dma(DMA_BUF_ADDR, 3 * MIB, 32, 3);
    assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_ERROR | DMA_CMD_TO_RAM);
    assert_ne!(r.cfg16(PCI_STATUS) & PCI_STATUS_REC_MASTER_ABORT, 0);
    assert_eq!(r.edu.stats().dma_refused, 4);
    assert_eq!(r.edu.dma_stats().refused, 4);
    // Without the 28-bit mask, a high address is refused, not clamped.
    let mut r = rig();
    r.edu = Edu::with_memory(r.mem.clone(), r.sink.clone())
        .unwrap()
        .with_dma_mask(u64::MAX);
    r.command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    r.dma(u64::MAX - 8, DMA_BUF_ADDR, 32, 1);
    assert!(matches!(
        r.edu.stats().last_dma_error,
        Some(EduDmaError::Dma(DmaError::Overflow { .. }))
    ));
    r.dma(0x1000_1000, DMA_BUF_ADDR, 32, 1);
    assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_ERROR);
}

#[test]
fn dma_address_mask_clamps_like_qemu() {
    let mut r = rig();
    let data = r.pattern(0x2000, 48, 11);
    // Bit 28 and above are dropped by the default 28-bit mask.
    r.dma(0x7000_2000, DMA_BUF_ADDR, 48, 1);
    assert_eq!(r.r64(REG_DMA_CMD), 0);
    assert_eq!(&r.edu.buffer()[..48], &data[..]);
    r.dma(DMA_BUF_ADDR, 0x1_1000_8000, 48, 3);
    assert_eq!(r.ram(0x8000, 48), data);
    assert_eq!(r.edu.stats().dma_clamped, 2);
}

#[test]
fn dma_outside_the_buffer_is_refused() {
    let mut r = rig();
    r.pattern(0x1000, 0x2000, 7);
    r.pattern(0x9000, 0x100, 0);
    for (dev, len) in [
        (DMA_BUF_ADDR + 0xf00, 0x200), // runs past the end
        (DMA_BUF_ADDR - 1, 4),         // starts before
        (DMA_BUF_ADDR, 0x1001),        // one byte too long
        (DMA_BUF_ADDR + 0x1000, 1),    // just past the end
        (0, 16),                       // not the buffer at all
        (DMA_BUF_ADDR + 8, u64::MAX),  // wraps
        (u64::MAX, 2),                 // wraps
    ] {
        r.dma(0x1000, dev, len, DMA_CMD_START | DMA_CMD_IRQ);
        assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_ERROR | DMA_CMD_IRQ);
        assert_eq!(
            r.edu.stats().last_dma_error,
            Some(EduDmaError::OutsideBuffer { addr: dev, len })
        );
        r.dma(dev, 0x9000, len, DMA_CMD_START | DMA_CMD_TO_RAM);
        assert_eq!(r.r64(REG_DMA_CMD), DMA_CMD_ERROR | DMA_CMD_TO_RAM);
    }
    assert!(r.edu.buffer().iter().all(|&b| b == 0));
    assert_eq!(
        r.ram(0x9000, 0x100),
        (0..0x100)
            .map(|i| (i as u8).wrapping_mul(7))
            .collect::<Vec<_>>()
    );
    // Guest memory was never touched, so the Dma saw nothing.
    assert_eq!(r.edu.dma_stats().ok + r.edu.dma_stats().refused, 0);
    assert_eq!(r.edu.stats().dma_refused, 14);
    assert_eq!(r.r32(REG_IRQ_STATUS), IRQ_DMA);
}

#[test]
fn dma_registers_widths_and_command_rules() {
    let mut r = rig();
    r.w64(REG_DMA_SRC, 0x1234_5678_9abc_def0);
    assert_eq!(r.r64(REG_DMA_SRC), 0x1234_5678_9abc_def0);
    assert_eq!(r.r32(REG_DMA_SRC), 0x9abc_def0);
    // The upper half is not a register of its own.
    assert_eq!(r.r32(REG_DMA_SRC + 4), u32::MAX);
    r.w32(REG_DMA_SRC + 4, 0);
    assert_eq!(r.r64(REG_DMA_SRC), 0x1234_5678_9abc_def0);
    // A 4-byte write replaces the whole register.
    r.w32(REG_DMA_SRC, 0x1000);
    assert_eq!(r.r64(REG_DMA_SRC), 0x1000);
    r.w32(REG_DMA_DST, 0x4_0000);
    r.w32(REG_DMA_COUNT, 8);
    assert_eq!(r.r64(REG_DMA_DST), DMA_BUF_ADDR);
    assert_eq!(r.r64(REG_DMA_COUNT), 8);
    // A command without the start bit is ignored entirely.
    r.w32(REG_DMA_CMD, (DMA_CMD_TO_RAM | DMA_CMD_IRQ) as u32);
    assert_eq!(r.r64(REG_DMA_CMD), 0);
    // The error bit cannot be written.
    r.w32(REG_DMA_CMD, (DMA_CMD_ERROR | DMA_CMD_START) as u32);
    assert_eq!(r.r64(REG_DMA_CMD), 0);
    assert_eq!(r.edu.stats().dma_done, 1);
}

#[test]
fn wrong_widths_and_unknown_offsets() {
    let mut r = rig();
    r.w32(REG_LIVENESS, 0);
    for width in [1usize, 2, 3, 5, 6, 7, 8] {
        let mut b = vec![0u8; width];
        r.edu.bar_read(0, REG_ID, &mut b);
        assert!(b.iter().all(|&x| x == 0xff), "width {width}");
        r.edu.bar_write(0, REG_LIVENESS, &vec![0x55; width]);
        r.edu.bar_write(0, REG_IRQ_RAISE, &vec![0x55; width]);
    }
    assert_eq!(r.r32(REG_LIVENESS), u32::MAX);
    assert_eq!(r.r32(REG_IRQ_STATUS), 0);
    // Registers from 0x80 take 4 or 8 bytes, nothing else.
    for width in [1usize, 2, 3, 5, 6, 7] {
        r.edu.bar_write(0, REG_DMA_SRC, &vec![0x55; width]);
    }
    assert_eq!(r.r64(REG_DMA_SRC), 0);
    // Unknown and misaligned offsets read all-ones; writes vanish.
    for off in [
        0x01,
        0x0c,
        0x28,
        0x7c,
        0xa0,
        0x100,
        DMA_BUF_ADDR,
        EDU_BAR0_SIZE - 8,
    ] {
        assert_eq!(r.r64(off), u64::MAX, "{off:#x}");
        r.w64(off, 0);
        r.w32(off, 0);
    }
    // Another BAR (the bus never routes one here) is harmless.
    let mut b = [0u8; 4];
    r.edu.bar_read(3, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
    r.edu.bar_write(3, REG_IRQ_RAISE, &1u32.to_le_bytes());
    assert_eq!(r.edu.irq_status(), 0);
    assert!(r.edu.stats().bad_accesses > 0);
    let mut empty = [];
    r.edu.bar_read(0, 0, &mut empty);
    r.edu.bar_write(0, 0, &empty);
}

/// xorshift64*: deterministic noise for the hammer test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_register_hammering_keeps_invariants() {
    let mut r = rig();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let regs = [
        REG_ID,
        REG_LIVENESS,
        REG_FACTORIAL,
        REG_STATUS,
        REG_IRQ_STATUS,
        REG_IRQ_RAISE,
        REG_IRQ_ACK,
        REG_DMA_SRC,
        REG_DMA_DST,
        REG_DMA_COUNT,
        REG_DMA_CMD,
    ];
    for i in 0..200_000u32 {
        let x = rng.next();
        let v = rng.next();
        let off = match x % 4 {
            0 => x >> 8 & (EDU_BAR0_SIZE - 1),
            1 => x >> 8 & 0xff,
            _ => regs[(x >> 8) as usize % regs.len()] + (x >> 40 & 1) * (x >> 41 & 7),
        };
        // Small counts, commands and addresses in RAM and the buffer, often.
        let v = match v % 6 {
            0 => v >> 52,
            1 => DMA_BUF_ADDR + (v >> 53),
            2 => v >> 40 & (2 * MIB - 1),
            3 => v >> 40 & 0xff,
            _ => v,
        };
        // Mostly the widths the register map accepts.
        let width = match x >> 32 & 7 {
            0..=2 => 4,
            3..=4 => 8,
            w => w as usize - 4, // 1, 2 or 3 bytes
        };
        let bytes = v.to_le_bytes();
        if x >> 36 & 1 == 0 {
            r.edu.bar_write(0, off, &bytes[..width]);
        } else {
            let mut b = vec![0u8; width];
            r.edu.bar_read(0, off, &mut b);
        }
        if i % 50 == 0 {
            // A plausible transfer: addresses near RAM and the buffer,
            // either direction, sometimes a little off.
            let y = rng.next();
            let len = y & 0x1fff;
            let ram = y >> 16 & (4 * MIB - 1);
            let dev = DMA_BUF_ADDR + (y >> 40 & 0xfff);
            let cmd = DMA_CMD_START | (y >> 60);
            if cmd & DMA_CMD_TO_RAM == 0 {
                r.dma(ram, dev, len, cmd);
            } else {
                r.dma(dev, ram, len, cmd);
            }
        }
        if i % 1000 == 0 {
            // Toggle bus mastering, INTx disable and MSI.
            let cmd =
                PCI_COMMAND_MEMORY | (v as u16 & (PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE));
            r.command(cmd);
            r.enable_msi(v & 0x10 != 0);
            // Random config writes too.
            r.edu
                .config_write((v >> 8) as usize % 4200, &bytes[..width]);
        }
        let irq = r.edu.irq_status();
        let msi = r.edu.msi.enabled(r.edu.config());
        assert_eq!(r.edu.config().intx_asserted(), irq != 0 && !msi);
        let intx_off = r.edu.config().command() & PCI_COMMAND_INTX_DISABLE != 0;
        assert_eq!(r.irq.level(), irq != 0 && !msi && !intx_off);
        assert_eq!(r.edu.dma_cmd & DMA_CMD_START, 0);
        assert_eq!(r.edu.status & STATUS_COMPUTING, 0);
        assert_eq!(r.edu.buffer().len(), DMA_BUF_SIZE);
    }
    let s = r.edu.stats();
    assert!(s.dma_done > 100 && s.dma_refused > 100, "{s:?}");
    assert!(s.bad_accesses > 0);
}
