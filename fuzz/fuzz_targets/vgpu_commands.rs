//! vgpu's command-buffer parser and rasteriser on arbitrary bytes.
#![no_main]

use devices::vgpu::command::parse_and_validate;
use devices::vgpu::raster::execute;
use devices::vgpu::{FbGeometry, VecMemory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = devices::vgpu::parse(data);
    let Some(geom) = FbGeometry::for_mode(64, 48) else {
        return;
    };
    let mem = VecMemory::new(0, 4096);
    let mut fb = vec![0u8; geom.bytes() as usize];
    if let Ok(cmds) = parse_and_validate(data, Some(&geom)) {
        for (_, c) in cmds {
            let _ = execute(&mut fb, &geom, &c, &mem);
        }
    }
});
