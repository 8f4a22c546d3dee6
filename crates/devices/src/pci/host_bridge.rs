//! The PCI host bridge: device 0 on bus 0, and the two ways the CPU reaches
//! configuration space through it.
//!
//! # Identity
//!
//! Vendor 0x8086, device 0x0d57, class 0x06/0x00/0x00 (host bridge): the
//! ID Intel assigned to the virtual PCIe host of NEMU/Cloud Hypervisor.
//! No Linux driver or quirk binds to it (unlike the Q35 MCH, 0x29c0, whose
//! chipset registers a guest might probe), and `lspci` shows a plain
//! "Host bridge". It has no BARs, no capabilities and no interrupt pin.
//!
//! # Configuration mechanism #1 ([`ConfigIo`], I/O ports 0xCF8–0xCFF)
//!
//! | port | access | function |
//! |------|--------|----------|
//! | 0xCF8 | 32-bit only | CONFIG_ADDRESS: bit 31 enable, 23:16 bus, 15:11 device, 10:8 function, 7:2 register; other bits read 0 |
//! | 0xCFC–0xCFF | any width fitting in the 4 ports | CONFIG_DATA: register `(CONFIG_ADDRESS & 0xfc) + (port - 0xcfc)` |
//!
//! Narrower or straddling accesses to 0xCF8–0xCFB are not the address
//! register (Linux's `pci_check_type1` relies on a byte write to 0xCFB being
//! ignored): they read all-ones, are dropped and counted. With the enable
//! bit clear, data reads return all-ones. Port 0xCF9 (the PIIX/ICH reset
//! control register) is thus not implemented here.
//!
//! # ECAM ([`Ecam`], an MMIO window described by the ACPI MCFG table)
//!
//! Offset `bus << 20 | device << 15 | function << 12 | register` reaches
//! the full 4 KiB of a function (bytes past 256 read 0). Any width; an
//! access straddling two functions or past 256 buses reads all-ones and is
//! counted.
//!
//! Both answer all-ones for absent functions (other buses, functions 1–7,
//! empty slots).

use std::sync::Arc;

use super::bus::{PciAddress, PciBus};
use super::config::{ConfigSpace, PciIds, PCI_CFG_SPACE_EXP_SIZE};
use super::device::PciDevice;
use crate::bus::{Access, BusDevice};

/// Host bridge vendor ID (Intel).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Host bridge device ID (Intel virtual PCIe host).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// Base class: bridge.
pub const PCI_BASE_CLASS_BRIDGE: u8 = 0x06;
/// Sub-class: host bridge.
pub const PCI_CLASS_BRIDGE_HOST: u8 = 0x00;

/// First port of mechanism #1.
pub const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
/// Ports of mechanism #1 (CONFIG_ADDRESS and CONFIG_DATA).
pub const PCI_CONFIG_IO_SIZE: u64 = 8;
/// CONFIG_ADDRESS: enable bit.
pub const PCI_CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS: the bits that are stored.
pub const PCI_CONFIG_ADDRESS_MASK: u32 = PCI_CONFIG_ADDRESS_ENABLE | 0x00ff_fffc;
/// Size of an ECAM window covering buses 0–255.
pub const PCI_ECAM_SIZE: u64 = 256 << 20;

/// The host bridge function (slot 0).
#[derive(Debug)]
pub struct HostBridge {
    cfg: ConfigSpace,
}

