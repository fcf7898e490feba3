//! Running a [`Program`]: image after image (images are independent), spread over
//! rayon's pool for a batch, each running the ops in order on i8 buffers that are
//! recycled after their last reader (a fresh allocation per op cost page faults); the
//! logits dequantized at the end. The arithmetic is the kernels' (`int8::conv`, `pool`,
//! and `elementwise` for the ops computed in the float path's f32 operations), which
//! `splitnas-micro` runs too, so both give the same codes.

use super::{Dense, Op, Program};
use rayon::prelude::*;
use splitnas_host::kernels::int8::elementwise::{add, affine, concat, pad, requant, slice};
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
