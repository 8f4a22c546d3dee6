//! vgpu BAR0 register map, bits, reset values and error codes.
//!
//! Names follow `docs/devices/vgpu.md` (the datasheet); every constant here
//! is a row or a bit there. BAR0 is one 4 KiB page of 32-bit registers; the
//! whole page is the *register page*: reads never have side effects, so a VMM
//! may map a snapshot of it into the guest read-only.

/// PCI vendor ID of vlab's own devices (not assigned by the PCI-SIG; only
/// for virtual hardware inside vlab).
pub const VGPU_VENDOR_ID: u16 = 0x7AB5;
/// PCI device ID of vgpu.
pub const VGPU_DEVICE_ID: u16 = 0x0001;
/// PCI class code: display controller.
pub const VGPU_CLASS: u8 = 0x03;
/// PCI subclass: other display controller.
pub const VGPU_SUBCLASS: u8 = 0x80;
/// PCI programming interface.
pub const VGPU_PROG_IF: u8 = 0x00;
/// PCI revision ID.
pub const VGPU_REVISION: u8 = 1;

/// Size of BAR0 (registers), bytes: one page.
pub const BAR0_SIZE: u64 = 0x1000;
/// Size of BAR2 (linear framebuffer), bytes.
pub const BAR2_SIZE: u64 = 0x40_0000;
/// Number of 32-bit words in the register page.
pub const REG_PAGE_DWORDS: usize = 1024;

/// Largest mode width, pixels.
pub const MAX_WIDTH: u32 = 1024;
/// Largest mode height, pixels.
pub const MAX_HEIGHT: u32 = 768;
/// Bytes per pixel of [`FORMAT_XRGB8888`].
pub const BYTES_PER_PIXEL: u32 = 4;
/// MODE_STRIDE is the row size rounded up to this many bytes.
pub const STRIDE_ALIGN: u32 = 64;

/// Device major version (VERSION bits 31:16).
pub const VERSION_MAJOR: u32 = 1;
/// Device minor version (VERSION bits 15:0).
pub const VERSION_MINOR: u32 = 0;

// ---- Register offsets (bytes into BAR0) -------------------------------

/// RO: `DEVICE_ID << 16 | VENDOR_ID`.
pub const REG_ID: u64 = 0x000;
/// RO: `MAJOR << 16 | MINOR`.
pub const REG_VERSION: u64 = 0x004;
/// RO: size of the framebuffer BAR (BAR2) in bytes.
pub const REG_FB_SIZE: u64 = 0x008;
/// RO: `MAX_HEIGHT << 16 | MAX_WIDTH`.
pub const REG_MAX_SIZE: u64 = 0x00C;
/// RO: device status (`STATUS_*`).
pub const REG_STATUS: u64 = 0x010;
/// RW: control (`CONTROL_*`).
pub const REG_CONTROL: u64 = 0x014;
/// RW1C: pending interrupt causes (`INT_*`).
pub const REG_INT_STATUS: u64 = 0x018;
/// RW: interrupt enables (`INT_*`), 1 = enabled.
pub const REG_INT_MASK: u64 = 0x01C;
/// RO: first error since the last clear (`ERR_*`).
pub const REG_ERROR_CODE: u64 = 0x020;
/// RO: address belonging to ERROR_CODE, bits 31:0.
pub const REG_ERROR_ADDR_LO: u64 = 0x024;
/// RO: address belonging to ERROR_CODE, bits 63:32.
pub const REG_ERROR_ADDR_HI: u64 = 0x028;
/// RO: number of errors since the last clear (saturating).
pub const REG_ERROR_COUNT: u64 = 0x02C;
/// RW (idle only): visible width in pixels, 0 = no mode.
pub const REG_MODE_WIDTH: u64 = 0x030;
/// RW (idle only): visible height in pixels, 0 = no mode.
pub const REG_MODE_HEIGHT: u64 = 0x034;
/// RW (idle only): pixel format (`FORMAT_*`).
pub const REG_MODE_FORMAT: u64 = 0x038;
/// RO: bytes between the starts of two framebuffer rows, 0 = no mode.
pub const REG_MODE_STRIDE: u64 = 0x03C;
/// RW (disabled only): ring base guest-physical address, bits 31:0.
pub const REG_RING_BASE_LO: u64 = 0x040;
/// RW (disabled only): ring base guest-physical address, bits 63:32.
pub const REG_RING_BASE_HI: u64 = 0x044;
/// RW (disabled only): ring size in descriptors (power of two).
pub const REG_RING_SIZE: u64 = 0x048;
/// RO: index of the next descriptor the engine will execute.
pub const REG_RING_HEAD: u64 = 0x04C;
/// RW (enabled only): index one past the last descriptor the driver wrote.
pub const REG_RING_TAIL: u64 = 0x050;
/// WO (enabled only): any value hands RING_TAIL to the engine; reads 0.
pub const REG_DOORBELL: u64 = 0x054;
/// RO: value of the last FENCE command executed.
pub const REG_FENCE_COMPLETED: u64 = 0x058;
/// RW: free for the driver; no effect.
pub const REG_SCRATCH: u64 = 0x05C;

