//! KVM tests with hand-assembled guest code (32-bit protected mode, flat
//! segments, no paging). They need /dev/kvm and fail loudly without it.

use std::sync::{Arc, Mutex};

use devices::bus::{Access, BusDevice};
use vm_memory::{Bytes, GuestAddress};
use vmm::control::StopReason;
use vmm::cpu_setup;
use vmm::vm::{MachineOptions, Vm};

/// Where the test code is placed.
const CODE: u64 = 0x10_0000;
/// Where the code stores results for the test to read back.
const RESULT: u64 = 0x2000;

/// Records accesses; reads answer 0x10, 0x11, ... per byte.
#[derive(Default)]
struct Recorder {
    log: Vec<Logged>,
}

impl BusDevice for Recorder {
    fn read(&mut self, a: Access, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0x10 + i as u8;
        }
        self.log.push((a.offset, data.to_vec(), false));
    }
    fn write(&mut self, a: Access, data: &[u8]) {
        self.log.push((a.offset, data.to_vec(), true));
    }
}

fn machine(irqchip: bool) -> Vm {
    let opts = MachineOptions {
        pci_devices: Vec::new(),
        disks: Vec::new(),
        cpus: 1,
        mem_size: 64 << 20,
        irqchip,
        register_pages: true,
    };
    Vm::new(&opts, Box::new(std::io::sink()))
        .unwrap_or_else(|e| panic!("this test needs a usable /dev/kvm: {e}"))
}

/// One recorded access: offset, bytes, write?
type Logged = (u64, Vec<u8>, bool);

/// Run `code` in 32-bit protected mode; return the stop reason, the
/// recorder's log and the guest memory.
fn run(
    code: &[u8],
    irqchip: bool,
    idt_limit: Option<u16>,
) -> (StopReason, Vec<Logged>, vm_memory::GuestMemoryMmap) {
    let mut vm = machine(irqchip);
    let rec = Arc::new(Mutex::new(Recorder::default()));
    vm.buses_mut()
        .pio
        .insert(rec.clone(), 0x3f0, 4, "recorder")
        .unwrap();
    vm.buses_mut()
        .mmio
        .insert(rec.clone(), 0xd000_1000, 0x100, "recorder")
        .unwrap();
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let mut sregs = vm.boot_sregs().unwrap();
    let regs = cpu_setup::pvh_regs(CODE, 0, &mut sregs);
    if let Some(limit) = idt_limit {
        sregs.idt.base = 0;
        sregs.idt.limit = limit;
    }
    vm.set_boot_regs(&regs, &sregs).unwrap();
    let mem = vm.memory().clone();
    let reason = vm.start().unwrap().wait();
    let log = rec.lock().unwrap().log.clone();
    (reason, log, mem)
}

fn addr32(a: u32) -> [u8; 4] {
    a.to_le_bytes()
}

#[test]
fn port_io_reaches_the_device_with_each_width() {
    let mut code = vec![0x66, 0xba, 0xf1, 0x03]; // mov dx, 0x3f1
    code.extend([0xb8, 0x44, 0x33, 0x22, 0x11]); // mov eax, 0x11223344
    code.push(0xee); // out dx, al
    code.extend([0x66, 0xba, 0xf2, 0x03]); // mov dx, 0x3f2
    code.extend([0x66, 0xef]); // out dx, ax
    code.extend([0x66, 0xba, 0xf0, 0x03]); // mov dx, 0x3f0
    code.push(0xef); // out dx, eax
    code.push(0xed); // in eax, dx
    code.push(0xa3); // mov [RESULT], eax
    code.extend(addr32(RESULT as u32));
    code.push(0xf4); // hlt
    let (reason, log, mem) = run(&code, false, None);
    assert_eq!(reason, StopReason::Halted { vcpu: 0 });
    assert_eq!(
        log,
        vec![
            (1, vec![0x44], true),
            (2, vec![0x44, 0x33], true),
            (0, vec![0x44, 0x33, 0x22, 0x11], true),
            (0, vec![0x10, 0x11, 0x12, 0x13], false),
        ]
    );
    let v: u32 = mem.read_obj(GuestAddress(RESULT)).unwrap();
    assert_eq!(v, 0x1312_1110);
}

