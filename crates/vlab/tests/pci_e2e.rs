//! End-to-end: vlab's guest kernel drives the PCI devices (enumeration,
//! vgpu scene with MSI and INTx compared pixel-exactly with the reference
//! renderer, the buggy-driver variants, edu). Needs /dev/kvm; fails loudly
//! without it.

mod common;

use std::time::Duration;

use common::*;
use devices::vgpu::screenshot::decode_png;
use devices::vgpu::{render_reference, Command, FbGeometry, Rect, VecMemory};
use vmm::arch::layout;

/// The scene, shared with the guest (which `mod`s the same file).
#[allow(dead_code)]
mod scene {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../guest/src/scene_data.rs"
    ));
}

const T: Duration = Duration::from_secs(120);

/// Run `vlab run ARGS --cmdline CMDLINE`; returns (exit code, stdout).
fn run(extra: &[&str], cmdline: &str) -> (Option<i32>, String) {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--cmdline", cmdline]);
    let o = run_vlab(&args, T);
    let out = stdout(&o);
    let all = format!("stdout:\n{out}\nstderr:\n{}", stderr(&o));
    (o.status.code(), all)
}

/// `barN=0x...` of a `pci` line.
fn bar(line: &str, n: usize) -> Option<u64> {
    let v = field(line, &format!("bar{n}"))?;
    u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()
}

#[test]
fn pci_enumeration_lists_host_bridge_and_vgpu() {
    let (code, out) = run(&[], "test=pci");
    assert_eq!(code, Some(0), "{out}");
    let lines = guest_lines(&out, "pci 00:");
    let host = lines
        .iter()
        .find(|l| l.starts_with("pci 00:00.0 8086:0d57 class 06/00"))
        .unwrap_or_else(|| panic!("no host bridge line\n{out}"));
    assert!(host.contains("irq=none msi=none"), "{out}");
    let vgpu = lines
        .iter()
        .find(|l| l.starts_with("pci 00:01.0 7ab5:0001 class 03/80"))
        .unwrap_or_else(|| panic!("no vgpu line\n{out}"));
    let window = layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE;
    let bar0 = bar(vgpu, 0).unwrap_or_else(|| panic!("no bar0\n{out}"));
    let bar2 = bar(vgpu, 2).unwrap_or_else(|| panic!("no bar2\n{out}"));
    assert!(
        window.contains(&bar0) && bar0.is_multiple_of(0x1000),
        "{out}"
    );
    assert!(
        window.contains(&bar2)
            && window.contains(&(bar2 + (4 << 20) - 1))
            && bar2.is_multiple_of(4 << 20),
        "{out}"
    );
    assert_eq!(
        field(vgpu, "irq"),
        Some("16"),
        "slot 1 INTA -> GSI 16\n{out}"
    );
    assert_ne!(field(vgpu, "msi"), Some("none"), "{out}");
    assert_eq!(field(vgpu, "name"), Some("vgpu"), "{out}");
    let n = guest_lines(&out, "pci done functions=");
    assert_eq!(n.len(), 1, "{out}");
    assert_eq!(
        lines.len().to_string(),
        field(&n[0], "functions").unwrap(),
        "{out}"
    );
}

#[test]
fn pci_bare_bus_has_only_the_host_bridge() {
    let (code, out) = run(&["--device", "none"], "test=pci");
    assert_eq!(code, Some(0), "{out}");
    let lines = guest_lines(&out, "pci 00:");
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with("pci 00:00.0 8086:0d57 class 06/00"),
        "{out}"
    );
    assert!(out.contains("vlab-guest: pci done functions=1"), "{out}");
}

#[test]
fn hello_devices_line_lists_pci_functions() {
    let (code, out) = run(&["--device", "vgpu"], "test=hello");
    assert_eq!(code, Some(0), "{out}");
    let devices = guest_lines(&out, "devices:");
    assert_eq!(devices.len(), 1, "{out}");
    let words: Vec<&str> = devices[0].split_whitespace().collect();
    for d in ["pci:00:8086:0d57(host-bridge)", "pci:01:7ab5:0001(vgpu)"] {
        assert!(words.contains(&d), "{d} missing\n{out}");
    }
}

