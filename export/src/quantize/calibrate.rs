//! Calibration: what the observed activations of one tensor say about its real range
//! `[lo, hi]`, by three methods, and the int8 asymmetric `(scale, zero point)` of a range.
//!
//! Every range contains 0 and 0.0 is exactly representable (`q = z`), so zero padding,
//! ReLU and MaxPool stay exact. Statistics come in two passes over the calibration images:
//! min / max (all methods), then for `percentile` and `entropy` a histogram of 4096 bins
//! over `[-m, m]` with `m = max(|min|, |max|)` (0 is a bin edge, so folding the two
//! halves gives 2048 bins of `|x|` for the entropy method).

use std::fmt;

/// Bins of the signed histogram over `[-m, m]`.
pub const HIST_BINS: usize = 4096;
/// Share of the values the `percentile` range keeps, two-sided: 0.005% are cut below and
/// 0.005% above.
pub const PERCENTILE: f64 = 99.99;

/// How a tensor's range is taken from its observed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// The [`PERCENTILE`] two-sided percentile range, clipped to [min, max].
    Percentile,
    /// TensorRT's entropy calibration: the `|x|` threshold whose int8 version of the
    /// histogram has the smallest KL divergence from the float one (see
    /// [`entropy_bins`]), intersected with [min, max].
    Entropy,
}

impl Method {
    /// The name written in the file's metadata and typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
        }
    }

    /// Whether the method needs the second (histogram) pass.
    pub fn needs_histogram(self) -> bool {
        self != Method::MinMax
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// int8 asymmetric quantization of one tensor: `x ~ scale * (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    /// Step between two int8 levels (> 0).
    pub scale: f32,
    /// The int8 level of 0.0.
    pub zero_point: i8,
}

/// The int8 asymmetric parameters of the range `[lo, hi]`: the range is widened to contain
/// 0, `scale = (hi - lo) / 255`, `zero_point = round(-128 - lo / scale)` (half to even,
/// clamped to int8), so 0.0 is exactly level `zero_point` and the range is covered to
/// within half a step at either end. A range of (almost) zero width (a tensor that is
/// always 0) gets scale 1.
pub fn qparams(lo: f32, hi: f32) -> QParams {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    let scale = if scale.is_finite() && scale >= f32::MIN_POSITIVE {
        scale
    } else {
        1.0
    };
    let z = (-128.0 - lo / scale).round_ties_even().clamp(-128.0, 127.0);
    QParams {
        scale,
        zero_point: z as i8,
    }
}

/// The observed statistics of one tensor.
#[derive(Clone, Debug)]
pub struct TensorStats {
    min: f32,
    max: f32,
    /// [`HIST_BINS`] counts over `[-m, m]` (empty until [`Self::observe_histogram`]).
    hist: Vec<u64>,
}

impl Default for TensorStats {
    fn default() -> Self {
        Self {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: vec![],
        }
    }
}