// ---- STATUS bits ---------------------------------------------------------

/// CONTROL.ENABLE is set and the ring was accepted.
pub const STATUS_ENABLED: u32 = 1 << 0;
/// The engine has submitted work it has not finished and is not halted.
pub const STATUS_ENGINE_BUSY: u32 = 1 << 1;
/// RING_HEAD equals the tail handed over by the last DOORBELL.
pub const STATUS_RING_EMPTY: u32 = 1 << 2;
/// An error is latched in ERROR_CODE; the engine is halted.
pub const STATUS_ERROR: u32 = 1 << 3;
/// MODE_WIDTH/HEIGHT/FORMAT describe a valid mode.
pub const STATUS_MODE_SET: u32 = 1 << 4;
/// Mirror of the PCI command register's Bus Master Enable bit.
pub const STATUS_BUS_MASTER: u32 = 1 << 5;
/// INT_STATUS & INT_MASK != 0.
pub const STATUS_INT_PENDING: u32 = 1 << 6;

// ---- CONTROL bits -------------------------------------------------------

/// RW: enable the command engine (0→1 validates the ring and zeroes head/tail).
pub const CONTROL_ENABLE: u32 = 1 << 0;
/// Action (reads 0): reset the whole device to its reset state.
pub const CONTROL_RESET: u32 = 1 << 1;
/// Action (reads 0): clear the latched error and resume the engine.
pub const CONTROL_CLEAR_ERROR: u32 = 1 << 2;
/// Bits of CONTROL a driver may set.
pub const CONTROL_VALID: u32 = CONTROL_ENABLE | CONTROL_RESET | CONTROL_CLEAR_ERROR;

// ---- INT_STATUS / INT_MASK bits -----------------------------------------

/// A FENCE command completed.
pub const INT_FENCE: u32 = 1 << 0;
/// An error was latched.
pub const INT_ERROR: u32 = 1 << 1;
/// The engine drained the ring (RING_HEAD reached the tail).
pub const INT_IDLE: u32 = 1 << 2;
/// Bits of INT_STATUS / INT_MASK that exist.
pub const INT_VALID: u32 = INT_FENCE | INT_ERROR | INT_IDLE;

// ---- MODE_FORMAT values --------------------------------------------------

/// No format (reset value).
pub const FORMAT_NONE: u32 = 0;
/// 32 bits per pixel, little-endian `0xXXRRGGBB` (bytes B, G, R, X).
pub const FORMAT_XRGB8888: u32 = 1;

// ---- Ring -----------------------------------------------------------------

/// Size of one ring descriptor, bytes.
pub const DESC_SIZE: u64 = 16;
/// Required alignment of RING_BASE, bytes.
pub const RING_ALIGN: u64 = 16;
/// Smallest RING_SIZE, descriptors.
pub const RING_SIZE_MIN: u32 = 2;
/// Largest RING_SIZE, descriptors.
pub const RING_SIZE_MAX: u32 = 4096;
/// Largest command buffer a descriptor may point at, bytes.
pub const CMD_BUFFER_MAX: u32 = 64 * 1024;

/// Reset value of a register, as read from the register page.
pub fn reset_value(offset: u64) -> u32 {
    match offset {
        REG_ID => (u32::from(VGPU_DEVICE_ID) << 16) | u32::from(VGPU_VENDOR_ID),
        REG_VERSION => (VERSION_MAJOR << 16) | VERSION_MINOR,
        REG_FB_SIZE => BAR2_SIZE as u32,
        REG_MAX_SIZE => (MAX_HEIGHT << 16) | MAX_WIDTH,
        REG_STATUS => STATUS_RING_EMPTY,
        _ => 0,
    }
}