/// The scene as vgpu commands, and the memory its uploads read from.
fn scene_commands() -> (Vec<Command>, VecMemory) {
    const IMAGE_ADDR: u64 = 0x10_0000;
    let (iw, ih) = (scene::IMAGE_WIDTH, scene::IMAGE_HEIGHT);
    let mut image = Vec::new();
    for y in 0..ih {
        for x in 0..iw {
            image.extend_from_slice(&scene::image_pixel(x, y).to_le_bytes());
        }
    }
    let mut mem = VecMemory::new(IMAGE_ADDR, image.len());
    assert!(mem.write(IMAGE_ADDR, &image));
    let mut fence = 0;
    let cmds = scene::SCENE
        .iter()
        .map(|op| match *op {
            scene::SceneOp::Fill { x, y, w, h, color } => Command::FillRect {
                rect: Rect { x, y, w, h },
                color,
            },
            scene::SceneOp::Copy {
                sx,
                sy,
                dx,
                dy,
                w,
                h,
            } => Command::CopyRect {
                src_x: sx,
                src_y: sy,
                rect: Rect { x: dx, y: dy, w, h },
            },
            scene::SceneOp::Upload { x, y } => Command::UploadImage {
                rect: Rect { x, y, w: iw, h: ih },
                src_addr: IMAGE_ADDR,
                src_stride: iw * 4,
            },
            scene::SceneOp::Fence => {
                fence += 1;
                Command::Fence { value: fence }
            }
        })
        .collect();
    (cmds, mem)
}

/// The reference image of the scene as RGB bytes (what the PNG holds).
fn reference_rgb() -> Vec<u8> {
    let geom = FbGeometry::for_mode(scene::SCENE_WIDTH, scene::SCENE_HEIGHT).unwrap();
    let (cmds, mem) = scene_commands();
    let fb = render_reference(&geom, &cmds, &mem).expect("reference render");
    let mut rgb = Vec::new();
    for y in 0..geom.height as usize {
        let row = &fb[y * geom.stride as usize..][..geom.width as usize * 4];
        for px in row.chunks_exact(4) {
            rgb.extend_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    rgb
}

fn scene_fences() -> u32 {
    scene::SCENE
        .iter()
        .filter(|op| matches!(op, scene::SceneOp::Fence))
        .count() as u32
}

fn check_scene(irq: &str) {
    let png = temp_file(&format!("scene-{irq}.png"), b"");
    let png_arg = png.to_str().unwrap();
    let (code, out) = run(
        &["--screenshot", png_arg],
        &format!("test=vgpu-scene irq={irq}"),
    );
    assert_eq!(code, Some(0), "{out}");
    let done = guest_lines(&out, "vgpu scene done");
    assert_eq!(done.len(), 1, "{out}");
    let fences: u32 = field(&done[0], "fences").unwrap().parse().unwrap();
    let irqs: u32 = field(&done[0], "irqs").unwrap().parse().unwrap();
    assert_eq!(fences, scene_fences(), "{out}");
    // MSI: one message per fence, the driver waits for each before the
    // next (interrupts with INT_STATUS = 0 are counted as `spurious`).
    // INTx is a level: a fence that completes while the line is still
    // asserted for the previous one shares its interrupt.
    if irq == "msi" {
        assert_eq!(irqs, fences, "{out}");
    } else {
        assert!((1..=fences).contains(&irqs), "{out}");
    }
    assert!(out.contains(&format!("irq={irq}")), "{out}");

    let data = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}\n{out}", png.display()));
    let (w, h, rgb) = decode_png(&data).expect("decode screenshot");
    assert_eq!((w, h), (scene::SCENE_WIDTH, scene::SCENE_HEIGHT), "{out}");
    let want = reference_rgb();
    assert_eq!(rgb.len(), want.len());
    if let Some(i) = rgb.iter().zip(&want).position(|(a, b)| a != b) {
        let px = i / 3;
        let (x, y) = (px as u32 % w, px as u32 / w);
        panic!(
            "screenshot differs from the reference at ({x}, {y}): got {:02x?} want {:02x?}\n{out}",
            &rgb[px * 3..px * 3 + 3],
            &want[px * 3..px * 3 + 3]
        );
    }
}

#[test]
fn vgpu_scene_msi_matches_reference() {
    check_scene("msi");
}

#[test]
fn vgpu_scene_intx_matches_reference() {
    check_scene("intx");
}

fn check_bug(name: &str, error: &str) {
    let (code, out) = run(&[], &format!("test=vgpu-bug name={name}"));
    assert_eq!(code, Some(0), "{out}");
    let lines = guest_lines(&out, &format!("vgpu-bug {name} error="));
    assert!(!lines.is_empty(), "{out}");
    for l in &lines {
        assert_eq!(field(l, "error"), Some(error), "{out}");
    }
    assert!(
        out.contains(&format!("vlab-guest: vgpu-bug {name} ok")),
        "{out}"
    );
}

#[test]
fn vgpu_bug_no_bus_master() {
    check_bug("no-bus-master", "NO_BUS_MASTER");
}

#[test]
fn vgpu_bug_bad_ring() {
    check_bug("bad-ring", "BAD_RING");
}

#[test]
fn vgpu_bug_dma_outside_ram() {
    check_bug("dma-outside-ram", "DMA_FAULT");
}

#[test]
fn vgpu_bug_no_ack() {
    check_bug("no-ack", "NONE");
}

#[test]
fn vgpu_bug_wrong_width() {
    check_bug("wrong-width", "WRONG_WIDTH");
}

#[test]
fn vgpu_bug_mode_while_busy() {
    check_bug("mode-while-busy", "BAD_STATE");
}

#[test]
fn vgpu_bug_unknown_name_fails() {
    let (code, out) = run(&[], "test=vgpu-bug name=nonsense");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL vgpu-bug: unknown name=nonsense"),
        "{out}"
    );
}