impl TensorStats {
    /// First pass: min and max. Returns the first value that is not finite, if any.
    pub fn observe_range(&mut self, values: &[f32]) -> Result<(), f32> {
        for &v in values {
            if !v.is_finite() {
                return Err(v);
            }
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        Ok(())
    }

    /// Observed minimum and maximum (`(0, 0)` before any value).
    pub fn min_max(&self) -> (f32, f32) {
        if self.min > self.max {
            (0.0, 0.0)
        } else {
            (self.min, self.max)
        }
    }

    /// `m`: the histogram covers `[-m, m]`.
    fn half_width(&self) -> f32 {
        let (lo, hi) = self.min_max();
        lo.abs().max(hi.abs())
    }

    /// Second pass (after every [`Self::observe_range`]): counts `values` into the
    /// histogram over `[-m, m]`.
    pub fn observe_histogram(&mut self, values: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; HIST_BINS];
        }
        let m = self.half_width();
        if m == 0.0 {
            self.hist[HIST_BINS / 2] += values.len() as u64;
            return;
        }
        let per = HIST_BINS as f32 / (2.0 * m);
        for &v in values {
            let b = ((v + m) * per).floor().clamp(0.0, (HIST_BINS - 1) as f32);
            self.hist[b as usize] += 1;
        }
    }

    /// The range `method` takes (see [`Method`]); contains 0.
    pub fn range(&self, method: Method) -> (f32, f32) {
        let (min, max) = self.min_max();
        let m = self.half_width();
        let (lo, hi) = if method == Method::MinMax || self.hist.is_empty() || m == 0.0 {
            (min, max)
        } else if method == Method::Percentile {
            let cut = (1.0 - PERCENTILE / 100.0) / 2.0;
            let (start, width) = (-(m as f64), 2.0 * m as f64 / HIST_BINS as f64);
            let lo = quantile(&self.hist, start, width, cut) as f32;
            let hi = quantile(&self.hist, start, width, 1.0 - cut) as f32;
            (lo.max(min), hi.min(max))
        } else {
            // |x| histogram: bin j of |x| covers [j w, (j + 1) w), w = m / (HIST_BINS / 2)
            let half = HIST_BINS / 2;
            let mut abs: Vec<u64> = (0..half)
                .map(|j| self.hist[half + j] + self.hist[half - 1 - j])
                .collect();
            // the spike of exact zeros a ReLU leaves would decide the threshold: bin 0
            // counts as its neighbour (as NVIDIA's pytorch-quantization does)
            abs[0] = abs[1];
            // all 256 levels lie on [0, T] for a non-negative tensor, half of them otherwise
            let levels = if min >= 0.0 { 256 } else { 128 };
            let t = entropy_bins(&abs, levels) as f32 * (m / half as f32);
            (min.max(-t), max.min(t))
        };
        (lo.min(0.0), hi.max(0.0))
    }
}

/// The value below which a share `q` of the histogram's count lies, interpolating linearly
/// inside a bin; bin `b` covers `[start + b * width, start + (b + 1) * width)`.
pub fn quantile(hist: &[u64], start: f64, width: f64, q: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    let target = q * total as f64;
    let mut below = 0.0;
    for (b, &c) in hist.iter().enumerate() {
        let c = c as f64;
        if c > 0.0 && below + c >= target {
            let frac = ((target - below) / c).clamp(0.0, 1.0);
            return start + (b as f64 + frac) * width;
        }
        below += c;
    }
    start + hist.len() as f64 * width
}

/// TensorRT's entropy calibration ("8-bit Inference with TensorRT", Migacz, GTC 2017) as
/// NVIDIA's pytorch-quantization computes it (`_compute_amax_entropy`), on a histogram of
/// `|x|`: for each candidate `i` in `levels..=hist.len()`, the reference P is the first
/// `i` bins with the outliers (the count of bins `i..`) added to bin `i - 1`; the candidate
/// Q is the first `i` bins merged into `levels` groups (bin `j` into group
/// `j * levels / i`), each group's count spread evenly over its non-empty bins. Returns
/// the `i` with the smallest [`divergence`] (the largest `i` on a tie: the least
/// clipping); the threshold is the upper edge of bin `i - 1`.
pub fn entropy_bins(hist: &[u64], levels: usize) -> usize {
    let bins = hist.len();
    if levels == 0 || bins <= levels || hist.iter().all(|&c| c == 0) {
        return bins;
    }
    let mut best = (f64::INFINITY, bins);
    for i in levels..=bins {
        let d = divergence(hist, i, levels);
        if d <= best.0 {
            best = (d, i);
        }
    }
    best.1
}

