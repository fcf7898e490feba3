//! The int8 engine's element-wise and layout ops, whose arithmetic is the float path's:
//! `Q(f(DQ(x)))` in f32 with the same operations (dequantize `(q - z) s`, then `f`, then
//! quantize `x / s` rounded half to even, plus the zero point, saturated), so the codes
//! equal a float `DequantizeLinear -> f -> QuantizeLinear` (and ONNX's definition)
//! exactly:
//!
//! - [`requant`]: a value from one quantization to another, with an optional ReLU (Relu,
//!   a Q after a DQ of other parameters); [`requant_in_place`] over its input;
//! - [`add`]: `Q(DQ(a) + DQ(b))`, with an optional ReLU; [`add_in_place`] over `a`;
//! - [`concat`]: parts requantized to the output's parameters (copied when equal);
//! - [`affine`]: `Q(DQ(x) a[c] + b[c])` per channel (BatchNormalization, Mul or Add by a
//!   constant between a DQ and a Q);
//! - [`slice`], [`pad`]: codes moved, the quantization kept.
//!
//! (The fixed-point [`super::add`] module is TFLite's ADD: it rounds three times, half
//! up, and next to ties differs from [`add`] here by a step.)
//!
//! Nothing allocates. With the `alloc` feature on x86_64, [`requant`], [`add`] and
//! [`affine`] run their loops compiled for AVX2 when the CPU has it (8 lanes; the same
//! f32 operations, no fused multiply-add, so the same codes: the tests compare with
//! `==`); [`requant_loops`], [`add_loops`] and [`affine_loops`] are the portable loops.

use super::Quant;

/// `x / s` rounded half to even, plus `z`, saturated to i8: `quant::quantize_one::<i8>`
/// written to vectorize (`x / s` clamped to `2^22`, plus `1.5 2^23`, whose bits then hold
/// the integer), the same code for every non-NaN `x`.
#[inline(always)]
pub fn quantize(x: f32, s: f32, z: i32) -> i8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const LIM: f32 = 4_194_304.0;
    // not `clamp`: NaN goes to -LIM here (a valid code), `clamp` would keep it
    #[allow(clippy::manual_clamp)]
    let r = (x / s).max(-LIM).min(LIM) + MAGIC;
    let i = r.to_bits() as i32 - MAGIC.to_bits() as i32;
    (i + z).clamp(-128, 127) as i8
}

/// `(q - z) s`: `quant::dequantize_one`.
#[inline(always)]
pub fn dequantize(q: i8, s: f32, z: i32) -> f32 {
    (q as i32 - z) as f32 * s
}

/// Whether this CPU runs the AVX2-compiled copies of the loops.
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
#[inline]
fn avx2() -> bool {
    use crate::arch::Level;
    matches!(crate::arch::level(), Level::Avx2 | Level::Avx512)
}

/// `x` from `xq` to `yq`, nothing below real 0 when `relu`: `Q(max(DQ(x), 0))` in f32
/// (see the module doc); a copy (or a clamp at the zero point) when the two agree.
///
/// # Panics
/// When the lengths differ.
pub fn requant(x: &[i8], xq: Quant, yq: Quant, relu: bool, y: &mut [i8]) {
    assert_eq!(x.len(), y.len(), "int8 requant lengths");
    #[cfg(all(target_arch = "x86_64", feature = "alloc"))]
    if avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { requant_avx2(x, xq, yq, relu, y) };
    }
    requant_loops(x, xq, yq, relu, y)
}

/// [`requant`]'s loops compiled for AVX2.
///
/// # Safety
/// AVX2 present.
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
#[target_feature(enable = "avx2")]
unsafe fn requant_avx2(x: &[i8], xq: Quant, yq: Quant, relu: bool, y: &mut [i8]) {
    requant_loops(x, xq, yq, relu, y)
}

/// One code of [`requant`] between two different quantizations: loop-invariant
/// parameters, so the loops vectorize.
#[derive(Clone, Copy)]
struct Requantize {
    sx: f32,
    zx: i32,
    sy: f32,
    zy: i32,
    lo: f32,
}

impl Requantize {
    #[inline(always)]
    fn new(xq: Quant, yq: Quant, relu: bool) -> Self {
        let lo = if relu { 0.0 } else { f32::MIN };
        let (sx, zx, sy, zy) = (xq.scale, xq.zero as i32, yq.scale, yq.zero as i32);
        Self { sx, zx, sy, zy, lo }
    }

    #[inline(always)]
    fn code(self, v: i8) -> i8 {
        quantize(
            dequantize(v, self.sx, self.zx).max(self.lo),
            self.sy,
            self.zy,
        )
    }
}

