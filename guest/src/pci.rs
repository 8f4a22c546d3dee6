//! PCI bus 0: configuration space access and enumeration.
//!
//! # Configuration access
//! * **ECAM** when the ACPI MCFG table lists one for segment 0 (vlab puts
//!   it at 0xE000_0000): function `(b, d, f)` register `r` is the MMIO
//!   address `base + (b << 20 | d << 15 | f << 12 | r)`. The window lies in
//!   the uncached 3–4 GiB part of the boot identity map; one access is one
//!   VM exit.
//! * **Mechanism #1** otherwise: write `0x8000_0000 | b << 16 | d << 11 |
//!   f << 8 | (r & 0xfc)` to port 0xCF8, then access 0xCFC + (r & 3). Two
//!   exits per access.
//!
//! # Enumeration
//! [`scan`] reads the vendor ID of function 0 of every slot on bus 0 (and
//! functions 1..7 of multi-function devices), then for each function found
//! its IDs, class, header type, BARs (type 0 headers: six; type 1: two),
//! interrupt line/pin and capability list (status bit 4, pointer at 0x34).
//! BARs are *not* sized or moved: vlab (like firmware) assigned them, and
//! memory decoding is on. A driver enables bus mastering itself
//! ([`Function::enable_bus_master`]).

use crate::acpi::Platform;
use crate::devices::DeviceList;
use crate::io::{inl, outl, outw};
use crate::tests::Machine;
use core::mem::MaybeUninit;

/// Configuration register offsets (type 0 header).
pub const CFG_VENDOR: u16 = 0x00;
pub const CFG_COMMAND: u16 = 0x04;
pub const CFG_CLASS: u16 = 0x08;
pub const CFG_HEADER: u16 = 0x0c;
pub const CFG_BAR0: u16 = 0x10;
pub const CFG_CAP_PTR: u16 = 0x34;
pub const CFG_INTERRUPT: u16 = 0x3c;

/// Command register bits.
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

/// Status register: capability list present.
const STATUS_CAP_LIST: u32 = 1 << 4;
/// Capability IDs.
pub const CAP_ID_MSI: u8 = 0x05;

/// Maximum number of functions [`scan`] records.
pub const MAX_FUNCTIONS: usize = 16;

/// How configuration space is reached.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConfigAccess {
    /// ECAM window at this base (bus 0).
    Ecam(u64),
    /// Ports 0xCF8/0xCFC.
    Io,
}

impl ConfigAccess {
    /// ECAM if the MCFG table covers bus 0, else mechanism #1.
    pub fn from_platform(plat: &Platform) -> ConfigAccess {
        if plat.ecam_base != 0 && plat.ecam_buses.0 == 0 {
            // Bus 0 only: 1 MiB of the window.
            crate::paging::map_mmio(plat.ecam_base, 1 << 20);
            ConfigAccess::Ecam(plat.ecam_base)
        } else {
            ConfigAccess::Io
        }
    }

    fn name(self) -> &'static str {
        match self {
            ConfigAccess::Ecam(_) => "ecam",
            ConfigAccess::Io => "cf8",
        }
    }
}

/// A PCI bus/device/function address.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Bdf {
    fn cf8(self, reg: u16) -> u32 {
        0x8000_0000
            | u32::from(self.bus) << 16
            | u32::from(self.dev) << 11
            | u32::from(self.func) << 8
            | u32::from(reg & 0xfc)
    }

    fn ecam(self, base: u64, reg: u16) -> u64 {
        base + (u64::from(self.bus) << 20
            | u64::from(self.dev) << 15
            | u64::from(self.func) << 12
            | u64::from(reg))
    }
}

/// Read the 32-bit configuration register at `reg` (4-byte aligned).
pub fn read32(acc: ConfigAccess, bdf: Bdf, reg: u16) -> u32 {
    match acc {
        // SAFETY: the ECAM window is identity mapped (uncached) by the boot
        // page tables; configuration reads have no side effects.
        ConfigAccess::Ecam(base) => unsafe { crate::io::mmio_read32(bdf.ecam(base, reg)) },
        ConfigAccess::Io => {
            outl(0xcf8, bdf.cf8(reg));
            inl(0xcfc)
        }
    }
}

/// Write the 32-bit configuration register at `reg` (4-byte aligned).
pub fn write32(acc: ConfigAccess, bdf: Bdf, reg: u16, value: u32) {
    match acc {
        // SAFETY: as in `read32`; the caller chose the register.
        ConfigAccess::Ecam(base) => unsafe { crate::io::mmio_write32(bdf.ecam(base, reg), value) },
        ConfigAccess::Io => {
            outl(0xcf8, bdf.cf8(reg));
            outl(0xcfc, value);
        }
    }
}

