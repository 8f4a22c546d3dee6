//! Randomized robustness: random register traffic, random ring and
//! command-buffer contents, random parser input. Nothing may panic and the
//! datasheet's invariants must hold after every access.

use super::*;

/// xorshift64*: deterministic randomness without new dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_register_writes_and_command_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let offsets = [
        REG_CONTROL,
        REG_INT_STATUS,
        REG_INT_MASK,
        REG_MODE_WIDTH,
        REG_MODE_HEIGHT,
        REG_MODE_FORMAT,
        REG_RING_BASE_LO,
        REG_RING_BASE_HI,
        REG_RING_SIZE,
        REG_RING_TAIL,
        REG_DOORBELL,
        REG_SCRATCH,
    ];
    for round in 0..40 {
        let mut r = Rig::new();
        if round % 2 == 0 {
            r.dev.set_msi_enabled(true);
        }
        for i in 0..400 {
            // Random ring contents and command buffers.
            let at = r.mem.base + rng.below(MEM_LEN as u64);
            let len = rng.below(64) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            r.mem.write(at, &junk);
            if rng.below(4) == 0 {
                // A plausible descriptor with random content behind it.
                let tail = rd(&r.dev, REG_RING_TAIL);
                let buf = BUFS + rng.below(0x1_0000) * 4;
                let words: Vec<u8> = (0..rng.below(32) * 4).map(|_| rng.next() as u8).collect();
                r.mem.write(buf, &words);
                let mut d = buf.to_le_bytes().to_vec();
                d.extend((words.len() as u32).to_le_bytes());
                d.extend(0u32.to_le_bytes());
                r.mem.write(RING + u64::from(tail % 8) * 16, &d);
            }
            let off = if rng.below(8) == 0 {
                rng.below(BAR0_SIZE + 16)
            } else {
                offsets[rng.below(offsets.len() as u64) as usize]
            };
            let width = [1, 2, 4, 4, 4, 8, 3][rng.below(7) as usize];
            let value = match rng.below(4) {
                0 => rng.next(),
                1 => rng.below(16),
                2 => u64::from(rd(&r.dev, off & !3)) + 1,
                _ => rng.below(2048),
            };
            r.dev.write_reg(off, width, value);
            let _ = r.dev.read_reg(rng.next(), rng.below(10) as usize);
            if i % 3 == 0 {
                r.run();
            }
            if rng.below(50) == 0 {
                r.dev.set_bus_master(rng.below(2) == 0);
            }
            // Invariants the datasheet promises.
            let st = rd(&r.dev, REG_STATUS);
            assert_eq!(st & STATUS_ERROR != 0, rd(&r.dev, REG_ERROR_CODE) != 0);
            assert!(ErrorCode::from_u32(rd(&r.dev, REG_ERROR_CODE)).is_some());
            let size = rd(&r.dev, REG_RING_SIZE);
            if st & STATUS_ENABLED != 0 {
                assert!(rd(&r.dev, REG_RING_HEAD) < size);
                assert!(rd(&r.dev, REG_RING_TAIL) < size);
            }
            assert_eq!(rd(&r.dev, REG_INT_STATUS) & !INT_VALID, 0);
        }
    }
    // Random bytes straight into the parser.
    for _ in 0..20_000 {
        let len = rng.below(80) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if len >= 4 && rng.below(2) == 0 {
            // Make the header plausible so deeper paths are reached.
            b[1] = 0;
            b[0] %= 6;
            b[2] %= 10;
            b[3] = 0;
        }
        let g = FbGeometry::for_mode(1 + rng.below(1024) as u32, 1 + rng.below(768) as u32);
        let _ = command::parse_and_validate(&b, g.as_ref());
    }
}
