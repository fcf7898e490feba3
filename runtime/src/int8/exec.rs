//! Running a [`Program`]: image after image (images are independent), spread over
//! rayon's pool for a batch, each running the ops in order on i8 buffers that are
//! recycled after their last reader (a fresh allocation per op cost page faults); the
//! logits dequantized at the end.

use super::{Dense, Op, Program};
use rayon::prelude::*;
use splitnas_host::kernels::int8::{conv, pool, quant, Quant};

impl Program {
    /// Logits `[n, classes]` of `n` images given as flat NCHW floats (`x.len()` is
    /// `n * self.input`, checked by the caller).
    pub(crate) fn run(&self, x: &[f32], n: usize) -> Vec<f32> {
        let per_out = self.sizes[self.output.0];
        let mut y = vec![0f32; n * per_out];
        if n <= 1 || rayon::current_num_threads() == 1 {
            let mut spare = vec![];
            for (yi, xi) in y.chunks_mut(per_out).zip(x.chunks(self.input)) {
                self.run_image(xi, yi, &mut spare);
            }
        } else {
            y.par_chunks_mut(per_out)
                .zip(x.par_chunks(self.input))
                .for_each_init(Vec::new, |spare, (yi, xi)| self.run_image(xi, yi, spare));
        }
        y
    }

    /// The program on one image, taking its buffers from `spare` and giving them back
    /// (`SPLITNAS_PROFILE=1`: the time per kind of op on stderr).
    fn run_image(&self, x: &[f32], y: &mut [f32], spare: &mut Vec<Vec<i8>>) {
        let profile = std::env::var_os("SPLITNAS_PROFILE").is_some();
        let mut times: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
        let mut vals: Vec<Vec<i8>> = vec![Vec::new(); self.sizes.len()];
        for (op, free) in self.ops.iter().zip(&self.free) {
            let t0 = std::time::Instant::now();
            let out = op.out();
            let mut buf = spare.pop().unwrap_or_default();
            buf.clear();
            buf.resize(self.sizes[out], 0);
            run_op(op, &vals, x, 1, &mut buf);
            vals[out] = buf;
            for &v in free {
                spare.push(std::mem::take(&mut vals[v]));
            }
            if profile {
                let e = times.entry(op.label()).or_default();
                e.0 += t0.elapsed().as_secs_f64() * 1e3;
                e.1 += 1;
            }
        }
        for (k, (ms, c)) in &times {
            eprintln!("{k:>24}: {ms:8.3} ms over {c} ops");
        }
        let (v, q) = self.output;
        quant::dequantize(&vals[v], &[q.scale], &[q.zero], 1, y);
        spare.extend(vals.into_iter().filter(|b| b.capacity() > 0));
    }
}

/// Runs one op on `m` images into `y`.
fn run_op(op: &Op, vals: &[Vec<i8>], input: &[f32], m: usize, y: &mut [i8]) {
    match op {
        Op::Quantize { q, .. } => quant::quantize(input, &[q.scale], &[q.zero], 1, y),
        Op::Dense(d) => dense(d, &vals[d.x], m, y),
        Op::Requant {
            x, xq, yq, relu, ..
        } => requant(&vals[*x], *xq, *yq, *relu, y),
        Op::MaxPool { x, g, .. } => pool::max(&vals[*x], m, g, y),
        Op::AvgPool {
            x, g, count_pad, q, ..
        } => pool::avg(&vals[*x], m, g, *count_pad, *q, y),
        Op::GlobalAvg { x, hw, q, .. } => {
            let c = vals[*x].len() / (m * hw);
            pool::global_avg(&vals[*x], [m, c, *hw], *q, y)
        }
        Op::Add { a, b, q, relu, .. } => add(&vals[*a], &vals[*b], *q, *relu, y),
        Op::Concat { xs, outer, yq, .. } => {
            let parts: Vec<(&[i8], Quant)> = xs.iter().map(|&(v, q)| (&vals[v][..], q)).collect();
            concat(&parts, m * outer, *yq, y)
        }
        Op::Slice {
            x, dims, ranges, ..
        } => slice(&vals[*x], *dims, *ranges, y),
        Op::Pad {
            x,
            dims,
            pads,
            fill,
            ..
        } => pad(&vals[*x], *dims, *pads, *fill, y),
        Op::Affine {
            x, q, inner, a, b, ..
        } => affine(&vals[*x], *q, *inner, a, b, y),
    }
}

fn dense(d: &Dense, x: &[i8], m: usize, y: &mut [i8]) {
    let f = conv::Filter {
        wt: &d.w,
        bias: d.bias.as_deref(),
        requant: &d.requant,
        groups: d.conv.map_or(1, |c| c.1),
    };
    match &d.conv {
        Some((g, _)) => conv::conv(x, d.zx, m, g, f, d.out_q(), y),
        None => conv::gemm(x, d.zx, [m, d.k], f, d.out_q(), y),
    }
}

/// `quant::quantize_one::<i8>(x, s, z)` written to vectorize: the same rounding (`x / s`
/// clamped to `2^22`, plus `1.5 2^23`, whose bits then hold the integer) and the same
/// codes for every non-NaN `x`.
#[inline(always)]
fn quantize(x: f32, s: f32, z: i32) -> i8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const LIM: f32 = 4_194_304.0;
    let r = (x / s).max(-LIM).min(LIM) + MAGIC;
    let i = r.to_bits() as i32 - MAGIC.to_bits() as i32;
    (i + z).clamp(-128, 127) as i8
}

/// `quant::dequantize_one`: `(q - z) s`.
#[inline(always)]
fn dequantize(q: i8, s: f32, z: i32) -> f32 {
    (q as i32 - z) as f32 * s
}