/// Write the 16-bit configuration register at `reg` (2-byte aligned).
pub fn write16(acc: ConfigAccess, bdf: Bdf, reg: u16, value: u16) {
    match acc {
        // SAFETY: as in `write32`.
        ConfigAccess::Ecam(base) => unsafe {
            core::ptr::write_volatile(bdf.ecam(base, reg) as usize as *mut u16, value)
        },
        ConfigAccess::Io => {
            outl(0xcf8, bdf.cf8(reg));
            outw(0xcfc + (reg & 2), value);
        }
    }
}

/// Read the 16-bit configuration register at `reg` (2-byte aligned).
pub fn read16(acc: ConfigAccess, bdf: Bdf, reg: u16) -> u16 {
    (read32(acc, bdf, reg & !3) >> (8 * (reg & 2))) as u16
}

/// One decoded BAR.
#[derive(Clone, Copy, Default)]
pub struct Bar {
    /// Base address (0 = not implemented / unassigned).
    pub addr: u64,
    /// I/O space BAR.
    pub io: bool,
    /// 64-bit memory BAR (the next BAR slot holds the high half).
    pub is64: bool,
    /// Prefetchable memory BAR.
    pub prefetch: bool,
}

/// One PCI function found by [`scan`].
#[derive(Clone, Copy)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    pub header_type: u8,
    pub bars: [Bar; 6],
    /// Interrupt line register (the GSI vlab routed INTx to; 0xff = none).
    pub irq_line: u8,
    /// Interrupt pin (0 = none, 1 = INTA#).
    pub irq_pin: u8,
    /// Offset of the MSI capability (0 = none).
    pub msi_cap: u8,
    access: ConfigAccess,
}

impl Function {
    fn acc(&self) -> ConfigAccess {
        self.access
    }

    pub fn write32(&self, reg: u16, value: u32) {
        write32(self.acc(), self.bdf, reg, value)
    }

    pub fn read32(&self, reg: u16) -> u32 {
        read32(self.acc(), self.bdf, reg)
    }

    pub fn read16(&self, reg: u16) -> u16 {
        read16(self.acc(), self.bdf, reg)
    }

    pub fn write16(&self, reg: u16, value: u16) {
        write16(self.acc(), self.bdf, reg, value)
    }

    /// Set or clear bits of the command register (a 16-bit write: the
    /// status register's W1C bits are not touched).
    pub fn update_command(&self, set: u16, clear: u16) {
        let cmd = self.read16(CFG_COMMAND);
        let new = (cmd | set) & !clear;
        if new != cmd {
            self.write16(CFG_COMMAND, new);
        }
    }

    /// Map memory BAR `i` (uncached) and return its address (None if it
    /// is unassigned or an I/O BAR). `size` is what the driver will touch.
    pub fn map_bar(&self, i: usize, size: u64) -> Option<u64> {
        let b = self.bars.get(i)?;
        if b.addr == 0 || b.io {
            return None;
        }
        crate::paging::map_mmio(b.addr, size);
        Some(b.addr)
    }

    /// Enable memory decoding and bus mastering (`pci_set_master`).
    pub fn enable_bus_master(&self) {
        self.update_command(CMD_MEMORY | CMD_BUS_MASTER, 0);
    }

    /// Friendly name of a known device.
    pub fn name(&self) -> Option<&'static str> {
        match (self.vendor, self.device) {
            (0x7ab5, 0x0001) => Some("vgpu"),
            (0x1234, 0x11e8) => Some("edu"),
            (0x1af4, 0x1042) => Some("virtio-blk"),
            _ if self.class == 0x06 && self.subclass == 0x00 => Some("host-bridge"),
            _ => None,
        }
    }
}

/// The functions found on bus 0.
pub struct Functions {
    /// `list[..len]` is initialised. Not zeroed: every byte zeroed costs
    /// emulated `rep stos` iterations on kvm_pvm.
    list: [MaybeUninit<Function>; MAX_FUNCTIONS],
    len: usize,
    /// How configuration space was reached.
    pub access: ConfigAccess,
}

impl Functions {
    /// All functions found, in (slot, function) order.
    pub fn all(&self) -> &[Function] {
        // SAFETY: the first `len` entries were written by `scan`, and
        // `MaybeUninit<Function>` has the layout of `Function`.
        unsafe { core::slice::from_raw_parts(self.list.as_ptr().cast(), self.len) }
    }

    /// The first function with this vendor and device ID.
    pub fn find(&self, vendor: u16, device: u16) -> Option<Function> {
        self.all()
            .iter()
            .find(|f| f.vendor == vendor && f.device == device)
            .copied()
    }