/// KL(P || Q) of candidate `i` (see [`entropy_bins`]); infinite when Q is 0 where P is
/// not (a threshold in an empty stretch with outliers beyond it), so a tail separated by
/// a gap is never cut there.
pub fn divergence(hist: &[u64], i: usize, levels: usize) -> f64 {
    let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
    p[i - 1] += hist[i..].iter().sum::<u64>() as f64;
    let mut q = vec![0f64; i];
    let mut start = 0;
    for g in 0..levels {
        // bins j with j * levels / i == g
        let end = ((g + 1) * i).div_ceil(levels).min(i);
        let sum: f64 = hist[start..end].iter().map(|&c| c as f64).sum();
        let nonzero = (start..end).filter(|&j| hist[j] != 0).count();
        if nonzero > 0 {
            for j in (start..end).filter(|&j| hist[j] != 0) {
                q[j] = sum / nonzero as f64;
            }
        }
        start = end;
    }
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    let mut kl = 0.0;
    for (pj, qj) in p.iter().zip(&q) {
        if *pj > 0.0 {
            if *qj == 0.0 {
                return f64::INFINITY;
            }
            let (pj, qj) = (pj / sp, qj / sq);
            kl += pj * (pj / qj).ln();
        }
    }
    kl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_exact_and_the_range_is_covered() {
        // [-2, 127/64]: scale 1/64 (exact), -lo/scale = 128, z = 0
        let q = qparams(-2.0, 1.984375);
        assert_eq!(q.scale, 0.015625);
        assert_eq!(q.zero_point, 0);
        // [-127.5/64, 127.5/64]: scale 1/64, -128 + 127.5 = -0.5 -> 0 (half to even)
        let q = qparams(-1.9921875, 1.9921875);
        assert_eq!((q.scale, q.zero_point), (0.015625, 0));
        // a ReLU output [0, 5.1]: scale 0.02, z = -128 (q = -128 is 0.0)
        let q = qparams(0.0, 5.1);
        assert!((q.scale - 0.02).abs() < 1e-7);
        assert_eq!(q.zero_point, -128);
        // a range without 0 is widened to contain it: [2, 3] -> [0, 3]
        assert_eq!(qparams(2.0, 3.0), qparams(0.0, 3.0));
        assert_eq!(qparams(-3.0, -2.0).zero_point, 127);
        // [-0.3, 0.9]: scale 1.2/255, z = round(-128 + 63.75) = -64
        let q = qparams(-0.3, 0.9);
        assert_eq!(q.zero_point, -64);
        for (lo, hi) in [(-1.0f32, 1.0f32), (0.0, 5.1), (-0.3, 0.9), (-7.5, 0.01)] {
            let q = qparams(lo, hi);
            let z = q.zero_point as f32;
            // 0.0 quantizes to z and back to exactly 0.0
            assert_eq!((0.0 / q.scale).round_ties_even() + z, z);
            assert_eq!(q.scale * (z - z), 0.0);
            // both ends within half a step of the int8 grid's ends
            let (glo, ghi) = (q.scale * (-128.0 - z), q.scale * (127.0 - z));
            assert!(
                glo <= lo + q.scale / 2.0 && ghi >= hi - q.scale / 2.0,
                "{lo} {hi}"
            );
        }
        // a tensor that is always 0
        assert_eq!(
            qparams(0.0, 0.0),
            QParams {
                scale: 1.0,
                zero_point: -128
            }
        );
    }

    #[test]
    fn min_max_is_the_observed_range_widened_to_zero() {
        let mut s = TensorStats::default();
        s.observe_range(&[0.5, 2.0]).unwrap();
        s.observe_range(&[1.0, 3.0]).unwrap();
        assert_eq!(s.range(Method::MinMax), (0.0, 3.0));
        s.observe_range(&[-4.0]).unwrap();
        assert_eq!(s.range(Method::MinMax), (-4.0, 3.0));
        assert_eq!(
            s.observe_range(&[1.0, f32::NAN]).map_err(|v| v.is_nan()),
            Err(true)
        );
        assert_eq!(s.observe_range(&[f32::INFINITY]), Err(f32::INFINITY));
    }

    #[test]
    fn quantile_interpolates_inside_a_bin() {
        // 4 bins of width 1 over [-2, 2), counts 1, 9998, 1, 0 (10000 values)
        let h = [1, 9998, 1, 0];
        // 0.005% of 10000 = 0.5 values: half way into bin 0 -> -1.5
        assert!((quantile(&h, -2.0, 1.0, 0.00005) + 1.5).abs() < 1e-9);
        // 99.995% = 9999.5 values: 9999 lie below bin 2, half of bin 2's one -> 0.5
        assert!((quantile(&h, -2.0, 1.0, 0.99995) - 0.5).abs() < 1e-9);
        assert!((quantile(&h, -2.0, 1.0, 0.5) - (-1.0 + 4999.0 / 9998.0)).abs() < 1e-9);
    }

    #[test]
    fn percentile_cuts_the_outliers() {
        // 100000 values spread over [-1, 1] and one at 50 and one at -30: minmax keeps
        // them, the 99.99% range (0.005% = 5 values each side) does not
        let mut values: Vec<f32> = (0..100_000).map(|i| i as f32 / 50_000.0 - 1.0).collect();
        values.push(50.0);
        values.push(-30.0);
        let mut s = TensorStats::default();
        s.observe_range(&values).unwrap();
        s.observe_histogram(&values);
        assert_eq!(s.range(Method::MinMax), (-30.0, 50.0));
        let (lo, hi) = s.range(Method::Percentile);
        // one bin is 100 / 4096 = 0.024 wide: the cut lies inside the bin of +-1
        let bin = 100.0 / 4096.0;
        assert!(
            (lo + 1.0).abs() <= bin && (hi - 1.0).abs() <= bin,
            "{lo} {hi}"
        );
    }

    #[test]
    fn divergence_by_hand() {
        // |x| histogram [4, 2, 1, 1] into 2 levels:
        // i = 2: P = [4, 2+1+1] / 8, Q = [4, 2] / 6: KL = 0.5 ln(0.75) + 0.5 ln(1.5)
        let h = [4, 2, 1, 1];
        let want2 = 0.5 * (0.5f64 / (4.0 / 6.0)).ln() + 0.5 * (0.5f64 / (2.0 / 6.0)).ln();
        assert!((divergence(&h, 2, 2) - want2).abs() < 1e-12);
        // i = 3: P = [4, 2, 2] / 8; bin j in group 2j / 3: {0, 1}, {2}: Q = [3, 3, 1] / 7
        let want3 = 0.5 * (0.5f64 / (3.0 / 7.0)).ln()
            + 0.25 * (0.25f64 / (3.0 / 7.0)).ln()
            + 0.25 * (0.25f64 / (1.0 / 7.0)).ln();
        assert!((divergence(&h, 3, 2) - want3).abs() < 1e-12);
        // i = 4: P = [4, 2, 1, 1] / 8; groups {0, 1}, {2, 3}: Q = [3, 3, 1, 1] / 8
        let want4 = 0.5 * (4.0f64 / 3.0).ln() + 0.25 * (2.0f64 / 3.0).ln();
        assert!((divergence(&h, 4, 2) - want4).abs() < 1e-12);
        // 0.0425 < 0.0589 < 0.0822: all 4 bins are kept
        assert!(want4 < want2 && want2 < want3);
        assert_eq!(entropy_bins(&h, 2), 4);
    }

    #[test]
    fn entropy_keeps_every_bin_with_mass_when_nothing_is_lost() {
        // mass only in the first 128 of 2048 bins, uneven: i = 128 has Q = P (KL 0);
        // any wider candidate merges unequal bins (KL > 0)
        let mut h = vec![0u64; 2048];
        for (j, c) in h.iter_mut().take(128).enumerate() {
            *c = 1 + (j as u64 * 37) % 11;
        }
        assert!(divergence(&h, 128, 128).abs() < 1e-12);
        assert!(divergence(&h, 256, 128) > 1e-3);
        assert_eq!(entropy_bins(&h, 128), 128);
        // an empty histogram keeps everything
        assert_eq!(entropy_bins(&[0; 16], 4), 16);
    }

    #[test]
    fn entropy_cuts_a_thin_tail_but_not_across_a_gap() {
        // exponential values (mean 1; 1,000,000 quantiles, the largest 14.5): the long thin
        // tail is cut, the bulk is kept (the 99.9% quantile is ln(1000) = 6.9)
        let values: Vec<f32> = (0..1_000_000)
            .map(|i| -((i as f64 + 0.5) / 1e6).ln() as f32)
            .collect();
        let mut s = TensorStats::default();
        s.observe_range(&values).unwrap();
        s.observe_histogram(&values);
        let (lo, hi) = s.range(Method::Entropy);
        assert_eq!(lo, 0.0);
        assert!((6.9..12.0).contains(&hi), "hi={hi}");
        // a ReLU-like tensor: 1,000,000 values dense in [0, 1) and 10 at 100 beyond an
        // empty stretch: every threshold in the stretch has Q = 0 where P holds the
        // outliers (KL infinite), so nothing is cut
        let mut values: Vec<f32> = (0..1_000_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        values.extend([100.0; 10]);
        let mut s = TensorStats::default();
        s.observe_range(&values).unwrap();
        s.observe_histogram(&values);
        assert_eq!(s.range(Method::Entropy), (0.0, 100.0));
    }
}
