//! Running a [`Program`]: the batch split into chunks of whole images over rayon's pool
//! (images are independent), each chunk running the ops in order on its own i8 buffers,
//! each buffer freed after its last reader; the logits dequantized at the end.

use super::{Dense, Op, Program};
use rayon::prelude::*;
use splitnas_host::kernels::int8::{add, conv, pool, quant, OutQ, Quant, Requant};

impl Program {
    /// Logits `[n, classes]` of `n` images given as flat NCHW floats (`x.len()` is
    /// `n * self.input`, checked by the caller).
    pub(crate) fn run(&self, x: &[f32], n: usize) -> Vec<f32> {
        let per_out = self.sizes[self.output.0];
        let mut y = vec![0f32; n * per_out];
        if n == 0 {
            return y;
        }
        let chunk = n.div_ceil(rayon::current_num_threads().clamp(1, n));
        if chunk >= n {
            self.run_chunk(x, n, &mut y);
        } else {
            y.par_chunks_mut(chunk * per_out)
                .zip(x.par_chunks(chunk * self.input))
                .for_each(|(yc, xc)| self.run_chunk(xc, xc.len() / self.input, yc));
        }
        y
    }

    /// The program on `m` images.
    fn run_chunk(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let mut vals: Vec<Vec<i8>> = vec![Vec::new(); self.sizes.len()];
        for (op, free) in self.ops.iter().zip(&self.free) {
            let out = op.out();
            let mut buf = vec![0i8; m * self.sizes[out]];
            run_op(op, &vals, x, m, &mut buf);
            vals[out] = buf;
            for &v in free {
                vals[v] = Vec::new();
            }
        }
        let (v, q) = self.output;
        quant::dequantize(&vals[v], &[q.scale], &[q.zero], 1, y);
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
        Op::Add { a, b, q, relu, .. } => add::add(&vals[*a], &vals[*b], *q, *relu, y),
        Op::Concat {
            xs,
            outer,
            plane,
            yq,
            ..
        } => {
            let parts: Vec<(&[i8], Quant)> = xs.iter().map(|&(v, q)| (&vals[v][..], q)).collect();
            add::concat(&parts, m * outer, *plane, *yq, y)
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

/// `x` from `xq` to `yq`, clamped at real 0 when `relu`.
fn requant(x: &[i8], xq: Quant, yq: Quant, relu: bool, y: &mut [i8]) {
    if !relu {
        return add::requantize(x, xq, yq, y);
    }
    let out = OutQ::relu(yq.zero);
    if xq == yq {
        for (d, &v) in y.iter_mut().zip(x) {
            *d = v.max(yq.zero);
        }
        return;
    }
    let r = Requant::new(xq.scale as f64 / yq.scale as f64);
    let zx = xq.zero as i32;
    for (d, &v) in y.iter_mut().zip(x) {
        *d = out.store(r.apply(v as i32 - zx));
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
fn affine(x: &[i8], [xq, yq]: [Quant; 2], inner: usize, a: &[f32], b: &[f32], y: &mut [i8]) {
    let run = a.len() * inner;
    for (xs, ys) in x.chunks_exact(run).zip(y.chunks_exact_mut(run)) {
        for (c, (xc, yc)) in xs
            .chunks_exact(inner)
            .zip(ys.chunks_exact_mut(inner))
            .enumerate()
        {
            for (o, &v) in yc.iter_mut().zip(xc) {
                let real = quant::dequantize_one(v, xq.scale, xq.zero);
                *o = quant::quantize_one(real * a[c] + b[c], yq.scale, yq.zero);
            }
        }
    }
}
