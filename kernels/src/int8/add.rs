//! Int8 element-wise sum of two tensors of different scales (ONNX `QLinearAdd`, TFLite's
//! `ADD` reference arithmetic), requantization to another scale, and concatenation along
//! channels (`QLinearConcat`).
//!
//! [`add`]: both inputs relative to their zero points are shifted left by 20 bits and
//! scaled by `s_a / 2 max(s_a, s_b)` and `s_b / 2 max(s_a, s_b)` (fixed-point multipliers
//! below 1/2), summed, and the sum scaled by `2 max(s_a, s_b) / (2^20 s_y)`; then the
//! output zero point is added and the result clamped (a fused ReLU: nothing below the
//! zero point). The three roundings keep the result within one step of the real sum, and
//! equal to its rounding away from ties.

use super::{OutQ, Quant, Requant};

/// TFLite's left shift for 8-bit inputs: room for 20 fraction bits beside a 9-bit value.
const LEFT_SHIFT: i32 = 20;

/// The fixed-point multipliers of one [`add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddParams {
    /// Input zero points.
    pub zero: [i32; 2],
    /// Input multipliers (`s_i / 2 max(s_a, s_b)`).
    pub input: [Requant; 2],
    /// Output multiplier (`2 max(s_a, s_b) / (2^20 s_y)`).
    pub output: Requant,
}

impl AddParams {
    /// The multipliers for inputs quantized by `aq`, `bq` and the output by `yq` (in f64,
    /// as TFLite's `PrepareGeneralSubOp`).
    pub fn new(aq: Quant, bq: Quant, yq: Quant) -> Self {
        let (sa, sb, sy) = (aq.scale as f64, bq.scale as f64, yq.scale as f64);
        let twice_max = 2.0 * sa.max(sb);
        Self {
            zero: [aq.zero as i32, bq.zero as i32],
            input: [Requant::new(sa / twice_max), Requant::new(sb / twice_max)],
            output: Requant::new(twice_max / ((1 << LEFT_SHIFT) as f64 * sy)),
        }
    }

    /// `a + b` in output units (before the output zero point).
    #[inline(always)]
    pub fn sum(&self, a: i8, b: i8) -> i32 {
        let sa = self.input[0].apply((a as i32 - self.zero[0]) << LEFT_SHIFT);
        let sb = self.input[1].apply((b as i32 - self.zero[1]) << LEFT_SHIFT);
        self.output.apply(sa + sb)
    }
}

/// `y = a + b` element by element, `a` quantized by `aq`, `b` by `bq`, `y` by `yq`, with
/// a fused ReLU when `relu` (see the module doc). Same shapes, no broadcasting.
///
/// # Panics
/// When the lengths differ.
pub fn add(a: &[i8], b: &[i8], [aq, bq, yq]: [Quant; 3], relu: bool, y: &mut [i8]) {
    assert!(
        a.len() == b.len() && a.len() == y.len(),
        "int8 add lengths {}, {}, {}",
        a.len(),
        b.len(),
        y.len()
    );
    let p = AddParams::new(aq, bq, yq);
    let out = OutQ::with_relu(yq.zero, relu);
    for ((d, &va), &vb) in y.iter_mut().zip(a).zip(b) {
        *d = out.store(p.sum(va, vb));
    }
}

/// `x` (quantized by `xq`) requantized to `yq`: `zy + round((q - zx) s_x / s_y)` with the
/// fixed-point multiplier of `s_x / s_y` ([`Requant`]), saturated; a copy when the two
/// agree.
///
/// # Panics
/// When the lengths differ.
pub fn requantize(x: &[i8], xq: Quant, yq: Quant, y: &mut [i8]) {
    assert_eq!(x.len(), y.len(), "int8 requantize lengths");
    if xq == yq {
        y.copy_from_slice(x);
        return;
    }
    let r = Requant::new(xq.scale as f64 / yq.scale as f64);
    let (zx, out) = (xq.zero as i32, OutQ::new(yq.zero));
    for (d, &v) in y.iter_mut().zip(x) {
        *d = out.store(r.apply(v as i32 - zx));
    }
}

