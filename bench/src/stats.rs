//! Pure statistics: percentiles and pairwise ratios. No I/O, unit tested.

use serde::Serialize;

/// The `p`-th percentile (0..=100) of `samples`, by linear interpolation
/// between the closest ranks (numpy's default). `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p = p.clamp(0.0, 100.0);
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// The median (50th percentile).
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// Summary of one system's counted samples, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// Summarises the rounds that produced a sample (`None` rounds are skipped).
pub fn summarize(samples: &[Option<f64>]) -> Option<Summary> {
    let present: Vec<f64> = samples.iter().flatten().copied().collect();
    let n = present.len();
    Some(Summary {
        n,
        p50_ms: percentile(&present, 50.0)?,
        p99_ms: percentile(&present, 99.0)?,
        mean_ms: present.iter().sum::<f64>() / n as f64,
        min_ms: present.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: present.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// `peer / base`, computed round by round (only rounds where both ran), then
/// the median of those ratios. Pairing rounds cancels noise that hit both.
pub fn pairwise_ratio(peer: &[Option<f64>], base: &[Option<f64>]) -> Option<f64> {
    let ratios: Vec<f64> = peer
        .iter()
        .zip(base)
        .filter_map(|(p, b)| match (p, b) {
            (Some(p), Some(b)) if *b > 0.0 => Some(p / b),
            _ => None,
        })
        .collect();
    median(&ratios)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentile_interpolates_between_ranks() {
        let s = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&s, 100.0), Some(4.0));
        assert_eq!(percentile(&s, 50.0), Some(2.5));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!(percentile(&hundred, 99.0).is_some_and(|v| close(v, 99.01)));
        assert!(median(&hundred).is_some_and(|v| close(v, 50.5)));
    }

    #[test]
    fn summary_skips_missing_rounds() {
        let s = summarize(&[Some(1.0), None, Some(3.0), Some(2.0)]);
        let s = s.ok_or("no summary");
        assert_eq!(
            s,
            Ok(Summary {
                n: 3,
                p50_ms: 2.0,
                p99_ms: 2.98,
                mean_ms: 2.0,
                min_ms: 1.0,
                max_ms: 3.0
            })
        );
        assert_eq!(summarize(&[None, None]), None);
    }

    #[test]
    fn ratio_is_median_of_per_round_ratios() {
        // Round 2 is noisy for both; pairing keeps the ratio at 2.
        let base = [Some(1.0), Some(10.0), Some(2.0), None];
        let peer = [Some(2.0), Some(20.0), Some(4.0), Some(99.0)];
        assert_eq!(pairwise_ratio(&peer, &base), Some(2.0));
        // Differs from the ratio of medians when rounds disagree.
        let base = [Some(1.0), Some(2.0), Some(3.0)];
        let peer = [Some(3.0), Some(2.0), Some(12.0)];
        assert_eq!(pairwise_ratio(&peer, &base), Some(3.0));
        assert_eq!(pairwise_ratio(&[None], &[Some(1.0)]), None);
    }
}
