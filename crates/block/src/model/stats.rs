//! Fidelity statistics: percentiles of per-request timing error and the
//! Ruemmler–Wilkes demerit figure between two response-time distributions.

/// The `p`-th percentile (0..=100) of `values` by linear interpolation
/// between closest ranks; `None` for an empty slice. NaNs are ignored.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(percentile_sorted(&v, p))
}

fn percentile_sorted(v: &[f64], p: f64) -> f64 {
    let p = if p.is_nan() {
        50.0
    } else {
        p.clamp(0.0, 100.0)
    };
    let pos = p / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Percentiles of |actual − modelled| over `(actual, modelled)` pairs, in
/// the pairs' unit; one value per entry of `ps`.
pub fn abs_error_percentiles(pairs: &[(f64, f64)], ps: &[f64]) -> Option<Vec<f64>> {
    let mut e: Vec<f64> = pairs
        .iter()
        .map(|(a, m)| (a - m).abs())
        .filter(|x| !x.is_nan())
        .collect();
    if e.is_empty() {
        return None;
    }
    e.sort_by(f64::total_cmp);
    Some(ps.iter().map(|&p| percentile_sorted(&e, p)).collect())
}

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

/// The Ruemmler–Wilkes demerit figure (IEEE Computer 1994): the root mean
/// square of the horizontal distance between the two response-time CDFs,
/// `sqrt(∫₀¹ (Qa(q) − Qb(q))² dq)` where `Q` are the empirical quantile
/// functions (step functions of the sorted samples). The integral is exact
/// over the merged breakpoints `i/na` and `j/nb`, so samples of different
/// sizes compare directly. `None` if either side is empty.
pub fn demerit(a: &[f64], b: &[f64]) -> Option<f64> {
    let mut a: Vec<f64> = a.iter().copied().filter(|x| x.is_finite()).collect();
    let mut b: Vec<f64> = b.iter().copied().filter(|x| x.is_finite()).collect();
    if a.is_empty() || b.is_empty() {
        return None;
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as u128, b.len() as u128);
    // Walk the merged grid in units of 1/(na·nb): step i of `a` covers
    // [i·nb, (i+1)·nb), step j of `b` covers [j·na, (j+1)·na).
    let (mut i, mut j) = (0usize, 0usize);
    let mut at = 0u128;
    let total = na * nb;
    let mut sum = 0.0f64;
    while at < total {
        let next_a = (i as u128 + 1) * nb;
        let next_b = (j as u128 + 1) * na;
        let next = next_a.min(next_b);
        let d = a[i] - b[j];
        sum += d * d * (next - at) as f64;
        at = next;
        if next == next_a {
            i += 1;
        }
        if next == next_b {
            j += 1;
        }
    }
    Some((sum / total as f64).sqrt())
}

/// The demerit as a percentage of the mean of `reference` (R&W report it
/// relative to the real disk's mean response time).
pub fn demerit_percent(actual: &[f64], reference: &[f64]) -> Option<f64> {
    let d = demerit(actual, reference)?;
    let m = mean(reference)?;
    if m == 0.0 {
        return if d == 0.0 { Some(0.0) } else { None };
    }
    Some(100.0 * d / m.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::XorShift;

    #[test]
    fn percentiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 100.0), Some(5.0));
        assert_eq!(percentile(&v, 25.0), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.5));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN, 7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&v, 1e9), Some(5.0));
    }

    #[test]
    fn abs_errors() {
        let pairs = [(10.0, 9.0), (10.0, 12.0), (5.0, 5.0)];
        let e = abs_error_percentiles(&pairs, &[0.0, 50.0, 100.0]).unwrap();
        assert_eq!(e, vec![0.0, 1.0, 2.0]);
        assert!(abs_error_percentiles(&[], &[50.0]).is_none());
    }

    #[test]
    fn demerit_identical_is_zero() {
        let mut r = XorShift(7);
        let a: Vec<f64> = (0..1000).map(|_| r.below(20_000) as f64 / 1000.0).collect();
        assert_eq!(demerit(&a, &a), Some(0.0));
        let mut rev = a.clone();
        rev.reverse();
        assert_eq!(demerit(&a, &rev), Some(0.0));
        assert_eq!(demerit_percent(&a, &a), Some(0.0));
    }

    #[test]
    fn demerit_of_shift_is_shift() {
        let mut r = XorShift(11);
        let a: Vec<f64> = (0..997).map(|_| r.below(30_000) as f64 / 1000.0).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 2.5).collect();
        let d = demerit(&a, &b).unwrap();
        assert!((d - 2.5).abs() < 1e-9, "{d}");
        let pct = demerit_percent(&b, &a).unwrap();
        let m = mean(&a).unwrap();
        assert!((pct - 250.0 / m).abs() < 1e-9);
    }

    #[test]
    fn demerit_different_sizes() {
        // {0, 1} against {0, 0, 1, 1}: same distribution.
        assert_eq!(demerit(&[0.0, 1.0], &[0.0, 0.0, 1.0, 1.0]), Some(0.0));
        // {0} vs {0, 2}: half the mass differs by 2 → sqrt(0.5·4).
        let d = demerit(&[0.0], &[0.0, 2.0]).unwrap();
        assert!((d - 2f64.sqrt()).abs() < 1e-12);
        // Symmetric.
        assert_eq!(demerit(&[0.0, 2.0], &[0.0]), Some(d));
        assert_eq!(demerit(&[], &[1.0]), None);
    }

    #[test]
    fn demerit_of_scaled_distribution() {
        // Uniform on {1..n} vs twice it: RMS of x over the quantiles.
        let a: Vec<f64> = (1..=100).map(f64::from).collect();
        let b: Vec<f64> = a.iter().map(|x| 2.0 * x).collect();
        let d = demerit(&a, &b).unwrap();
        let rms = (a.iter().map(|x| x * x).sum::<f64>() / 100.0).sqrt();
        assert!((d - rms).abs() < 1e-9);
    }
}