/// [`requant`]'s portable loops (the result's definition).
#[inline(always)]
pub fn requant_loops(x: &[i8], xq: Quant, yq: Quant, relu: bool, y: &mut [i8]) {
    if xq == yq {
        let lo = if relu { yq.zero } else { i8::MIN };
        for (d, &v) in y.iter_mut().zip(x) {
            *d = v.max(lo);
        }
        return;
    }
    let f = Requantize::new(xq, yq, relu);
    for (d, &v) in y.iter_mut().zip(x) {
        *d = f.code(v);
    }
}

/// [`requant`] with the output written over its input (`xy` holds `x`, then `y`): the
/// same codes, one thread, the portable loops.
pub fn requant_in_place(xy: &mut [i8], xq: Quant, yq: Quant, relu: bool) {
    if xq == yq {
        let lo = if relu { yq.zero } else { i8::MIN };
        for d in xy.iter_mut() {
            *d = (*d).max(lo);
        }
        return;
    }
    let f = Requantize::new(xq, yq, relu);
    for d in xy.iter_mut() {
        *d = f.code(*d);
    }
}

/// `a + b` into `yq`: `Q(DQ(a) + DQ(b))` in f32 (the quantized sum ONNX defines, rounded
/// half to even); `relu` clamps at real 0.
///
/// # Panics
/// When the lengths differ.
pub fn add(a: &[i8], b: &[i8], q: [Quant; 3], relu: bool, y: &mut [i8]) {
    assert!(a.len() == y.len() && b.len() == y.len(), "int8 add lengths");
    #[cfg(all(target_arch = "x86_64", feature = "alloc"))]
    if avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { add_avx2(a, b, q, relu, y) };
    }
    add_loops(a, b, q, relu, y)
}

/// [`add`]'s loops compiled for AVX2.
///
/// # Safety
/// AVX2 present.
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
#[target_feature(enable = "avx2")]
unsafe fn add_avx2(a: &[i8], b: &[i8], q: [Quant; 3], relu: bool, y: &mut [i8]) {
    add_loops(a, b, q, relu, y)
}

/// One code of [`add`].
#[derive(Clone, Copy)]
struct Sum {
    q: [Quant; 3],
    lo: f32,
}

impl Sum {
    #[inline(always)]
    fn code(self, va: i8, vb: i8) -> i8 {
        let [qa, qb, qy] = self.q;
        let real =
            dequantize(va, qa.scale, qa.zero as i32) + dequantize(vb, qb.scale, qb.zero as i32);
        quantize(real.max(self.lo), qy.scale, qy.zero as i32)
    }
}

/// [`add`]'s portable loops.
#[inline(always)]
pub fn add_loops(a: &[i8], b: &[i8], q: [Quant; 3], relu: bool, y: &mut [i8]) {
    let f = Sum {
        q,
        lo: if relu { 0.0 } else { f32::MIN },
    };
    for ((d, &va), &vb) in y.iter_mut().zip(a).zip(b) {
        *d = f.code(va, vb);
    }
}

/// [`add`] with the output written over its first input (`ay` holds `a`, then `y`):
/// the same codes, one thread. (The f32 sum is commutative: a caller overwriting `b`
/// passes it first, with the quantizations swapped.)
///
/// # Panics
/// When the lengths differ.
pub fn add_in_place(ay: &mut [i8], b: &[i8], q: [Quant; 3], relu: bool) {
    assert_eq!(ay.len(), b.len(), "int8 add lengths");
    let f = Sum {
        q,
        lo: if relu { 0.0 } else { f32::MIN },
    };
    for (d, &vb) in ay.iter_mut().zip(b) {
        *d = f.code(*d, vb);
    }
}

/// Concatenation of `parts` (`[n, len_i]` each, with their quantization) into
/// `y [n, sum len_i]` quantized by `yq`: each part copied, or requantized ([`requant`])
/// when its parameters differ.
///
/// # Panics
/// When `n` is 0, a part's length is not a multiple of `n`, or `y`'s is not their sum.
pub fn concat(parts: &[(&[i8], Quant)], n: usize, yq: Quant, y: &mut [i8]) {
    assert!(n > 0, "concat of 0 images");
    let total: usize = parts.iter().map(|p| p.0.len()).sum();
    assert!(
        y.len() == total && parts.iter().all(|p| p.0.len() % n == 0),
        "concat lengths"
    );
    let image = y.len() / n;
    if image == 0 {
        return;
    }
    for (i, yi) in y.chunks_exact_mut(image).enumerate() {
        let mut at = 0;
        for &(x, xq) in parts {
            let len = x.len() / n;
            requant(&x[i * len..][..len], xq, yq, false, &mut yi[at..][..len]);
            at += len;
        }
    }
}

