// Disk test data shared by the guest's virtio-blk tests (`blk_tests.rs`,
// compiled as `mod blk_shared`) and vlab's end-to-end tests
// (`crates/vlab/tests/disk_e2e.rs`, which `include!`s this file): the
// xorshift PRNG, the workload generator and the sector pattern. Plain
// integer code only (no floats: the guest must not use SSE arithmetic);
// no `use`, no inner attributes, no `//!` comments, so it compiles in both
// places.

/// Bytes per virtio-blk sector.
pub const SECTOR: usize = 512;

/// 64-bit words per sector.
pub const SECTOR_WORDS: usize = SECTOR / 8;

/// xorshift64* (Marsaglia's xorshift with Vigna's multiplier). Seed 0 is
/// replaced by a fixed non-zero constant (xorshift's state must not be 0).
#[derive(Clone, Copy, Debug)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    pub const fn new(seed: u64) -> XorShift64 {
        XorShift64 {
            state: if seed == 0 {
                0x9e37_79b9_7f4a_7c15
            } else {
                seed
            },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Access pattern of `test=blk-workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Consecutive blocks from block 0 (wrapping at the span).
    Seq,
    /// Uniformly random blocks in the span.
    Rand,
    /// Each request continues the previous one or jumps to a random block
    /// (one PRNG bit each).
    Mixed,
}

impl Pattern {
    pub fn parse(s: &str) -> Option<Pattern> {
        match s.as_bytes() {
            b"seq" => Some(Pattern::Seq),
            b"rand" => Some(Pattern::Rand),
            b"mixed" => Some(Pattern::Mixed),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Seq => "seq",
            Pattern::Rand => "rand",
            Pattern::Mixed => "mixed",
        }
    }
}

/// One generated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkReq {
    pub lba: u64,
    pub sectors: u32,
    pub write: bool,
}

/// The request stream of `test=blk-workload`: LBAs aligned to `size`
/// sectors within the first `span` sectors (whole blocks only).
///
/// Per request: one PRNG draw decides read/write (`draw % 100 <
/// read_pct` is a read), then `Rand` draws the block (`draw % blocks`);
/// `Mixed` draws once more and continues sequentially if that draw is odd,
/// else draws the block as `Rand` does.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    rng: XorShift64,
    pattern: Pattern,
    size: u32,
    blocks: u64,
    read_pct: u64,
    next_block: u64,
}

impl Workload {
    pub fn new(pattern: Pattern, seed: u64, size: u32, span: u64, read_pct: u64) -> Workload {
        let size = if size == 0 { 1 } else { size };
        let blocks = span / size as u64;
        Workload {
            rng: XorShift64::new(seed),
            pattern,
            size,
            blocks: if blocks == 0 { 1 } else { blocks },
            read_pct,
            next_block: 0,
        }
    }

    pub fn next_req(&mut self) -> WorkReq {
        let write = self.rng.next_u64() % 100 >= self.read_pct;
        let block = match self.pattern {
            Pattern::Seq => self.next_block,
            Pattern::Rand => self.rng.next_u64() % self.blocks,
            Pattern::Mixed => {
                if self.rng.next_u64() & 1 == 1 {
                    self.next_block
                } else {
                    self.rng.next_u64() % self.blocks
                }
            }
        };
        self.next_block = (block + 1) % self.blocks;
        WorkReq {
            lba: block * self.size as u64,
            sectors: self.size,
            write,
        }
    }
}

/// Word `i` (0..64) of the pattern sector `lba` holds for `seed`
/// (`test=blk-write`, `blk-verify`, `blk-storm`, `blk`): word 0 is the
/// LBA, word 1 the seed, the rest an arithmetic sequence whose start and
/// step depend on both (cheap to generate: one add per word).
pub const fn pattern_word(seed: u64, lba: u64, i: usize) -> u64 {
    match i {
        0 => lba,
        1 => seed,
        _ => {
            let (base, step) = pattern_base_step(seed, lba);
            base.wrapping_add(step.wrapping_mul(i as u64))
        }
    }
}

/// Start and step of the arithmetic sequence of [`pattern_word`]: word
/// `i >= 2` is `base + step * i` (wrapping).
pub const fn pattern_base_step(seed: u64, lba: u64) -> (u64, u64) {
    let base = pattern_mix(seed ^ lba.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (base, pattern_mix(base) | 1)
}

/// splitmix64's finaliser.
pub const fn pattern_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
