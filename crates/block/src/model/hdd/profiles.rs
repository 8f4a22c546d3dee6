//! Built-in disk profiles. Every constant names its source; see
//! `docs/disk-models.md` for the discussion.

use super::{CacheParams, HddParams, Overheads, SeekCurve, WritePolicy, Zone};

impl HddParams {
    /// HP 97560 (1.3 GB, 5.25", SCSI-II), as characterised in C. Ruemmler
    /// and J. Wilkes, "An introduction to disk drive modeling", IEEE
    /// Computer 27(3), March 1994, Table 1. The same values appear in the
    /// Kotz/Toh/Radhakrishnan replication (Dartmouth PCS-TR94-220, 1994) and
    /// in the FSS/Hecios `HP97560Disk` model, which transcribe Table 1.
    pub fn hp97560() -> Self {
        HddParams {
            name: "hdd:hp97560".into(),
            // R&W Table 1: 1962 cylinders, 19 data heads, 72 sectors/track.
            cylinders: 1962,
            heads: 19,
            // R&W Table 1: 4002 RPM.
            rpm: 4002.0,
            zones: vec![Zone {
                first_cyl: 0,
                last_cyl: 1961,
                // R&W Table 1: 72 sectors per track, one zone.
                sectors_per_track: 72,
                // R&W Table 1: track skew 8 sectors, cylinder skew 18.
                track_skew: 8,
                cyl_skew: 18,
            }],
            // No sparing modelled (R&W: track sparing); full geometry.
            capacity_sectors: None,
            // R&W Table 1: short seeks 3.24 + 0.400·√d ms (d < 383),
            // long seeks 8.00 + 0.008·d ms.
            seek: SeekCurve::TwoPiece {
                a_ms: 3.24,
                b_ms: 0.400,
                c_ms: 8.00,
                e_ms: 0.008,
                boundary: 383,
            },
            // R&W Table 1: track (head) switch time 1.6 ms.
            head_switch_ms: 1.6,
            // Not in Table 1: no extra write settling.
            write_settle_ms: 0.0,
            // R&W Table 1: fixed controller overhead 2.2 ms for reads and
            // writes; the paper gives no separate hit/miss values, so all
            // eight cases use it.
            overhead: Overheads::uniform(2.2),
            // Assumption: SCSI-II fast synchronous, 10 MB/s (Table 1 only
            // says "SCSI-II").
            bus_mb_s: 10.0,
            // R&W Table 1: 128 KB buffer = 256 sectors, used here as one
            // read-ahead segment that may fill completely. (The 64 KB "read
            // fence" is a bus-reconnect threshold, not modelled.)
            cache: CacheParams {
                segments: 1,
                segment_sectors: 256,
                readahead_sectors: 256,
            },
            // Table 1 lists no immediate reporting: write-through.
            write_policy: WritePolicy::WriteThrough,
        }
    }

    /// Seagate Cheetah 4LP ST34501N (4.55 GB, 10 033 RPM), with DiskSim's
    /// validated parameters: `valid/cheetah4LP.model` (layout and
    /// mechanics), `valid/cheetah4LP.seek` (the extracted seek curve) and
    /// `valid/cheetah4LP.diskspecs` (buffer, overheads) from the DiskSim
    /// distribution (SEAGATE_ST34501N_validate, extracted by DIXtrac).
    pub fn cheetah4lp() -> Self {
        // cheetah4LP.model: zones (first cyl, last cyl, blocks per track,
        // track skew, cylinder skew). Cylinders between zones (1344, 2449,
        // 3542, 4407, 5224, 5957) belong to no zone and hold no data.
        let z = |first_cyl, last_cyl, sectors_per_track, track_skew, cyl_skew| Zone {
            first_cyl,
            last_cyl,
            sectors_per_track,
            track_skew,
            cyl_skew,
        };
        HddParams {
            name: "hdd:cheetah4lp".into(),
            // cheetah4LP.model: 6581 cylinders, 8 data surfaces.
            cylinders: 6581,
            heads: 8,
            // cheetah4LP.model: "Rotation speed (in rpms) = 10033".
            rpm: 10033.0,
            zones: vec![
                z(0, 1343, 195, 22, 37),
                z(1345, 2448, 187, 22, 35),
                z(2450, 3541, 176, 20, 33),
                z(3543, 4406, 166, 19, 31),
                z(4408, 5223, 155, 18, 29),
                z(5225, 5956, 145, 17, 27),
                z(5958, 6580, 131, 15, 25),
            ],
            // cheetah4LP.model: "Block count = 8887200". DiskSim reserves
            // 108 spare sectors per 12 cylinders and slips defects; we do
            // not model spares, so LBAs sit up to ~0.7% of the stroke
            // earlier than in DiskSim and the last ~57 cylinders are unused.
            capacity_sectors: Some(8_887_200),
            // cheetah4LP.seek: DIXtrac's extracted seek curve (103 points,
            // distance in cylinders, time in ms), linearly interpolated as
            // DiskSim does for "Seek type = extracted".
            seek: SeekCurve::Table {
                points: CHEETAH4LP_SEEK.to_vec(),
            },
            // cheetah4LP.model: "Head switch time = 0.195000".
            head_switch_ms: 0.195,
            // cheetah4LP.model: "Add. write settling delay = 0.000000".
            write_settle_ms: 0.0,
            // cheetah4LP.diskspecs: the eight "... over. after ..." values.
            overhead: Overheads {
                read_hit_after_read: 0.068,
                read_hit_after_write: 0.309,
                read_miss_after_read: 0.60773,
                read_miss_after_write: 0.56883,
                write_hit_after_read: 0.474,
                write_hit_after_write: 0.095,
                write_miss_after_read: 0.43133,
                write_miss_after_write: 0.53776,
            },
            // ST34501N is the narrow Ultra SCSI model: 20 MB/s. (DiskSim's
            // "Bulk sector transfer time = 0.106" ms/sector, ~4.8 MB/s, is a
            // property of the validation host; set bus_mb_s = 4.83 in a
            // model file to reproduce it.)
            bus_mb_s: 20.0,
            // cheetah4LP.diskspecs: 3 segments of 282 blocks, maximum
            // read-ahead 282 blocks.
            cache: CacheParams {
                segments: 3,
                segment_sectors: 282,
                readahead_sectors: 282,
            },
            // cheetah4LP.diskspecs: "Fast write level = 1" — write-back
            // only for contiguous sequential write streams.
            write_policy: WritePolicy::ImmediateSequential,
        }
    }
}

