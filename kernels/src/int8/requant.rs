//! Fixed-point requantization: a positive real multiplier `M` is held as a Q31 multiplier
//! `q` in `[2^30, 2^31)` and an exponent `shift` with `M ~= q 2^(shift - 31)` (TFLite's
//! `QuantizeMultiplier`), and an int32 accumulator `x` becomes
//! `(x q + 2^(t - 1)) >> t` with `t = 31 - shift`, the 64-bit product rounded once, half
//! up (TFLite's `MultiplyByQuantizedMultiplier` in its single-rounding build,
//! `TFLITE_SINGLE_ROUNDING`), then saturated to i32.
//!
//! # Error against the real rescale
//! `q` carries `M` to a relative error of at most `2^-31`, and the one rounding is exact
//! on the 64-bit product: the result is `x M` rounded half up except where `x M` lies
//! within `|x M| 2^-30` of a half-integer. (gemmlowp's double rounding, a rounded
//! doubling high product and then a rounding right shift by `r = -shift` bits, is off by
//! one within `2^-(r + 1)` of a tie: a quarter of all values for multipliers in
//! `[1/4, 1/2)`, 0.1% to 1% of a convolution's outputs. Against a float requantization,
//! onnxruntime's, that compounded over a network's layers to 1% of the images changing
//! class; with one rounding they agree but for exact ties.) [`doubling_high_mul`] and
//! [`rounding_shift`] remain, gemmlowp's primitives, for callers that want them.

use super::OutQ;

/// A positive real multiplier as Q31 fixed point: `real ~= multiplier 2^(shift - 31)`
/// (TFLite's `QuantizeMultiplier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Requant {
    /// Q31 multiplier in `[2^30, 2^31)`, or 0 for a zero (or vanishingly small) real.
    pub multiplier: i32,
    /// Power of two applied with it: a left shift of the accumulator when positive
    /// (multipliers of 1 and above), a rounding right shift of the product when negative.
    /// In `-31..=30`.
    pub shift: i32,
}

impl Requant {
    /// The fixed-point form of `real` (TFLite's `QuantizeMultiplier`): `frexp` splits it
    /// into `m 2^e` with `m` in `[0.5, 1)`; `m 2^31` is rounded half away from zero (a
    /// carry to `2^31` halves it and raises `e`). Reals below `2^-32` become 0, reals from
    /// `2^30` are capped to the largest representable multiplier.
    ///
    /// # Panics
    /// When `real` is negative, infinite or NaN (scales are positive and finite).
    pub fn new(real: f64) -> Self {
        assert!(
            real.is_finite() && real >= 0.0,
            "requantization multiplier {real} is not a finite non-negative number"
        );
        if real == 0.0 {
            return Self::ZERO;
        }
        let (m, mut e) = libm::frexp(real);
        let mut q = libm::round(m * (1u64 << 31) as f64) as i64;
        if q == 1 << 31 {
            q /= 2;
            e += 1;
        }
        if e < -31 {
            return Self::ZERO;
        }
        if e > 30 {
            return Self {
                multiplier: i32::MAX,
                shift: 30,
            };
        }
        Self {
            multiplier: q as i32,
            shift: e,
        }
    }

    /// The multiplier that sends every accumulator to 0.
    pub const ZERO: Self = Self {
        multiplier: 0,
        shift: 0,
    };

    /// The requantization of an accumulator scaled by `s_in s_w` into an output of scale
    /// `s_out`: `Requant::new(s_in s_w / s_out)`, the product and quotient taken in f64.
    pub fn from_scales(s_in: f32, s_w: f32, s_out: f32) -> Self {
        Self::new(s_in as f64 * s_w as f64 / s_out as f64)
    }

    /// One [`Requant::from_scales`] per weight scale (per output channel).
    #[cfg(feature = "alloc")]
    pub fn per_channel(s_in: f32, s_w: &[f32], s_out: f32) -> alloc::vec::Vec<Self> {
        s_w.iter()
            .map(|&s| Self::from_scales(s_in, s, s_out))
            .collect()
    }

    /// The real value this multiplier stands for, `multiplier 2^(shift - 31)`.
    pub fn real(self) -> f64 {
        self.multiplier as f64 * libm::exp2((self.shift - 31) as f64)
    }

    /// `x` times the multiplier, rounded once, half up, and saturated to i32 (see the
    /// module doc): `(x q + 2^(t - 1)) >> t`, `t = 31 - shift` in `1..=62`; `|x q| < 2^62`,
    /// so the 64-bit sum never overflows.
    #[inline(always)]
    pub fn apply(self, x: i32) -> i32 {
        let t = 31 - self.shift;
        let v = (x as i64 * self.multiplier as i64 + (1i64 << (t - 1))) >> t;
        v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }
}

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2 a b`, rounded
/// half up; `i32::MIN * i32::MIN` (the one overflow) saturates to `i32::MAX`.
#[inline(always)]
pub fn doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // `/` truncates toward zero, as the reference's C++ division does
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent` rounded half away from zero,
/// `exponent` in `0..=31`.
#[inline(always)]
pub fn rounding_shift(x: i32, exponent: i32) -> i32 {
    debug_assert!((0..=31).contains(&exponent), "shift {exponent}");
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + (x < 0) as i32;
    (x >> exponent) + (remainder > threshold) as i32
}

/// `dst[i] = out.store(r.apply(acc[i] + base))`: the portable loop that defines the
/// SIMD rows' results (every int8 product ends here).
#[inline(always)]
pub(crate) fn store_row_portable(acc: &[i32], base: i32, r: Requant, out: OutQ, dst: &mut [i8]) {
    assert_eq!(acc.len(), dst.len(), "int8 row lengths");
    for (d, &a) in dst.iter_mut().zip(acc) {
        *d = out.store(r.apply(a.wrapping_add(base)));
    }
}

