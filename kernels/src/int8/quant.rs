//! ONNX `QuantizeLinear` / `DequantizeLinear` between f32 and 8-bit integers (i8 or u8),
//! per tensor or per channel.
//!
//! A tensor is seen as `[outer, C, inner]` (`C` the quantization axis, `inner` the
//! product of the dimensions after it): element `i` belongs to channel
//! `(i / inner) % C`, and `C = scale.len()`; one scale (and `inner = 1`) is per-tensor
//! quantization.

/// An 8-bit quantized element type: `i8` or `u8`.
pub trait Q8: Copy + sealed::Sealed {
    /// Smallest value, as i32.
    const MIN: i32;
    /// Largest value, as i32.
    const MAX: i32;
    /// `v`, which lies in `MIN..=MAX`.
    fn from_i32(v: i32) -> Self;
    /// The value as i32.
    fn to_i32(self) -> i32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for u8 {}
}

impl Q8 for i8 {
    const MIN: i32 = i8::MIN as i32;
    const MAX: i32 = i8::MAX as i32;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i8
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        self as i32
    }
}

impl Q8 for u8 {
    const MIN: i32 = 0;
    const MAX: i32 = u8::MAX as i32;
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as u8
    }
    #[inline(always)]
    fn to_i32(self) -> i32 {
        self as i32
    }
}

/// `v` rounded to the nearest integer, ties to even, for `|v| <= 2^22` (adding and
/// removing `1.5 2^23` leaves no fraction bits under the default rounding mode).
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

/// One value quantized: `saturate(round_half_to_even(x / scale) + zero)`; NaN gives the
/// zero point.
#[inline(always)]
pub fn quantize_one<T: Q8>(x: f32, scale: f32, zero: T) -> T {
    // beyond 2^22 every 8-bit result saturates; the clamp keeps `round_even` exact
    const LIM: f32 = 4_194_304.0;
    let v = round_even((x / scale).clamp(-LIM, LIM));
    // `as` sends NaN to 0
    T::from_i32((v as i32 + zero.to_i32()).clamp(T::MIN, T::MAX))
}

/// One value dequantized: `(q - zero) scale`.
#[inline(always)]
pub fn dequantize_one<T: Q8>(q: T, scale: f32, zero: T) -> f32 {
    (q.to_i32() - zero.to_i32()) as f32 * scale
}

fn check(len: usize, out: usize, scale: usize, zero: usize, inner: usize) {
    assert_eq!(len, out, "quantization input and output lengths");
    assert!(
        scale > 0 && zero == scale,
        "{scale} scales, {zero} zero points"
    );
    assert!(inner > 0, "quantization inner size 0");
    assert_eq!(
        len % (scale * inner),
        0,
        "length {len} is not a whole number of {scale} channels x {inner}"
    );
}

/// ONNX `QuantizeLinear` of `x` into `out` along a channel axis: element `i` uses
/// `scale[c]`, `zero[c]` with `c = (i / inner) % scale.len()` (see the module doc).
///
/// # Panics
/// When `out` is not as long as `x`, `scale` and `zero` differ in length or are empty,
/// `inner` is 0, or the length is not a multiple of `scale.len() * inner`.
pub fn quantize<T: Q8>(x: &[f32], scale: &[f32], zero: &[T], inner: usize, out: &mut [T]) {
    check(x.len(), out.len(), scale.len(), zero.len(), inner);
    let run = scale.len() * inner;
    for (xs, os) in x.chunks_exact(run).zip(out.chunks_exact_mut(run)) {
        for ((xc, oc), (&s, &z)) in xs
            .chunks_exact(inner)
            .zip(os.chunks_exact_mut(inner))
            .zip(scale.iter().zip(zero))
        {
            for (o, &v) in oc.iter_mut().zip(xc) {
                *o = quantize_one(v, s, z);
            }
        }
    }
}

/// ONNX `DequantizeLinear` of `q` into `out`, channels as in [`quantize`].
///
/// # Panics
/// As [`quantize`].
pub fn dequantize<T: Q8>(q: &[T], scale: &[f32], zero: &[T], inner: usize, out: &mut [f32]) {
    check(q.len(), out.len(), scale.len(), zero.len(), inner);
    let run = scale.len() * inner;
    for (qs, os) in q.chunks_exact(run).zip(out.chunks_exact_mut(run)) {
        for ((qc, oc), (&s, &z)) in qs
            .chunks_exact(inner)
            .zip(os.chunks_exact_mut(inner))
            .zip(scale.iter().zip(zero))
        {
            for (o, &v) in oc.iter_mut().zip(qc) {
                *o = dequantize_one(v, s, z);
            }
        }
    }
}