/// DiskSim `valid/cheetah4LP.seek` ("Seek distances measured: 103"):
/// (distance in cylinders, seek time in ms).
pub const CHEETAH4LP_SEEK: [(u32, f64); 103] = [
    (1, 0.636),
    (2, 1.146),
    (3, 1.160),
    (4, 1.275),
    (5, 1.285),
    (6, 1.403),
    (7, 1.287),
    (8, 1.420),
    (9, 1.539),
    (10, 1.416),
    (12, 1.527),
    (14, 1.550),
    (16, 1.547),
    (18, 1.547),
    (20, 1.679),
    (25, 1.928),
    (30, 1.936),
    (35, 1.937),
    (40, 2.070),
    (45, 2.187),
    (50, 2.314),
    (60, 2.325),
    (70, 2.324),
    (80, 2.459),
    (90, 2.586),
    (100, 2.705),
    (125, 3.111),
    (150, 3.627),
    (175, 3.622),
    (200, 3.754),
    (225, 3.875),
    (250, 3.878),
    (275, 3.843),
    (300, 4.008),
    (325, 4.007),
    (350, 4.135),
    (375, 4.136),
    (400, 4.138),
    (425, 4.266),
    (450, 4.397),
    (475, 4.400),
    (500, 4.414),
    (600, 4.795),
    (700, 5.056),
    (800, 5.426),
    (900, 5.576),
    (1000, 5.838),
    (1100, 6.099),
    (1200, 6.356),
    (1300, 6.606),
    (1400, 6.744),
    (1500, 7.003),
    (1600, 7.138),
    (1700, 7.269),
    (1800, 7.398),
    (1900, 7.779),
    (2000, 7.788),
    (2100, 8.050),
    (2200, 8.178),
    (2300, 8.433),
    (2400, 8.568),
    (2500, 8.817),
    (2600, 8.824),
    (2700, 9.082),
    (2800, 9.221),
    (2900, 9.474),
    (3000, 9.727),
    (3100, 9.857),
    (3200, 9.997),
    (3300, 10.254),
    (3400, 10.383),
    (3500, 10.513),
    (3600, 10.647),
    (3700, 10.905),
    (3800, 11.039),
    (3900, 11.297),
    (4000, 11.429),
    (4100, 11.552),
    (4200, 11.817),
    (4300, 11.946),
    (4400, 12.176),
    (4500, 12.334),
    (4600, 12.466),
    (4700, 12.723),
    (4800, 12.856),
    (4900, 12.990),
    (5000, 13.241),
    (5100, 13.368),
    (5200, 13.635),
    (5300, 13.758),
    (5400, 13.904),
    (5500, 14.157),
    (5600, 14.288),
    (5700, 14.414),
    (5800, 14.673),
    (5900, 14.809),
    (6000, 15.060),
    (6100, 15.186),
    (6200, 15.330),
    (6300, 15.579),
    (6400, 15.727),
    (6500, 15.969),
    (6580, 16.107),
];

/// A least-squares Ruemmler–Wilkes two-piece fit to [`CHEETAH4LP_SEEK`]
/// (computed offline from the table, see `docs/disk-models.md`), for model
/// files that want the closed form.
pub fn cheetah4lp_two_piece_fit() -> SeekCurve {
    SeekCurve::TwoPiece {
        a_ms: CHEETAH_FIT.0,
        b_ms: CHEETAH_FIT.1,
        c_ms: CHEETAH_FIT.2,
        e_ms: CHEETAH_FIT.3,
        boundary: CHEETAH_FIT.4,
    }
}

/// (a, b, c, e, boundary): weighted (1/t²) least squares over the 103
/// points, boundary chosen by exhaustive search over the table distances.
/// RMS relative error 6.1%, worst 39% at d = 1 (0.885 vs 0.636 ms).
const CHEETAH_FIT: (f64, f64, f64, f64, u32) = (0.661, 0.2243, 3.565, 0.001976, 225);