/// Asserts `bias` has `m` entries and `requant` `m` or 1.
pub(crate) fn check_channels(m: usize, bias: Option<&[i32]>, requant: &[Requant]) {
    if let Some(b) = bias {
        assert_eq!(b.len(), m, "int8 bias length");
    }
    assert!(
        requant.len() == m || requant.len() == 1,
        "{} requantization multipliers for {m} channels",
        requant.len()
    );
}

/// Channel `m`'s multiplier (the only one when there is one).
#[inline(always)]
pub(crate) fn requant_of(requant: &[Requant], m: usize) -> Requant {
    if requant.len() == 1 {
        requant[0]
    } else {
        requant[m]
    }
}

/// `num / den` rounded half away from zero (`den > 0`): the averaging pools' division.
#[inline(always)]
pub(crate) fn rounding_div(num: i32, den: i32) -> i32 {
    debug_assert!(den > 0);
    if num >= 0 {
        (num + den / 2) / den
    } else {
        (num - den / 2) / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tie_distance, Rng};
    use proptest::prelude::*;

    /// `r.apply(x)` against `x * real` in f64: exactly the value rounded half up (and
    /// saturated) unless within `|x real| 2^-30` of a tie (the multiplier's own error),
    /// within one step there. A second rounding (gemmlowp's) fails this away from ties.
    fn check(r: Requant, real: f64, x: i32) {
        let got = r.apply(x) as f64;
        let exact = x as f64 * real;
        let band = exact.abs() * libm::exp2(-30.0) + 1e-12;
        let want = (exact + 0.5)
            .floor()
            .clamp(i32::MIN as f64, i32::MAX as f64);
        if tie_distance(exact) > band {
            assert_eq!(got, want, "{x} * {real} ({r:?})");
        } else {
            assert!((got - want).abs() <= 1.0, "{x} * {real} ({r:?}) near a tie");
        }
    }

    #[test]
    fn quantize_multiplier_matches_f64() {
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            // 2^-20 .. 2^10
            let real = libm::exp2(rng.unit() as f64 * 15.0 - 5.0);
            let r = Requant::new(real);
            assert!((1 << 30..=i32::MAX).contains(&r.multiplier), "{r:?}");
            assert!(
                (r.real() - real).abs() <= real * libm::exp2(-31.0),
                "{real}: {r:?}"
            );
        }
        assert_eq!(Requant::new(0.0), Requant::ZERO);
        assert_eq!(Requant::new(1e-12), Requant::ZERO);
        assert_eq!(
            Requant::new(0.5),
            Requant {
                multiplier: 1 << 30,
                shift: 0
            }
        );
        assert_eq!(
            Requant::new(1.0),
            Requant {
                multiplier: 1 << 30,
                shift: 1
            }
        );
        // just below 1: m 2^31 rounds up to 2^31, which carries into the exponent
        assert_eq!(Requant::new(1.0 - 1e-12), Requant::new(1.0));
        assert_eq!(Requant::new(1e12).shift, 30);
        assert_eq!(Requant::from_scales(0.5, 0.25, 0.125).real(), 1.0);
    }

    #[test]
    fn known_values() {
        let half = Requant::new(0.5);
        // doubling high product: 3 * 0.5 = 1.5 rounds half up to 2, -1.5 to -1
        assert_eq!((half.apply(3), half.apply(-3)), (2, -1));
        let quarter = Requant::new(0.25);
        // one rounding, half up: 6 * 0.25 = 1.5 -> 2, -1.5 -> -1
        assert_eq!((quarter.apply(6), quarter.apply(-6)), (2, -1));
        // 0.3 = 0.6 2^-1: gemmlowp's doubling high product rounds 0.6 up to 1 before the
        // right shift rounds 0.5 up again (1); one rounding gives round(0.3) = 0
        assert_eq!(Requant::new(0.3).apply(1), 0);
        assert_eq!(
            rounding_shift(doubling_high_mul(1, Requant::new(0.3).multiplier), 1),
            1
        );
        assert_eq!(Requant::new(3.0).apply(-7), -21);
        // products beyond i32 saturate
        assert_eq!(Requant::new(1000.0).apply(i32::MAX / 2), i32::MAX);
        assert_eq!(Requant::new(1000.0).apply(i32::MIN / 2), i32::MIN);
        assert_eq!(Requant::new(1e9).apply(i32::MIN), i32::MIN);
        assert_eq!(Requant::ZERO.apply(123456), 0);
        assert_eq!(doubling_high_mul(i32::MIN, i32::MIN), i32::MAX);
        assert_eq!(rounding_shift(-5, 1), -3);
        assert_eq!(rounding_shift(5, 1), 3);
        assert_eq!(rounding_shift(i32::MIN, 31), -1);
        assert_eq!(rounding_div(5, 2), 3);
        assert_eq!(rounding_div(-5, 2), -3);
        assert_eq!(rounding_div(-4, 3), -1);
    }

    proptest! {
        #[test]
        fn apply_matches_f64(x in -(1i32 << 24)..(1 << 24), e in -24.0f64..6.0, f in 0.5f64..1.0) {
            let real = f * libm::exp2(e);
            check(Requant::new(real), real, x);
        }

        #[test]
        fn apply_matches_f64_on_8_bit_differences(x in -255i32..=255, real in 0.05f64..4.0) {
            check(Requant::new(real), real, x);
        }

        #[test]
        fn apply_matches_f64_on_accumulator_sized_inputs(x in any::<i32>(), e in -40.0f64..-10.0) {
            let real = libm::exp2(e) * 0.77;
            check(Requant::new(real), real, x);
        }
    }
}