/// `quantize(dequantize(x) a[c] + b[c])` per element of channel `c` (images `[C, inner]`,
/// `C = a.len()`), with the f32 operations of the float path (DQ, then mul, then add,
/// then Q), so both give the same codes.
///
/// # Panics
/// When `a` and `b` differ in length, or `x` and `y` are not whole images.
pub fn affine(x: &[i8], q: [Quant; 2], inner: usize, a: &[f32], b: &[f32], y: &mut [i8]) {
    let run = a.len() * inner;
    assert!(
        a.len() == b.len() && x.len() == y.len() && (run == 0 || x.len().is_multiple_of(run)),
        "int8 affine lengths"
    );
    #[cfg(all(target_arch = "x86_64", feature = "alloc"))]
    if avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { affine_avx2(x, q, inner, a, b, y) };
    }
    affine_loops(x, q, inner, a, b, y)
}

/// [`affine`]'s loops compiled for AVX2.
///
/// # Safety
/// AVX2 present.
#[cfg(all(target_arch = "x86_64", feature = "alloc"))]
#[target_feature(enable = "avx2")]
unsafe fn affine_avx2(x: &[i8], q: [Quant; 2], inner: usize, a: &[f32], b: &[f32], y: &mut [i8]) {
    affine_loops(x, q, inner, a, b, y)
}

/// [`affine`]'s portable loops.
#[inline(always)]
pub fn affine_loops(
    x: &[i8],
    [xq, yq]: [Quant; 2],
    inner: usize,
    a: &[f32],
    b: &[f32],
    y: &mut [i8],
) {
    let run = a.len() * inner;
    if run == 0 {
        return;
    }
    for (xs, ys) in x.chunks_exact(run).zip(y.chunks_exact_mut(run)) {
        for (c, (xc, yc)) in xs
            .chunks_exact(inner)
            .zip(ys.chunks_exact_mut(inner))
            .enumerate()
        {
            for (o, &v) in yc.iter_mut().zip(xc) {
                let real = dequantize(v, xq.scale, xq.zero as i32);
                *o = quantize(real * a[c] + b[c], yq.scale, yq.zero as i32);
            }
        }
    }
}

/// The strided box `ranges` (start, step, count per axis) of each image `[d0, d1, d2]`
/// of `x`, into `y` (images `[count0, count1, count2]`).
///
/// # Panics
/// When a range leaves its axis or the lengths are not whole images.
pub fn slice(x: &[i8], dims: [usize; 3], r: [(usize, usize, usize); 3], y: &mut [i8]) {
    let image = dims.iter().product::<usize>();
    let out = r[0].2 * r[1].2 * r[2].2;
    let fits = |(s, step, count): (usize, usize, usize), d: usize| {
        count == 0 || s + (count - 1) * step < d
    };
    assert!(
        (0..3).all(|a| fits(r[a], dims[a])),
        "slice {r:?} of {dims:?}"
    );
    assert!(
        image > 0 && out > 0 && x.len().is_multiple_of(image) && y.len() == x.len() / image * out,
        "slice lengths"
    );
    for (src, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(out)) {
        let mut rows = dst.chunks_exact_mut(r[2].2);
        for i in 0..r[0].2 {
            for j in 0..r[1].2 {
                let row = ((r[0].0 + i * r[0].1) * dims[1] + r[1].0 + j * r[1].1) * dims[2];
                let Some(d) = rows.next() else { return };
                for (k, o) in d.iter_mut().enumerate() {
                    *o = src[row + r[2].0 + k * r[2].1];
                }
            }
        }
    }
}