fn check_edu(irq: Option<&str>) {
    let cmdline = match irq {
        Some(m) => format!("test=edu irq={m}"),
        None => "test=edu".to_string(),
    };
    let (code, out) = run(&["--device", "edu"], &cmdline);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "vlab-guest: edu id=0x010000ed liveness ok factorial(12)=479001600 irq ok dma ok"
        ),
        "{out}"
    );
    let mode = guest_lines(&out, "edu irq=");
    assert_eq!(mode.len(), 1, "{out}");
    assert_eq!(field(&mode[0], "irq"), Some(irq.unwrap_or("msi")), "{out}");
}

#[test]
fn edu_driver_msi() {
    check_edu(None);
}

#[test]
fn edu_driver_intx() {
    check_edu(Some("intx"));
}

#[test]
fn edu_enumerates_in_slot_1_alone() {
    let (code, out) = run(&["--device", "edu"], "test=pci");
    assert_eq!(code, Some(0), "{out}");
    let lines = guest_lines(&out, "pci 00:01.0 1234:11e8 class ff/00");
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(field(&lines[0], "name"), Some("edu"), "{out}");
}

/// `vgpu-poll` runs its loop in ring 0 and in ring 3 (the register page
/// mapped into the guest's user window); both read STATUS = IDLE (0x4)
/// without an exit, the ring-3 excursion ends at its own `ud2`.
#[test]
fn vgpu_poll_reads_status_in_kernel_and_user_mode() {
    let (code, out) = run(&["--device", "vgpu", "-v"], "test=vgpu-poll n=500");
    assert_eq!(code, Some(0), "{out}");
    for mode in ["kernel", "user"] {
        let lines = guest_lines(&out, &format!("vgpu-poll mode={mode} "));
        assert_eq!(lines.len(), 1, "{out}");
        assert_eq!(field(&lines[0], "n"), Some("500"), "{out}");
        assert_eq!(field(&lines[0], "status"), Some("0x4"), "{out}");
        let ns: u64 = field(&lines[0], "status_ns").unwrap().parse().unwrap();
        assert!(ns > 0, "{out}");
    }
    // Probe and reset only: the 2 × 500 STATUS reads hit the page.
    let mmio: u64 = out
        .split(" MMIO,")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exit summary in {out}"));
    assert!(mmio < 500, "{mmio} MMIO exits: {out}");
}
