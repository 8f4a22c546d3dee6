// The vgpu test scene: defined once, here, and used by
//   * the guest (`mod scene_data` in guest/src/main.rs): `test=vgpu-scene`
//     encodes it into vgpu command buffers (guest/src/vgpu.rs);
//   * the host test crates/vlab/tests/pci_e2e.rs, which `include!`s this
//     file, maps it to `devices::vgpu::Command`s and renders the reference
//     image with `devices::vgpu::render_reference`.
// Keep it plain `const` data and `const fn`s with no `use` and no inner
// attributes or `//!` comments, so that it compiles in both places.

/// Scene mode: width in pixels.
pub const SCENE_WIDTH: u32 = 320;
/// Scene mode: height in pixels.
pub const SCENE_HEIGHT: u32 = 200;
/// Size of the image uploaded by [`SceneOp::Upload`].
pub const IMAGE_WIDTH: u32 = 16;
/// Height of the uploaded image.
pub const IMAGE_HEIGHT: u32 = 12;

/// One step of the scene. Each batch of drawing operations ends with a
/// [`SceneOp::Fence`]; the n-th fence (from 1) has the value n.
#[derive(Clone, Copy)]
pub enum SceneOp {
    /// FILL_RECT.
    Fill {
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        color: u32,
    },
    /// COPY_RECT from (sx, sy) to (dx, dy).
    Copy {
        sx: u32,
        sy: u32,
        dx: u32,
        dy: u32,
        w: u32,
        h: u32,
    },
    /// UPLOAD_IMAGE of the IMAGE_WIDTH x IMAGE_HEIGHT image of
    /// [`image_pixel`] (source stride IMAGE_WIDTH * 4) to (x, y).
    Upload { x: u32, y: u32 },
    /// FENCE with the next sequence number; ends a batch.
    Fence,
}

/// Pixel (x, y) of the uploaded image, XRGB8888 (the X byte is set on
/// purpose: it must be ignored by screenshots).
pub const fn image_pixel(x: u32, y: u32) -> u32 {
    let r = (x * 16) & 0xff;
    let g = (y * 21) & 0xff;
    let b = ((x ^ y) * 16) & 0xff;
    0x5a00_0000 | r << 16 | g << 8 | b
}

/// The scene: 4 batches, 4 fences.
pub const SCENE: &[SceneOp] = &[
    // Batch 1: background and overlapping rectangles.
    SceneOp::Fill {
        x: 0,
        y: 0,
        w: SCENE_WIDTH,
        h: SCENE_HEIGHT,
        color: 0x0020_2040,
    },
    SceneOp::Fill {
        x: 10,
        y: 10,
        w: 100,
        h: 60,
        color: 0x00ff_0000,
    },
    SceneOp::Fill {
        x: 60,
        y: 40,
        w: 120,
        h: 80,
        color: 0x0000_ff00,
    },
    SceneOp::Fill {
        x: 200,
        y: 20,
        w: 100,
        h: 100,
        color: 0xff00_00ff,
    },
    SceneOp::Fill {
        x: 0,
        y: SCENE_HEIGHT - 1,
        w: SCENE_WIDTH,
        h: 1,
        color: 0x00ff_ffff,
    },
    SceneOp::Fence,
    // Batch 2: images and a plain copy.
    SceneOp::Upload { x: 20, y: 130 },
    SceneOp::Upload {
        x: SCENE_WIDTH - IMAGE_WIDTH,
        y: SCENE_HEIGHT - IMAGE_HEIGHT - 1,
    },
    SceneOp::Copy {
        sx: 10,
        sy: 10,
        dx: 130,
        dy: 130,
        w: 60,
        h: 40,
    },
    SceneOp::Fence,
    // Batch 3: an overlapping copy (memmove semantics), an empty rectangle.
    SceneOp::Copy {
        sx: 180,
        sy: 30,
        dx: 190,
        dy: 40,
        w: 80,
        h: 80,
    },
    SceneOp::Fill {
        x: 5,
        y: 5,
        w: 0,
        h: 0,
        color: 0x00ff_00ff,
    },
    SceneOp::Fill {
        x: 150,
        y: 0,
        w: 3,
        h: SCENE_HEIGHT - 1,
        color: 0x00ff_ff00,
    },
    SceneOp::Fence,
    // Batch 4: copy an uploaded image to the top-right corner.
    SceneOp::Copy {
        sx: 20,
        sy: 130,
        dx: 250,
        dy: 0,
        w: IMAGE_WIDTH,
        h: IMAGE_HEIGHT,
    },
    SceneOp::Fence,
];