/// How a register may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegAccess {
    /// Read-only: a write is error [`ErrorCode::ReadOnly`].
    ReadOnly,
    /// Read/write.
    ReadWrite,
    /// Write 1 to clear.
    ReadWrite1Clear,
    /// Write-only (reads 0).
    WriteOnly,
}

/// The register at `offset` (must be 4-byte aligned), if there is one.
pub fn reg_access(offset: u64) -> Option<RegAccess> {
    use RegAccess::*;
    Some(match offset {
        REG_ID | REG_VERSION | REG_FB_SIZE | REG_MAX_SIZE | REG_STATUS => ReadOnly,
        REG_ERROR_CODE | REG_ERROR_ADDR_LO | REG_ERROR_ADDR_HI | REG_ERROR_COUNT => ReadOnly,
        REG_MODE_STRIDE | REG_RING_HEAD | REG_FENCE_COMPLETED => ReadOnly,
        REG_CONTROL | REG_INT_MASK | REG_MODE_WIDTH | REG_MODE_HEIGHT | REG_MODE_FORMAT => {
            ReadWrite
        }
        REG_RING_BASE_LO | REG_RING_BASE_HI | REG_RING_SIZE | REG_RING_TAIL | REG_SCRATCH => {
            ReadWrite
        }
        REG_INT_STATUS => ReadWrite1Clear,
        REG_DOORBELL => WriteOnly,
        _ => return None,
    })
}

/// The datasheet name of the register at `offset`, for traces and monitors.
pub fn reg_name(offset: u64) -> Option<&'static str> {
    Some(match offset {
        REG_ID => "ID",
        REG_VERSION => "VERSION",
        REG_FB_SIZE => "FB_SIZE",
        REG_MAX_SIZE => "MAX_SIZE",
        REG_STATUS => "STATUS",
        REG_CONTROL => "CONTROL",
        REG_INT_STATUS => "INT_STATUS",
        REG_INT_MASK => "INT_MASK",
        REG_ERROR_CODE => "ERROR_CODE",
        REG_ERROR_ADDR_LO => "ERROR_ADDR_LO",
        REG_ERROR_ADDR_HI => "ERROR_ADDR_HI",
        REG_ERROR_COUNT => "ERROR_COUNT",
        REG_MODE_WIDTH => "MODE_WIDTH",
        REG_MODE_HEIGHT => "MODE_HEIGHT",
        REG_MODE_FORMAT => "MODE_FORMAT",
        REG_MODE_STRIDE => "MODE_STRIDE",
        REG_RING_BASE_LO => "RING_BASE_LO",
        REG_RING_BASE_HI => "RING_BASE_HI",
        REG_RING_SIZE => "RING_SIZE",
        REG_RING_HEAD => "RING_HEAD",
        REG_RING_TAIL => "RING_TAIL",
        REG_DOORBELL => "DOORBELL",
        REG_FENCE_COMPLETED => "FENCE_COMPLETED",
        REG_SCRATCH => "SCRATCH",
        _ => return None,
    })
}

/// Values of ERROR_CODE. 0 means no error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// No error latched.
    None = 0x00,
    /// A BAR0 write that is not a 4-byte access at a 4-byte aligned offset.
    WrongWidth = 0x01,
    /// A write to an offset with no register.
    UnknownRegister = 0x02,
    /// A write to a read-only register.
    ReadOnly = 0x03,
    /// A register written in a state where the datasheet forbids it.
    BadState = 0x04,
    /// A register or command with reserved bits set.
    ReservedBits = 0x05,
    /// MODE_WIDTH/HEIGHT/FORMAT value out of range.
    BadMode = 0x06,
    /// Ring base/size invalid when CONTROL.ENABLE was set.
    BadRing = 0x07,
    /// RING_TAIL written with a value >= RING_SIZE.
    BadTail = 0x08,
    /// Work pending while the PCI Bus Master Enable bit is clear.
    NoBusMaster = 0x10,
    /// A DMA read outside guest memory.
    DmaFault = 0x11,
    /// A descriptor with a bad length, alignment or flags.
    BadDescriptor = 0x12,
    /// A command with an opcode the device does not know.
    UnknownOpcode = 0x20,
    /// A command whose length field is 0 or wrong for its opcode.
    BadLength = 0x21,
    /// A command that runs past the end of its command buffer.
    Truncated = 0x22,
    /// A drawing command while no mode is set.
    NoMode = 0x23,
    /// A rectangle not entirely inside the visible framebuffer.
    RectOutOfBounds = 0x24,
    /// UPLOAD_IMAGE stride smaller than a row of the image.
    StrideTooSmall = 0x25,
    /// UPLOAD_IMAGE source range wraps around the 64-bit address space.
    SourceOverflow = 0x26,
}

