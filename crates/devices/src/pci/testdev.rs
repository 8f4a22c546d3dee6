//! A small PCI function used by the tests: BAR0 32-bit memory (4 KiB, with
//! a register page), BAR1 I/O (32 ports), BAR2 64-bit prefetchable memory
//! (16 KiB, MSI-X table at 0 and PBA at 0x2000), an MSI capability and
//! INTA#. BAR reads return the offset's low byte; writes are recorded.

use std::sync::Arc;

use super::config::{Bar, BarChange, ConfigSpace, PciIds};
use super::device::PciDevice;
use super::msi::{FakeMsiSink, MsiCapability};
use super::msix::{MsixCapability, MsixLayout};
use super::register_page::RegisterPage;

pub const TEST_VENDOR: u16 = 0x1af4;
pub const TEST_DEVICE: u16 = 0x10ff;
pub const TEST_CLASS: u8 = 0xff;

pub struct TestDev {
    pub cfg: ConfigSpace,
    pub msi: MsiCapability,
    pub msix: MsixCapability,
    pub sink: Arc<FakeMsiSink>,
    pub page: Arc<RegisterPage>,
    pub writes: Vec<(usize, u64, Vec<u8>)>,
}

impl TestDev {
    pub fn new() -> Self {
        let mut cfg = ConfigSpace::new(PciIds {
            vendor: TEST_VENDOR,
            device: TEST_DEVICE,
            class: TEST_CLASS,
            ..PciIds::default()
        });
        cfg.add_bar(0, Bar::mem32(0x1000)).unwrap();
        cfg.add_bar(1, Bar::io(32)).unwrap();
        cfg.add_bar(2, Bar::mem64(0x4000, true)).unwrap();
        cfg.set_interrupt_pin(1).unwrap();
        let sink = FakeMsiSink::new();
        let msi = MsiCapability::add(&mut cfg, 1, true, sink.clone()).unwrap();
        let layout = MsixLayout {
            vectors: 4,
            table_bar: 2,
            table_offset: 0,
            pba_bar: 2,
            pba_offset: 0x2000,
        };
        let msix = MsixCapability::add(&mut cfg, layout, sink.clone()).unwrap();
        TestDev {
            cfg,
            msi,
            msix,
            sink,
            page: RegisterPage::new(),
            writes: Vec::new(),
        }
    }
}

impl PciDevice for TestDev {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        let r = self.cfg.write(offset, data);
        self.msi.config_written(&mut self.cfg);
        self.msix.config_written(&self.cfg);
        r
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == 0 {
            self.page.read(offset, data);
        } else if !self.msix.bar_read(bar, offset, data) {
            data.fill(offset as u8);
        }
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if !self.msix.bar_write(&self.cfg, bar, offset, data) {
            self.writes.push((bar, offset, data.to_vec()));
        }
    }
    fn register_page(&self, bar: usize) -> Option<Arc<RegisterPage>> {
        (bar == 0).then(|| self.page.clone())
    }
}