/// Each image `[d0, d1, d2]` of `x` padded by `pads` (before, after per axis) with
/// `fill` into `y`.
///
/// # Panics
/// When the lengths are not whole images.
pub fn pad(x: &[i8], dims: [usize; 3], pads: [(usize, usize); 3], fill: i8, y: &mut [i8]) {
    let od: [usize; 3] = core::array::from_fn(|a| dims[a] + pads[a].0 + pads[a].1);
    let (image, out) = (dims.iter().product::<usize>(), od.iter().product::<usize>());
    assert!(
        image > 0 && x.len().is_multiple_of(image) && y.len() == x.len() / image * out,
        "pad lengths"
    );
    y.fill(fill);
    for (src, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(out)) {
        for (r, row) in src.chunks_exact(dims[2]).enumerate() {
            let (i, j) = (r / dims[1] + pads[0].0, r % dims[1] + pads[1].0);
            let at = (i * od[1] + j) * od[2] + pads[2].0;
            dst[at..at + dims[2]].copy_from_slice(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// Codes from a fixed linear congruential sequence (every i8 value appears).
    fn codes(len: usize, seed: u32) -> Vec<i8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as u8 as i8
            })
            .collect()
    }

    /// The dispatched loops (compiled for AVX2 when the CPU has it) give the same codes
    /// as the same loops compiled for the baseline target: both are the same f32
    /// operations, so equality is exact.
    #[test]
    fn dispatched_loops_equal_portable() {
        let (a, b) = (codes(1003, 1), codes(1003, 2));
        let qs = [
            Quant::new(0.031, -5),
            Quant::new(0.017, 12),
            Quant::new(0.05, -128),
        ];
        for relu in [false, true] {
            let (mut got, mut want) = (vec![0i8; a.len()], vec![0i8; a.len()]);
            requant(&a, qs[0], qs[1], relu, &mut got);
            requant_loops(&a, qs[0], qs[1], relu, &mut want);
            assert_eq!(got, want, "requant relu={relu}");
            add(&a, &b, qs, relu, &mut got);
            add_loops(&a, &b, qs, relu, &mut want);
            assert_eq!(got, want, "add relu={relu}");
        }
        let (mul, off): (Vec<f32>, Vec<f32>) = (0..17)
            .map(|c| (0.5 + c as f32 * 0.1, c as f32 * -0.03))
            .unzip();
        let x = codes(17 * 59, 3);
        let (mut got, mut want) = (vec![0i8; x.len()], vec![0i8; x.len()]);
        affine(&x, [qs[0], qs[1]], 59, &mul, &off, &mut got);
        affine_loops(&x, [qs[0], qs[1]], 59, &mul, &off, &mut want);
        assert_eq!(got, want, "affine");
    }

    /// The in-place variants give the two-slice codes (and `add` is commutative).
    #[test]
    fn in_place_equals_two_slices() {
        let (a, b) = (codes(517, 4), codes(517, 5));
        let qs = [
            Quant::new(0.031, -5),
            Quant::new(0.017, 12),
            Quant::new(0.05, 3),
        ];
        for relu in [false, true] {
            for (xq, yq) in [(qs[0], qs[1]), (qs[2], qs[2])] {
                let mut want = vec![0i8; a.len()];
                requant(&a, xq, yq, relu, &mut want);
                let mut got = a.clone();
                requant_in_place(&mut got, xq, yq, relu);
                assert_eq!(got, want, "requant relu={relu}");
            }
            let mut want = vec![0i8; a.len()];
            add(&a, &b, qs, relu, &mut want);
            let mut got = a.clone();
            add_in_place(&mut got, &b, qs, relu);
            assert_eq!(got, want, "add relu={relu}");
            let mut got = b.clone();
            add_in_place(&mut got, &a, [qs[1], qs[0], qs[2]], relu);
            assert_eq!(got, want, "add into b, relu={relu}");
        }
    }

    /// The vectorizable quantization is `quant::quantize_one` (ties to even, saturation)
    /// on every value a dequantized code times a factor can take, and on the edges.
    #[test]
    fn quantize_equals_quantize_one() {
        let s = 0.037f32;
        let mut xs: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 0.0005).collect();
        xs.extend([0.5 * s, 1.5 * s, -2.5 * s, 1e9, -1e9, 0.0, -0.0, f32::MAX]);
        for &x in &xs {
            for z in [-128, -3, 0, 77, 127] {
                assert_eq!(
                    quantize(x, s, z),
                    super::super::quant::quantize_one(x, s, z as i8),
                    "{x} zero {z}"
                );
            }
        }
    }

    /// A hand example: a 2-channel image of 3 requantized by ReLU, added, concatenated,
    /// sliced and padded.
    #[test]
    fn hand_values() {
        let (xq, yq) = (Quant::new(0.5, 2), Quant::new(0.25, -1));
        let mut y = [0i8; 4];
        // (q - 2) 0.5 / 0.25 - 1: -5 -> relu 0 -> -1; 3 -> 1; 100 -> 195 -> 127
        requant(&[-5, 3, 100, 2], xq, yq, true, &mut y);
        assert_eq!(y, [-1, 1, 127, -1]);
        // 0.5 (4 - 2) + 0.5 (1 - 2) = 0.5 -> 2 - 1 = 1
        add(&[4], &[1], [xq, xq, yq], false, &mut y[..1]);
        assert_eq!(y[0], 1);
        let mut c = [0i8; 4];
        // per image: the first part's code, the second's requantized: (4 - 2) 2 - 1 = 3
        concat(&[(&[1, 2], yq), (&[4, 6], xq)], 2, yq, &mut c);
        assert_eq!(c, [1, 3, 2, 7]);
        let x: Vec<i8> = (0..12).collect(); // [2, 2, 3]
        let mut s = [0i8; 2];
        slice(&x, [2, 2, 3], [(1, 1, 1), (0, 1, 2), (2, 1, 1)], &mut s);
        assert_eq!(s, [8, 11]);
        let mut p = vec![0i8; 2 * 2 * 5];
        pad(&x, [2, 2, 3], [(0, 0), (0, 0), (1, 1)], -9, &mut p);
        assert_eq!(&p[..5], &[-9, 0, 1, 2, -9]);
    }
}