#[test]
fn mmio_reaches_the_device_with_each_width() {
    let mut code = vec![0xc7, 0x05]; // mov dword [0xd0001008], 0xaabbccdd
    code.extend(addr32(0xd000_1008));
    code.extend([0xdd, 0xcc, 0xbb, 0xaa]);
    code.extend([0x66, 0xa1]); // mov ax, [0xd0001002]
    code.extend(addr32(0xd000_1002));
    code.extend([0x66, 0xa3]); // mov [RESULT], ax
    code.extend(addr32(RESULT as u32));
    code.extend([0xc6, 0x05]); // mov byte [0xd00010ff], 0x5a
    code.extend(addr32(0xd000_10ff));
    code.push(0x5a);
    code.push(0xf4);
    let (reason, log, mem) = run(&code, false, None);
    assert_eq!(reason, StopReason::Halted { vcpu: 0 });
    assert_eq!(
        log,
        vec![
            (8, vec![0xdd, 0xcc, 0xbb, 0xaa], true),
            (2, vec![0x10, 0x11], false),
            (0xff, vec![0x5a], true),
        ]
    );
    let v: u16 = mem.read_obj(GuestAddress(RESULT)).unwrap();
    assert_eq!(v, 0x1110);
}

#[test]
fn unclaimed_port_reads_float_high_and_the_guest_goes_on() {
    let mut code = vec![0x66, 0xba, 0x34, 0x12]; // mov dx, 0x1234
    code.push(0xed); // in eax, dx
    code.push(0xa3);
    code.extend(addr32(RESULT as u32));
    code.push(0xf4);
    let (reason, log, mem) = run(&code, false, None);
    assert_eq!(reason, StopReason::Halted { vcpu: 0 });
    assert!(log.is_empty());
    let v: u32 = mem.read_obj(GuestAddress(RESULT)).unwrap();
    assert_eq!(v, 0xffff_ffff);
}

#[test]
fn hlt_without_irqchip_stops_the_vm() {
    let (reason, log, _) = run(&[0x90, 0x90, 0xf4], false, None);
    assert_eq!(reason, StopReason::Halted { vcpu: 0 });
    assert!(log.is_empty());
}

#[test]
fn debug_exit_port_ends_the_vm_with_the_guest_status() {
    // mov al, 42; out 0xf4, al; then spin (the stop must come from the port).
    let code = [0xb0, 42, 0xe6, 0xf4, 0xeb, 0xfe];
    let (reason, _, _) = run(&code, true, None);
    assert_eq!(reason, StopReason::GuestExit(42));
}