    /// `ecam` or `cf8`.
    pub fn access_name(&self) -> &'static str {
        self.access.name()
    }
}

/// Enumerate bus 0.
pub fn scan(plat: &Platform) -> Functions {
    scan_with(plat, true)
}

/// Enumerate bus 0; with `full = false` only IDs, class and header type
/// are read (hello's device line: fewer VM exits).
fn scan_with(plat: &Platform, full: bool) -> Functions {
    let access = ConfigAccess::from_platform(plat);
    let mut out = Functions {
        list: [const { MaybeUninit::uninit() }; MAX_FUNCTIONS],
        len: 0,
        access,
    };
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let bdf = Bdf { bus: 0, dev, func };
            let id = read32(access, bdf, CFG_VENDOR);
            if id & 0xffff == 0xffff || id & 0xffff == 0 {
                if func == 0 {
                    break;
                }
                continue;
            }
            let f = read_function(access, bdf, id, full);
            let multi = f.header_type & 0x80 != 0;
            if out.len < MAX_FUNCTIONS {
                out.list[out.len].write(f);
                out.len += 1;
            }
            if func == 0 && !multi {
                break;
            }
        }
    }
    out
}

fn read_function(access: ConfigAccess, bdf: Bdf, id: u32, full: bool) -> Function {
    // SAFETY: all-zero bytes are a valid `Function` (integers, bools, and
    // `ConfigAccess` is `repr(u8)` with `Ecam` = 0); `mem::zeroed` avoids
    // SSE zeroing.
    let mut f: Function = unsafe { crate::mem::zeroed() };
    f.bdf = bdf;
    f.access = access;
    f.vendor = id as u16;
    f.device = (id >> 16) as u16;
    let class = read32(access, bdf, CFG_CLASS);
    f.revision = class as u8;
    f.prog_if = (class >> 8) as u8;
    f.subclass = (class >> 16) as u8;
    f.class = (class >> 24) as u8;
    f.header_type = (read32(access, bdf, CFG_HEADER) >> 16) as u8;
    f.irq_line = 0xff;
    if !full {
        return f;
    }
    let nbars = match f.header_type & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    let mut i = 0;
    while i < nbars {
        let lo = read32(access, bdf, CFG_BAR0 + 4 * i as u16);
        let bar = &mut f.bars[i];
        if lo & 1 != 0 {
            bar.io = true;
            bar.addr = u64::from(lo & !3);
        } else {
            bar.prefetch = lo & 8 != 0;
            bar.addr = u64::from(lo & !0xf);
            if (lo >> 1) & 3 == 2 && i + 1 < nbars {
                bar.is64 = true;
                let hi = read32(access, bdf, CFG_BAR0 + 4 * (i as u16 + 1));
                bar.addr |= u64::from(hi) << 32;
                i += 1;
            }
        }
        i += 1;
    }
    if f.header_type & 0x7f == 0 {
        let int = read32(access, bdf, CFG_INTERRUPT);
        f.irq_line = int as u8;
        f.irq_pin = (int >> 8) as u8;
    }
    let status = read32(access, bdf, CFG_COMMAND) >> 16;
    if status & STATUS_CAP_LIST != 0 {
        let mut ptr = (read32(access, bdf, CFG_CAP_PTR) & 0xfc) as u8;
        // At most 48 capabilities fit in 192 bytes: bounds a looping list.
        let mut budget = 48;
        while ptr >= 0x40 && budget > 0 {
            let hdr = read32(access, bdf, u16::from(ptr));
            if hdr as u8 == CAP_ID_MSI && f.msi_cap == 0 {
                f.msi_cap = ptr;
            }
            ptr = ((hdr >> 8) & 0xfc) as u8;
            budget -= 1;
        }
    }
    f
}

/// Probe for hello's `devices:` line: one `pci:<slot>:<vendor>:<device>`
/// token per function (`.<func>` appended for functions other than 0),
/// with `(<name>)` for known devices.
pub fn probe(m: &Machine, out: &mut DeviceList) {
    let fns = scan_with(&m.plat, false);
    for f in fns.all() {
        out.start();
        out.append("pci:");
        out.append_hex(u32::from(f.bdf.dev), 2);
        if f.bdf.func != 0 {
            out.append(".");
            out.append_hex(u32::from(f.bdf.func), 1);
        }
        out.append(":");
        out.append_hex(u32::from(f.vendor), 4);
        out.append(":");
        out.append_hex(u32::from(f.device), 4);
        if let Some(name) = f.name() {
            out.append("(");
            out.append(name);
            out.append(")");
        }
    }
}
