//! Refcount consistency check: rebuild every cluster's expected refcount
//! from the metadata and compare with the stored refcounts.

use super::{Mapping, Qcow2Error, Qcow2Image, COPIED, OFFSET_MASK, REFT_MASK};

/// Largest file `check` walks (clusters in the expected-refcount array).
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;
/// At most this many messages are kept.
const MAX_MESSAGES: usize = 20;

/// What `check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Clusters whose stored refcount is above the references to them.
    pub leaks: u64,
    /// Refcounts below the references, pointers out of the file, wrong
    /// "copied" flags.
    pub corruptions: u64,
    /// Clusters referenced by the metadata.
    pub used_clusters: u64,
    /// The first few problems, one line each.
    pub messages: Vec<String>,
}

impl CheckReport {
    fn corrupt(&mut self, msg: String) {
        self.corruptions += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("ERROR {msg}"));
        }
    }
}

impl Qcow2Image {
    /// Check refcounts against the metadata, like `qemu-img check`.
    pub fn check(&mut self) -> Result<CheckReport, Qcow2Error> {
        if self.h.nb_snapshots != 0 {
            return Err(Qcow2Error::Snapshots(self.h.nb_snapshots));
        }
        let cs = self.cs;
        let file_len = self.st.len()?;
        self.file_len = file_len;
        let nclusters = file_len.div_ceil(cs);
        if nclusters > MAX_CHECK_CLUSTERS {
            return Err(Qcow2Error::TooLarge {
                what: "image file",
                value: file_len,
            });
        }
        let mut r = CheckReport::default();
        let mut expected = vec![0u32; nclusters as usize];
        let mut inc = |r: &mut CheckReport, what: &str, off: u64, len: u64| {
            let end = off.saturating_add(len);
            if !off.is_multiple_of(cs) || end > nclusters * cs || len == 0 {
                r.corrupt(format!(
                    "{what} at {off:#x} is misaligned or beyond the end of the file"
                ));
                return false;
            }
            for c in off / cs..end.div_ceil(cs) {
                expected[c as usize] = expected[c as usize].saturating_add(1);
            }
            true
        };
        inc(&mut r, "header", 0, cs);
        if self.h.l1_size > 0 {
            inc(
                &mut r,
                "L1 table",
                self.h.l1_table_offset,
                u64::from(self.h.l1_size) * 8,
            );
        }
        inc(
            &mut r,
            "refcount table",
            self.h.refcount_table_offset,
            u64::from(self.h.refcount_table_clusters) * cs,
        );
        for e in self.reftable.clone() {
            let rb = e & REFT_MASK;
            if rb != 0 {
                inc(&mut r, "refcount block", rb, cs);
            }
        }
        let mut l2s = Vec::new();
        for (i, e) in self.l1.clone().into_iter().enumerate() {
            let l2off = e & OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if inc(&mut r, "L2 table", l2off, cs) {
                l2s.push((i, e, l2off));
            }
        }
        let mut data = Vec::new();
        for &(i, l1e, l2off) in &l2s {
            let table = match self.load_l2(l2off) {
                Ok(t) => t.clone(),
                Err(e) => {
                    r.corrupt(format!("L2 table {i}: {e}"));
                    continue;
                }
            };
            data.push((l1e, l2off));
            for (j, e) in table.into_iter().enumerate() {
                let host = match self.classify(e) {
                    Ok(Mapping::Data(h)) | Ok(Mapping::Zero(Some(h))) => h,
                    Ok(Mapping::Compressed) => {
                        r.corrupt(format!(
                            "L2 table {i} entry {j}: compressed cluster (not checked by vlab)"
                        ));
                        continue;
                    }
                    Ok(_) => continue,
                    Err(err) => {
                        r.corrupt(format!("L2 table {i} entry {j}: {err}"));
                        continue;
                    }
                };
                if inc(&mut r, "data cluster", host, cs) {
                    data.push((e, host));
                }
            }
        }
        // Stored refcounts: every cluster in the file and every cluster a
        // refcount block covers.
        let per = self.refs_per_block();
        let mut hc = 0u64;
        let reftable = self.reftable.clone();
        let covered = |idx: u64| {
            reftable
                .get(idx as usize)
                .is_some_and(|e| e & REFT_MASK != 0)
        };
        let mut last = nclusters;
        for idx in 0..reftable.len() as u64 {
            if covered(idx) {
                last = last.max((idx + 1) * per);
            }
        }
        while hc < last {
            if hc >= nclusters && !covered(hc / per) {
                hc = (hc / per + 1) * per;
                continue;
            }
            let stored = match self.refcount(hc) {
                Ok(s) => s,
                Err(e) => {
                    r.corrupt(format!("refcount block for cluster {hc}: {e}"));
                    hc = (hc / per + 1) * per;
                    continue;
                }
            };
            let want = u64::from(expected.get(hc as usize).copied().unwrap_or(0));
            if want > 0 {
                r.used_clusters += 1;
            }
            if stored > want {
                r.leaks += 1;
            } else if stored < want {
                r.corrupt(format!(
                    "cluster {hc}: refcount {stored}, referenced {want} times"
                ));
            }
            hc += 1;
        }
        // "Copied" flags must match refcount 1 (no internal snapshots here).
        for (e, host) in data {
            let rc = self.refcount(host / cs).unwrap_or(0);
            if (e & COPIED != 0) != (rc == 1) {
                r.corrupt(format!(
                    "cluster at {host:#x}: copied flag does not match refcount {rc}"
                ));
            }
        }
        Ok(r)
    }
}