/// `x` from `xq` to `yq`, nothing below real 0 when `relu`: `Q(max(DQ(x), 0))` in the
/// float path's f32 operations (so the same codes as its Relu between DQ and Q, and
/// ONNX's), vectorized; a copy (or a clamp at the zero point) when the two agree.
fn requant(x: &[i8], xq: Quant, yq: Quant, relu: bool, y: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { requant_avx2(x, xq, yq, relu, y) };
    }
    requant_loops(x, xq, yq, relu, y)
}

/// `requant`'s loops compiled for AVX2 (8 lanes; the same f32 operations, so the same
/// codes).
///
/// # Safety
/// AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn requant_avx2(x: &[i8], xq: Quant, yq: Quant, relu: bool, y: &mut [i8]) {
    requant_loops(x, xq, yq, relu, y)
}

#[inline(always)]
fn requant_loops(x: &[i8], xq: Quant, yq: Quant, relu: bool, y: &mut [i8]) {
    if xq == yq {
        let lo = if relu { yq.zero } else { i8::MIN };
        for (d, &v) in y.iter_mut().zip(x) {
            *d = v.max(lo);
        }
        return;
    }
    let lo = if relu { 0.0 } else { f32::MIN };
    let (zx, zy) = (xq.zero as i32, yq.zero as i32);
    for (d, &v) in y.iter_mut().zip(x) {
        *d = quantize(dequantize(v, xq.scale, zx).max(lo), yq.scale, zy);
    }
}

/// `a + b` into `yq`: `Q(DQ(a) + DQ(b))` in the float path's f32 operations (the
/// quantized sum ONNX defines, rounded half to even), vectorized; `relu` clamps at real
/// 0. (The kernels' `add::add`, TFLite's fixed-point ADD, rounds its three steps half
/// up: next to ties it differs from this by a step.)
fn add(a: &[i8], b: &[i8], q: [Quant; 3], relu: bool, y: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { add_avx2(a, b, q, relu, y) };
    }
    add_loops(a, b, q, relu, y)
}

/// `add`'s loops compiled for AVX2 (8 lanes; the same f32 operations, so the same
/// codes).
///
/// # Safety
/// AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_avx2(a: &[i8], b: &[i8], q: [Quant; 3], relu: bool, y: &mut [i8]) {
    add_loops(a, b, q, relu, y)
}

#[inline(always)]
fn add_loops(a: &[i8], b: &[i8], [qa, qb, qy]: [Quant; 3], relu: bool, y: &mut [i8]) {
    let lo = if relu { 0.0 } else { f32::MIN };
    let (za, zb, zy) = (qa.zero as i32, qb.zero as i32, qy.zero as i32);
    for ((d, &va), &vb) in y.iter_mut().zip(a).zip(b) {
        let real = dequantize(va, qa.scale, za) + dequantize(vb, qb.scale, zb);
        *d = quantize(real.max(lo), qy.scale, zy);
    }
}

/// Concatenation of `parts` (`[n, C_i plane]` each) into `yq`: each part copied, or
/// requantized ([`requant`]) when its parameters differ.
fn concat(parts: &[(&[i8], Quant)], n: usize, yq: Quant, y: &mut [i8]) {
    let image = y.len() / n;
    for (i, yi) in y.chunks_exact_mut(image).enumerate() {
        let mut at = 0;
        for &(x, xq) in parts {
            let len = x.len() / n;
            requant(&x[i * len..][..len], xq, yq, false, &mut yi[at..][..len]);
            at += len;
        }
    }
}

/// The strided box `ranges` (start, step, count per axis) of each image `[d0, d1, d2]`.
fn slice(x: &[i8], dims: [usize; 3], r: [(usize, usize, usize); 3], y: &mut [i8]) {
    let image = dims.iter().product::<usize>();
    let out = r[0].2 * r[1].2 * r[2].2;
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

/// Each image `[d0, d1, d2]` padded by `pads` (before, after per axis) with `fill`.
fn pad(x: &[i8], dims: [usize; 3], pads: [(usize, usize); 3], fill: i8, y: &mut [i8]) {
    let od: Vec<usize> = (0..3).map(|a| dims[a] + pads[a].0 + pads[a].1).collect();
    let (image, out) = (dims.iter().product::<usize>(), od.iter().product::<usize>());
    y.fill(fill);
    for (src, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(out)) {
        for (r, row) in src.chunks_exact(dims[2]).enumerate() {
            let (i, j) = (r / dims[1] + pads[0].0, r % dims[1] + pads[1].0);
            let at = (i * od[1] + j) * od[2] + pads[2].0;
            dst[at..at + dims[2]].copy_from_slice(row);
        }
    }
}

/// `quantize(dequantize(q) a[c] + b[c])` per element of channel `c` (images `[C, inner]`,
/// `C = a.len()`), with the f32 operations of the float path (DQ, then mul, then add,
/// then Q), so both give the same codes.
fn affine(x: &[i8], q: [Quant; 2], inner: usize, a: &[f32], b: &[f32], y: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { affine_avx2(x, q, inner, a, b, y) };
    }
    affine_loops(x, q, inner, a, b, y)
}

/// `affine`'s loops compiled for AVX2 (8 lanes; the same f32 operations, so the same
/// codes).
///
/// # Safety
/// AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn affine_avx2(x: &[i8], q: [Quant; 2], inner: usize, a: &[f32], b: &[f32], y: &mut [i8]) {
    affine_loops(x, q, inner, a, b, y)
}

#[inline(always)]
fn affine_loops(x: &[i8], [xq, yq]: [Quant; 2], inner: usize, a: &[f32], b: &[f32], y: &mut [i8]) {
    let run = a.len() * inner;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