impl ErrorCode {
    /// The register value.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The datasheet name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "NONE",
            ErrorCode::WrongWidth => "WRONG_WIDTH",
            ErrorCode::UnknownRegister => "UNKNOWN_REGISTER",
            ErrorCode::ReadOnly => "READ_ONLY",
            ErrorCode::BadState => "BAD_STATE",
            ErrorCode::ReservedBits => "RESERVED_BITS",
            ErrorCode::BadMode => "BAD_MODE",
            ErrorCode::BadRing => "BAD_RING",
            ErrorCode::BadTail => "BAD_TAIL",
            ErrorCode::NoBusMaster => "NO_BUS_MASTER",
            ErrorCode::DmaFault => "DMA_FAULT",
            ErrorCode::BadDescriptor => "BAD_DESCRIPTOR",
            ErrorCode::UnknownOpcode => "UNKNOWN_OPCODE",
            ErrorCode::BadLength => "BAD_LENGTH",
            ErrorCode::Truncated => "TRUNCATED",
            ErrorCode::NoMode => "NO_MODE",
            ErrorCode::RectOutOfBounds => "RECT_OUT_OF_BOUNDS",
            ErrorCode::StrideTooSmall => "STRIDE_TOO_SMALL",
            ErrorCode::SourceOverflow => "SOURCE_OVERFLOW",
        }
    }

    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::None,
        ErrorCode::WrongWidth,
        ErrorCode::UnknownRegister,
        ErrorCode::ReadOnly,
        ErrorCode::BadState,
        ErrorCode::ReservedBits,
        ErrorCode::BadMode,
        ErrorCode::BadRing,
        ErrorCode::BadTail,
        ErrorCode::NoBusMaster,
        ErrorCode::DmaFault,
        ErrorCode::BadDescriptor,
        ErrorCode::UnknownOpcode,
        ErrorCode::BadLength,
        ErrorCode::Truncated,
        ErrorCode::NoMode,
        ErrorCode::RectOutOfBounds,
        ErrorCode::StrideTooSmall,
        ErrorCode::SourceOverflow,
    ];

    /// The code with register value `v`, if any.
    pub fn from_u32(v: u32) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_u32() == v)
    }
}

/// MODE_STRIDE for a width: the row size rounded up to [`STRIDE_ALIGN`].
pub fn stride_for(width: u32) -> u32 {
    let row = width.saturating_mul(BYTES_PER_PIXEL);
    row.div_ceil(STRIDE_ALIGN).saturating_mul(STRIDE_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_mode_fits_the_framebuffer_bar() {
        let bytes = u64::from(stride_for(MAX_WIDTH)) * u64::from(MAX_HEIGHT);
        assert!(bytes <= BAR2_SIZE);
        assert!(BAR2_SIZE.is_power_of_two() && BAR0_SIZE.is_power_of_two());
        assert_eq!(stride_for(1000), 4032);
        assert_eq!(stride_for(1024), 4096);
        assert_eq!(stride_for(1), 64);
    }

    #[test]
    fn error_codes_round_trip_and_have_names() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(c.as_u32()), Some(c));
            assert!(!c.name().is_empty());
        }
        assert_eq!(ErrorCode::from_u32(0xdead), None);
    }

    #[test]
    fn every_named_register_has_an_access_kind() {
        for off in (0..BAR0_SIZE).step_by(4) {
            assert_eq!(
                reg_name(off).is_some(),
                reg_access(off).is_some(),
                "{off:#x}"
            );
        }
        assert_eq!(reset_value(REG_ID), 0x0001_7AB5);
    }
}