#[test]
fn triple_fault_is_reported_as_a_crash_with_rip() {
    // An empty IDT and ud2: #UD -> #DF -> triple fault.
    let code = [0x90, 0x0f, 0x0b];
    let (reason, _, _) = run(&code, true, Some(0));
    match reason {
        StopReason::GuestCrash(info) => {
            assert_eq!(info.vcpu, 0);
            assert!(info.what.contains("triple fault"), "{info}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn i8042_reset_command_ends_the_vm_as_a_reset() {
    // mov al, 0xfe; out 0x64, al; jmp $
    let code = [0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];
    let (reason, _, _) = run(&code, true, None);
    assert_eq!(reason, StopReason::GuestReset);
}

#[test]
fn cmos_reports_the_memory_size_to_the_guest() {
    // Read CMOS 0x34/0x35 (64 KiB units above 16 MiB) into RESULT.
    let mut code = vec![0xb0, 0x34, 0xe6, 0x70, 0xe4, 0x71]; // al=cmos[0x34]
    code.extend([0xa2]); // mov [RESULT], al
    code.extend(addr32(RESULT as u32));
    code.extend([0xb0, 0x35, 0xe6, 0x70, 0xe4, 0x71, 0xa2]);
    code.extend(addr32(RESULT as u32 + 1));
    code.push(0xf4);
    let (reason, _, mem) = run(&code, false, None);
    assert_eq!(reason, StopReason::Halted { vcpu: 0 });
    let v: u16 = mem.read_obj(GuestAddress(RESULT)).unwrap();
    assert_eq!(u64::from(v), ((64u64 << 20) - (16 << 20)) >> 16);
}

/// vgpu's BAR0 is a read-only register page: the guest's reads are plain
/// memory reads (no exit), its writes trap to the model, which republishes
/// the page. The guest finds the device through CF8/CFC like firmware.
#[test]
fn register_page_reads_cost_no_exit_and_writes_reach_the_model() {
    use vmm::pci::PciDeviceKind;
    use vmm::vm::{MachineOptions, Vm};
    let opts = MachineOptions {
        pci_devices: vec![PciDeviceKind::Vgpu],
        disks: Vec::new(),
        cpus: 1,
        mem_size: 64 << 20,
        irqchip: true,
        register_pages: true,
    };
    let vm = Vm::new(&opts, Box::new(std::io::sink()))
        .unwrap_or_else(|e| panic!("this test needs a usable /dev/kvm: {e}"));
    let r = RESULT as u32;
    let mut code = Vec::new();
    let cfg = |code: &mut Vec<u8>, reg: u32| {
        code.extend([0x66, 0xba, 0xf8, 0x0c]); // mov dx, 0xcf8
        code.push(0xb8); // mov eax, 0x80000800 | reg (bus 0, dev 1, fn 0)
        code.extend((0x8000_0800u32 | reg).to_le_bytes());
        code.push(0xef); // out dx, eax
        code.extend([0x66, 0xba, 0xfc, 0x0c]); // mov dx, 0xcfc
        code.push(0xed); // in eax, dx
    };
    cfg(&mut code, 0x00);
    code.push(0xa3); // mov [r], eax  (vendor/device)
    code.extend(r.to_le_bytes());
    cfg(&mut code, 0x10);
    code.push(0x25); // and eax, ~0xf
    code.extend(0xffff_fff0u32.to_le_bytes());
    code.push(0xa3); // mov [r+4], eax  (BAR0)
    code.extend((r + 4).to_le_bytes());
    code.extend([0x89, 0xc3]); // mov ebx, eax
    for _ in 0..100 {
        code.extend([0x8b, 0x03]); // mov eax, [ebx]  (REG_ID, from the page)
    }
    code.push(0xa3); // mov [r+8], eax
    code.extend((r + 8).to_le_bytes());
    code.extend([0xc7, 0x43, 0x5c]); // mov dword [ebx+0x5c], 0x12345678 (SCRATCH)
    code.extend(0x1234_5678u32.to_le_bytes());
    code.extend([0x8b, 0x43, 0x5c]); // mov eax, [ebx+0x5c]
    code.push(0xa3); // mov [r+12], eax
    code.extend((r + 12).to_le_bytes());
    code.extend([0xb0, 0x00, 0xe6, 0xf4]); // debug exit 0
    code.extend([0xeb, 0xfe]);
    vm.memory().write_slice(&code, GuestAddress(CODE)).unwrap();
    let mut sregs = vm.boot_sregs().unwrap();
    let regs = cpu_setup::pvh_regs(CODE, 0, &mut sregs);
    vm.set_boot_regs(&regs, &sregs).unwrap();
    let mem = vm.memory().clone();
    let running = vm.start().unwrap();
    let stats = running.handles().buses.clone();
    assert_eq!(running.wait(), StopReason::GuestExit(0));
    let word = |o: u64| -> u32 { mem.read_obj(GuestAddress(RESULT + o)).unwrap() };
    assert_eq!(word(0), 0x0001_7ab5, "vgpu vendor/device through CF8/CFC");
    let bar0 = word(4);
    assert!((0xc000_0000..0xd000_0000).contains(&bar0), "BAR0 {bar0:#x}");
    assert_ne!(word(8), 0, "REG_ID read through the register page");
    assert_eq!(word(12), 0x1234_5678, "SCRATCH written through a trap");
    let mmio_exits = stats.stats.mmio.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        mmio_exits, 1,
        "100 register reads must not exit; only the SCRATCH write traps"
    );
}