impl HostBridge {
    /// The host bridge.
    pub fn new() -> Self {
        HostBridge {
            cfg: ConfigSpace::new(PciIds {
                vendor: HOST_BRIDGE_VENDOR_ID,
                device: HOST_BRIDGE_DEVICE_ID,
                class: PCI_BASE_CLASS_BRIDGE,
                subclass: PCI_CLASS_BRIDGE_HOST,
                ..PciIds::default()
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Configuration mechanism #1: register at [`PCI_CONFIG_IO_PORT`] with
/// [`PCI_CONFIG_IO_SIZE`] ports on the PIO bus.
#[derive(Debug)]
pub struct ConfigIo {
    bus: Arc<PciBus>,
}

impl ConfigIo {
    /// Mechanism #1 for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        ConfigIo { bus }
    }

    /// The config address for a data-port access at `offset` (4–7), or
    /// `None` if the enable bit is clear or the access is malformed.
    fn data_address(&self, offset: u64, len: usize) -> Option<PciAddress> {
        let lane = offset.checked_sub(4)?;
        if lane.checked_add(len as u64)? > 4 {
            return None;
        }
        let a = self.bus.config_address();
        (a & PCI_CONFIG_ADDRESS_ENABLE != 0).then_some(PciAddress {
            bus: (a >> 16) as u8,
            device: ((a >> 11) & 0x1f) as u8,
            function: ((a >> 8) & 0x7) as u8,
            register: (a & 0xfc) as u16 + lane as u16,
        })
    }

    fn is_address_access(offset: u64, len: usize) -> bool {
        offset == 0 && len == 4
    }

    fn is_data_access(offset: u64, len: usize) -> bool {
        offset >= 4 && offset.saturating_add(len as u64) <= PCI_CONFIG_IO_SIZE
    }
}

impl BusDevice for ConfigIo {
    fn read(&mut self, a: Access, data: &mut [u8]) {
        if Self::is_address_access(a.offset, data.len()) {
            data.copy_from_slice(&self.bus.config_address().to_le_bytes());
        } else if Self::is_data_access(a.offset, data.len()) {
            match self.data_address(a.offset, data.len()) {
                Some(addr) => self.bus.config_read_by(addr, data, Some(a.vcpu)),
                None => data.fill(0xff),
            }
        } else {
            data.fill(0xff);
            self.bus.count_bad_config();
        }
    }

    fn write(&mut self, a: Access, data: &[u8]) {
        if Self::is_address_access(a.offset, data.len()) {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.bus.set_config_address(v & PCI_CONFIG_ADDRESS_MASK);
        } else if Self::is_data_access(a.offset, data.len()) {
            if let Some(addr) = self.data_address(a.offset, data.len()) {
                self.bus.config_write_by(addr, data, Some(a.vcpu));
            }
        } else {
            self.bus.count_bad_config();
        }
    }
}

/// ECAM: register on the MMIO bus at the MCFG base address, for
/// [`PCI_ECAM_SIZE`] bytes (or 1 MiB per bus described).
#[derive(Debug)]
pub struct Ecam {
    bus: Arc<PciBus>,
}

impl Ecam {
    /// ECAM for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Ecam { bus }
    }

    fn address(&self, offset: u64, len: usize) -> Option<PciAddress> {
        let a = PciAddress::from_ecam_offset(offset).filter(|a| {
            usize::from(a.register)
                .checked_add(len)
                .is_some_and(|end| end <= PCI_CFG_SPACE_EXP_SIZE)
        });
        if a.is_none() {
            self.bus.count_bad_config();
        }
        a
    }
}

impl BusDevice for Ecam {
    fn read(&mut self, a: Access, data: &mut [u8]) {
        match self.address(a.offset, data.len()) {
            Some(addr) => self.bus.config_read_by(addr, data, Some(a.vcpu)),
            None => data.fill(0xff),
        }
    }
    fn write(&mut self, a: Access, data: &[u8]) {
        if let Some(addr) = self.address(a.offset, data.len()) {
            self.bus.config_write_by(addr, data, Some(a.vcpu));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::bus::PciWindows;
    use crate::pci::config::{PCI_CLASS_DEVICE, PCI_COMMAND, PCI_VENDOR_ID};
    use crate::pci::testdev::TestDev;
    use std::sync::Mutex;

    fn bus() -> Arc<PciBus> {
        let mut b = PciBus::new(PciWindows {
            mmio_base: 0xc000_0000,
            mmio_size: 0x1000_0000,
            io_base: 0xc000,
            io_size: 0x4000,
        })
        .unwrap();
        b.add_device(3, "test", Arc::new(Mutex::new(TestDev::new())), None)
            .unwrap();
        Arc::new(b)
    }

    fn acc(offset: u64) -> Access {
        Access {
            base: 0,
            offset,
            vcpu: 0,
        }
    }

    fn cf8(io: &mut ConfigIo, dev: u32, func: u32, reg: u32) {
        let v = PCI_CONFIG_ADDRESS_ENABLE | dev << 11 | func << 8 | reg;
        io.write(acc(0), &v.to_le_bytes());
    }

    fn cfc_read(io: &mut ConfigIo, lane: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        io.read(acc(4 + lane), &mut b);
        b
    }

    #[test]
    fn host_bridge_ids_via_mechanism_1() {
        let mut io = ConfigIo::new(bus());
        cf8(&mut io, 0, 0, PCI_VENDOR_ID as u32);
        assert_eq!(cfc_read(&mut io, 0, 4), [0x86, 0x80, 0x57, 0x0d]);
        cf8(&mut io, 0, 0, 0x08);
        assert_eq!(cfc_read(&mut io, 2, 2), [0x00, 0x06]);
        assert_eq!(cfc_read(&mut io, 3, 1), [0x06]);
    }

    #[test]
    fn config_address_register_semantics() {
        let b = bus();
        let mut io = ConfigIo::new(b.clone());
        // Linux's pci_check_type1: a byte write to 0xCFB is not the address.
        io.write(acc(3), &[1]);
        io.write(acc(0), &0x8000_0000u32.to_le_bytes());
        let mut r = [0u8; 4];
        io.read(acc(0), &mut r);
        assert_eq!(u32::from_le_bytes(r), 0x8000_0000);
        // Reserved and low bits are not stored.
        io.write(acc(0), &0xffff_ffffu32.to_le_bytes());
        assert_eq!(b.config_address(), 0x80ff_fffc);
        // Narrow and straddling accesses to the address port.
        let mut w = [0u8; 2];
        io.read(acc(1), &mut w);
        assert_eq!(w, [0xff; 2]);
        let mut w = [0u8; 4];
        io.read(acc(2), &mut w);
        assert_eq!(w, [0xff; 4]);
        assert_eq!(b.stats().bad_config_accesses, 3);
    }

    #[test]
    fn data_port_round_trips_any_lane_and_width() {
        let mut io = ConfigIo::new(bus());
        cf8(&mut io, 3, 0, 0x3c);
        io.write(acc(4), &[0x0b]); // interrupt line
        assert_eq!(cfc_read(&mut io, 0, 1), [0x0b]);
        // Lane 1 of the dword at 0x0c is the latency timer.
        cf8(&mut io, 3, 0, 0x0c);
        io.write(acc(5), &[0x40]);
        assert_eq!(cfc_read(&mut io, 0, 4), [0, 0x40, 0, 0]);
        assert_eq!(cfc_read(&mut io, 1, 3), [0x40, 0, 0]);
        assert_eq!(cfc_read(&mut io, 1, 2), [0x40, 0]);
        // An access running past 0xCFF is malformed (the PIO bus would not
        // deliver it, but the device must still cope).
        let mut b = [0u8; 4];
        io.read(acc(6), &mut b);
        assert_eq!(b, [0xff; 4]);
        io.write(acc(7), &[1, 2]);
        assert_eq!(cfc_read(&mut io, 0, 4), [0, 0x40, 0, 0]);
    }

    #[test]
    fn absent_and_disabled_read_all_ones() {
        let b = bus();
        let mut io = ConfigIo::new(b.clone());
        for (dev, func) in [(1, 0), (31, 0), (3, 1), (0, 7)] {
            cf8(&mut io, dev, func, 0);
            assert_eq!(cfc_read(&mut io, 0, 4), [0xff; 4], "{dev}.{func}");
            io.write(acc(4), &[0; 4]);
        }
        // Bus 1.
        io.write(acc(0), &(PCI_CONFIG_ADDRESS_ENABLE | 1 << 16).to_le_bytes());
        assert_eq!(cfc_read(&mut io, 0, 2), [0xff; 2]);
        // Enable bit clear.
        io.write(acc(0), &0u32.to_le_bytes());
        assert_eq!(cfc_read(&mut io, 0, 4), [0xff; 4]);
        let s = b.stats();
        assert_eq!((s.absent_config_reads, s.absent_config_writes), (5, 4));
    }

    #[test]
    fn ecam_round_trips_and_extended_space() {
        let b = bus();
        let mut e = Ecam::new(b.clone());
        let dev3 = 3 << 15;
        let mut r = [0u8; 4];
        e.read(acc(dev3), &mut r);
        assert_eq!(
            u16::from_le_bytes([r[0], r[1]]),
            crate::pci::testdev::TEST_VENDOR
        );
        e.write(acc(dev3 + PCI_COMMAND as u64), &[0x06, 0]);
        let mut c = [0u8; 3];
        e.read(acc(dev3 + PCI_COMMAND as u64 - 1), &mut c);
        assert_eq!(c[1], 0x06);
        e.read(acc(dev3 + PCI_CLASS_DEVICE as u64 + 1), &mut r[..1]);
        assert_eq!(r[0], crate::pci::testdev::TEST_CLASS);
        // Extended space reads 0 on a present device.
        e.read(acc(dev3 + 0x100), &mut r);
        assert_eq!(r, [0; 4]);
        e.read(acc(dev3 + 0xffc), &mut r);
        assert_eq!(r, [0; 4]);
        // Absent: other slot, function, bus; straddling two functions.
        for off in [4 << 15, dev3 | 1 << 12, 1 << 20, (1 << 28) - 4, 1 << 28] {
            e.read(acc(off), &mut r);
            assert_eq!(r, [0xff; 4], "{off:#x}");
        }
        e.read(acc(dev3 + 0xffe), &mut r);
        assert_eq!(r, [0xff; 4]);
        e.write(acc(dev3 + 0xffe), &r);
        assert_eq!(b.stats().bad_config_accesses, 3);
    }
}