/// Concatenation along channels of `parts`, each `[n, C_i, plane]` with its quantization,
/// into `y [n, sum C_i, plane]` quantized by `yq`; each part [`requantize`]d (copied when
/// its quantization is `yq`'s).
///
/// # Panics
/// When a part's length is not a multiple of `n * plane`, or `y`'s is not their sum.
pub fn concat(parts: &[(&[i8], Quant)], n: usize, plane: usize, yq: Quant, y: &mut [i8]) {
    let per = n * plane;
    let mut total = 0;
    for (x, _) in parts {
        assert!(
            per > 0 && x.len() % per == 0,
            "concat part of {} values is not [{n}, C, {plane}]",
            x.len()
        );
        total += x.len();
    }
    assert_eq!(y.len(), total, "concat output length");
    if total == 0 {
        return;
    }
    let image = total / n;
    for (i, yi) in y.chunks_exact_mut(image).enumerate() {
        let mut at = 0;
        for &(x, xq) in parts {
            let len = x.len() / n;
            requantize(&x[i * len..][..len], xq, yq, &mut yi[at..][..len]);
            at += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{round_away, tie_distance, Rng};
    use std::vec;
    use std::vec::Vec;

    fn i8s(rng: &mut Rng, len: usize) -> Vec<i8> {
        rng.vec(len).iter().map(|v| (v * 128.0) as i8).collect()
    }

    /// `got` against the real value `real` (in output units) and zero point / clamp:
    /// equal to its rounding when farther than `band` from a tie, within 1 step else.
    fn check(got: i8, real: f64, out: OutQ, band: f64, what: &str) {
        let want = (round_away(real) + out.zero as f64).clamp(out.min as f64, out.max as f64);
        if tie_distance(real) > band {
            assert_eq!(got as f64, want, "{what}: real {real}");
        } else {
            assert!(
                (got as f64 - want).abs() <= 1.0,
                "{what}: real {real} near a tie"
            );
        }
    }

    /// Against the sum in f64, on scales from 1/8 to 8 times each other and ReLU on and
    /// off; band: the two input roundings (at most 1 unit each of the 2^20-scaled sum)
    /// times the output multiplier, plus the output rounding's band of `Requant`.
    #[test]
    fn add_matches_f64() {
        let mut rng = Rng::new(11);
        for case in 0..200 {
            let sa = 0.01 * libm::exp2f(3.0 * rng.unit());
            let sb = 0.01 * libm::exp2f(3.0 * rng.unit());
            let sy = 0.02 * libm::exp2f(3.0 * rng.unit());
            let z = i8s(&mut rng, 3);
            let (aq, bq, yq) = (
                Quant::new(sa, z[0]),
                Quant::new(sb, z[1]),
                Quant::new(sy, z[2]),
            );
            let relu = case % 2 == 1;
            let (a, b) = (i8s(&mut rng, 64), i8s(&mut rng, 64));
            let mut y = vec![0i8; 64];
            add(&a, &b, [aq, bq, yq], relu, &mut y);
            let p = AddParams::new(aq, bq, yq);
            let mo = p.output.real();
            let out = OutQ::with_relu(z[2], relu);
            for i in 0..64 {
                let real = (sa as f64 * (a[i] as f64 - z[0] as f64)
                    + sb as f64 * (b[i] as f64 - z[1] as f64))
                    / sy as f64;
                let right = (-p.output.shift).max(0) as f64;
                let band = 2.0 * mo + libm::exp2(-right - 1.0) + real.abs() * 1e-8;
                check(y[i], real, out, band, "add");
            }
        }
    }

    #[test]
    fn add_saturates_and_relu_clamps() {
        let q = Quant::new(1.0, 0);
        let mut y = [0i8; 3];
        add(&[127, -128, 5], &[127, -128, -7], [q, q, q], false, &mut y);
        assert_eq!(y, [127, -128, -2]);
        add(
            &[127, -128, 5],
            &[127, -128, -7],
            [q, q, Quant::new(1.0, 3)],
            true,
            &mut y,
        );
        assert_eq!(y, [127, 3, 3]);
    }

    #[test]
    fn concat_copies_and_requantizes() {
        let mut rng = Rng::new(5);
        let (n, plane) = (2, 5);
        let yq = Quant::new(0.05, -3);
        let a = i8s(&mut rng, n * 3 * plane);
        let b = i8s(&mut rng, n * 2 * plane);
        let bq = Quant::new(0.13, 7);
        let mut y = vec![0i8; a.len() + b.len()];
        concat(&[(&a, yq), (&b, bq)], n, plane, yq, &mut y);
        let r = Requant::new(0.13f32 as f64 / 0.05f32 as f64);
        let band = libm::exp2(-((-r.shift).max(0) as f64) - 1.0) + 1e-6;
        for i in 0..n {
            let yi = &y[i * 5 * plane..][..5 * plane];
            assert_eq!(&yi[..3 * plane], &a[i * 3 * plane..][..3 * plane]);
            for (j, &got) in yi[3 * plane..].iter().enumerate() {
                let q = b[i * 2 * plane + j];
                let real = (q as f64 - 7.0) * 0.13f32 as f64 / 0.05f32 as f64;
                check(got, real, OutQ::new(-3), band, "concat");
            }
        }
    }
}