/// A u8 tensor as the i8 tensor holding the same reals: every value and the zero point
/// move down by 128 (`q ^ 0x80`). Returns the new zero point.
///
/// # Panics
/// When the lengths differ.
pub fn u8_to_i8(q: &[u8], zero: u8, out: &mut [i8]) -> i8 {
    assert_eq!(q.len(), out.len(), "u8_to_i8 lengths");
    for (o, &v) in out.iter_mut().zip(q) {
        *o = (v ^ 0x80) as i8;
    }
    (zero ^ 0x80) as i8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;
    use std::vec;
    use std::vec::Vec;

    /// The spec's formula in f64: `x / scale` (the f32 quotient, as ONNX Runtime takes
    /// it), rounded half to even, plus the zero point, saturated.
    fn reference(x: f32, scale: f32, zero: i32, lo: i32, hi: i32) -> i32 {
        let v = (x / scale) as f64;
        let r = v.round();
        let r = if (v - v.trunc()).abs() == 0.5 {
            2.0 * (v / 2.0).round()
        } else {
            r
        };
        (r.clamp(-1e6, 1e6) as i32 + zero).clamp(lo, hi)
    }

    #[test]
    fn quantize_rounds_half_to_even_and_saturates() {
        let s = [0.5f32];
        let x = [
            0.25,
            0.75,
            -0.25,
            -0.75,
            1.25,
            100.0,
            -100.0,
            f32::NAN,
            1e30,
            -1e30,
        ];
        let mut q = [0i8; 10];
        quantize(&x, &s, &[3], 1, &mut q);
        // 0.5 -> 0, 1.5 -> 2, -0.5 -> 0, -1.5 -> -2, 2.5 -> 2
        assert_eq!(q, [3, 5, 3, 1, 5, 127, -128, 3, 127, -128]);
        let mut u = [0u8; 10];
        quantize(&x, &s, &[128], 1, &mut u);
        assert_eq!(u, [128, 130, 128, 126, 130, 255, 0, 128, 255, 0]);
    }

    #[test]
    fn quantize_matches_the_formula_per_channel() {
        let mut rng = Rng::new(3);
        let (outer, c, inner) = (3, 5, 7);
        let x: Vec<f32> = rng
            .vec(outer * c * inner)
            .iter()
            .map(|v| v * 40.0)
            .collect();
        let scale: Vec<f32> = (0..c).map(|i| 0.05 + 0.1 * i as f32).collect();
        let zero: Vec<i8> = (0..c).map(|i| (i as i8 - 2) * 20).collect();
        let mut q = vec![0i8; x.len()];
        quantize(&x, &scale, &zero, inner, &mut q);
        let mut back = vec![0f32; x.len()];
        dequantize(&q, &scale, &zero, inner, &mut back);
        for (i, ((&v, &g), &b)) in x.iter().zip(&q).zip(&back).enumerate() {
            let ch = (i / inner) % c;
            let want = reference(v, scale[ch], zero[ch] as i32, -128, 127);
            assert_eq!(g as i32, want, "element {i}");
            assert_eq!(b, (g as i32 - zero[ch] as i32) as f32 * scale[ch]);
        }
    }

    #[test]
    fn dequantize_per_tensor_and_u8_to_i8() {
        let q = [0u8, 128, 255];
        let mut f = [0f32; 3];
        dequantize(&q, &[0.5], &[128], 1, &mut f);
        assert_eq!(f, [-64.0, 0.0, 63.5]);
        let mut s = [0i8; 3];
        let z = u8_to_i8(&q, 128, &mut s);
        assert_eq!((s, z), ([-128, 0, 127], 0));
        let mut g = [0f32; 3];
        dequantize(&s, &[0.5], &[z], 1, &mut g);
        assert_eq!(f, g);
    }

    #[test]
    #[should_panic(expected = "whole number")]
    fn ragged_channels_panic() {
        quantize(&[0.0; 5], &[1.0, 1.0], &[0i8, 0], 2, &mut [0i8; 5]);
    }
}
