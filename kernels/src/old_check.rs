//! Scratch: the kernels as they were (git HEAD, models/ and runtime/), bit-for-bit against the kernel crate.
#![allow(dead_code, unused)]
use crate::testing::Rng;
use crate::{fresh_vec, Geom};
use std::vec;
use std::vec::Vec;

/// Square window: kernel size, stride, padding.
#[derive(Clone, Copy, Debug)]
struct Window {
    k: usize,
    s: usize,
    p: usize,
}

impl Window {
    fn new(k: usize, s: usize, p: usize) -> Self {
        Self { k, s, p }
    }

    /// Kernels cover every window that holds at least one image element.
    fn supported(&self, h: usize, w: usize) -> bool {
        self.k > 0
            && self.s > 0
            && 2 * self.p <= self.k
            && h + 2 * self.p >= self.k
            && w + 2 * self.p >= self.k
    }

    fn out_len(&self, len: usize) -> usize {
        (len + 2 * self.p - self.k) / self.s + 1
    }

    /// Output positions `o` in `[lo, hi)` whose input `o * s + d - p` lies in `[0, len)`
    /// (`d`: the kernel offset, dilated for a convolution).
    fn valid(&self, d: usize, len: usize, out: usize) -> (usize, usize) {
        let lo = self.p.saturating_sub(d).div_ceil(self.s);
        let hi = if len + self.p > d {
            ((len - 1 + self.p - d) / self.s + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// The running maximum and its index after seeing value `v` at index `i`: `(v, i)` when
/// `v > o`, else `(o, a)` (the earlier index wins ties; NaN never replaces). Written as
/// bit masks with unconditional results so the row loops vectorize: as `if`s the
/// compiler emitted one conditional store per lane, and max pooling took five times as
/// long as average pooling on the same windows.
#[inline(always)]
fn keep_max(o: f32, a: u32, v: f32, i: u32) -> (f32, u32) {
    let m = 0u32.wrapping_sub((v > o) as u32);
    (
        f32::from_bits((o.to_bits() & !m) | (v.to_bits() & m)),
        (a & !m) | (i & m),
    )
}

/// Shapes of one pooling call.
#[derive(Clone, Debug)]
struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    win: Window,
    /// Per kernel column `dx`: the output columns `[lo, hi)` whose input column lies
    /// inside the image, and the input column of output `lo`. Computed once per call:
    /// recomputing them per row (two integer divisions each) cost more than the
    /// pooling itself on 32-wide planes.
    spans: Vec<(usize, usize, usize)>,
}

impl Geometry {
    fn new(dims: [usize; 4], win: Window) -> Self {
        let [n, c, h, w] = dims;
        let wo = win.out_len(w);
        Self {
            planes: n * c,
            h,
            w,
            ho: win.out_len(h),
            wo,
            win,
            spans: (0..win.k)
                .map(|dx| {
                    let (lo, hi) = win.valid(dx, w, wo);
                    (lo, hi, (lo * win.s + dx).saturating_sub(win.p))
                })
                .collect(),
        }
    }

    /// Max pooling of one plane; `arg` receives the flat input index of each output's
    /// maximum (the first one in row-major window order, as Burn and PyTorch pick).
    fn max_plane(&self, x: &[f32], out: &mut [f32], arg: &mut [u32]) {
        let Geometry {
            h,
            w,
            wo,
            win,
            ref spans,
            ..
        } = *self;
        for (oh, (orow, arow)) in out.chunks_mut(wo).zip(arg.chunks_mut(wo)).enumerate() {
            orow.fill(f32::NEG_INFINITY);
            let (r0, r1) = rows(oh, win, h);
            // every output starts at its window's first element inside the image
            for (ow, a) in arow.iter_mut().enumerate() {
                let c0 = (ow * win.s).saturating_sub(win.p);
                *a = (r0 * w + c0) as u32;
            }
            for r in r0..r1 {
                let xrow = &x[r * w..][..w];
                for &(lo, hi, start) in spans.iter() {
                    if lo >= hi {
                        continue;
                    }
                    if win.s == 1 {
                        // branch-free select so the loop vectorizes (stride-1 rows are
                        // contiguous; the flat index grows by one per output)
                        let first = (r * w + start) as u32;
                        let outs = orow[lo..hi].iter_mut().zip(arow[lo..hi].iter_mut());
                        for ((o, a), (&v, i)) in outs.zip(xrow[start..].iter().zip(first..)) {
                            (*o, *a) = keep_max(*o, *a, v, i);
                        }
                    } else {
                        let first = (r * w + start) as u32;
                        let outs = orow[lo..hi].iter_mut().zip(arow[lo..hi].iter_mut());
                        let ins = xrow[start..].iter().step_by(win.s);
                        let idx = (first..).step_by(win.s);
                        for ((o, a), (&v, i)) in outs.zip(ins.zip(idx)) {
                            (*o, *a) = keep_max(*o, *a, v, i);
                        }
                    }
                }
            }
        }
    }

    /// Average pooling of one plane over the window's elements inside the image.
    fn avg_plane(&self, x: &[f32], out: &mut [f32]) {
        let Geometry {
            h,
            w,
            wo,
            win,
            ref spans,
            ..
        } = *self;
        for (oh, orow) in out.chunks_mut(wo).enumerate() {
            orow.fill(0.0);
            let (r0, r1) = rows(oh, win, h);
            for r in r0..r1 {
                let xrow = &x[r * w..][..w];
                for &(lo, hi, start) in spans.iter() {
                    if lo >= hi {
                        continue;
                    }
                    if win.s == 1 {
                        for (o, v) in orow[lo..hi].iter_mut().zip(&xrow[start..]) {
                            *o += v;
                        }
                    } else {
                        for (o, v) in orow[lo..hi]
                            .iter_mut()
                            .zip(xrow[start..].iter().step_by(win.s))
                        {
                            *o += v;
                        }
                    }
                }
            }
            let rows = (r1 - r0) as f32;
            for (ow, o) in orow.iter_mut().enumerate() {
                *o /= rows * cols(ow, win, w) as f32;
            }
        }
    }

    /// Average-pooling gradient of one plane: each output's gradient, divided by
    /// its window's element count, added to every element of the window.
    fn avg_grad_plane(&self, g: &[f32], gx: &mut [f32]) {
        let Geometry {
            h,
            w,
            wo,
            win,
            ref spans,
            ..
        } = *self;
        gx.fill(0.0);
        let mut share = vec![0f32; wo];
        for (oh, grow) in g.chunks(wo).enumerate() {
            let (r0, r1) = rows(oh, win, h);
            let rows = (r1 - r0) as f32;
            for (ow, s) in share.iter_mut().enumerate() {
                *s = grow[ow] / (rows * cols(ow, win, w) as f32);
            }
            for r in r0..r1 {
                let xrow = &mut gx[r * w..][..w];
                for &(lo, hi, start) in spans.iter() {
                    for ow in lo..hi {
                        xrow[start + (ow - lo) * win.s] += share[ow];
                    }
                }
            }
        }
    }
}

/// Input rows `[r0, r1)` of output row `oh`.
fn rows(oh: usize, win: Window, h: usize) -> (usize, usize) {
    let start = oh * win.s;
    (start.saturating_sub(win.p), (start + win.k - win.p).min(h))
}

/// Number of input columns inside the image in output column `ow`'s window.
fn cols(ow: usize, win: Window, w: usize) -> usize {
    let start = ow * win.s;
    (start + win.k - win.p).min(w) - start.saturating_sub(win.p)
}

/// Runs `f(plane, input plane, output plane, extra plane)` over all planes, split over

/// Per-channel batch statistics.
#[derive(Clone, Debug)]
struct Stats {
    mean: Vec<f32>,
    /// Biased variance.
    var: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    inv_std: Vec<f32>,
}

/// Sum over a plane, vectorized in eight f32 lanes, totalled in f64.
fn plane_sum(p: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    plane_sum_pair(p, p, |v, _| f(v))
}

/// Runs `f(channel)` for every channel, on the pool when the layer is large.
fn per_channel<T: Send>(c: usize, work: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    (0..c).map(f).collect()
}

/// Runs `f(plane index, plane)` over the `[N * C]` planes of `out`.
fn per_plane(out: &mut [f32], hw: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    out.chunks_mut(hw).enumerate().for_each(|(p, o)| f(p, o));
}

fn stats(xs: &[f32], [n, c, h, w]: [usize; 4], epsilon: f64) -> Stats {
    let hw = h * w;
    let count = (n * hw) as f64;
    let plane = |ni: usize, ci: usize| &xs[(ni * c + ci) * hw..][..hw];
    let mv: Vec<(f32, f32)> = per_channel(c, xs.len(), |ci| {
        let mean = (0..n)
            .map(|ni| plane_sum(plane(ni, ci), |v| v))
            .sum::<f64>()
            / count;
        let m = mean as f32;
        let var = (0..n)
            .map(|ni| plane_sum(plane(ni, ci), |v| (v - m) * (v - m)))
            .sum::<f64>()
            / count;
        (m, var as f32)
    });
    let mean: Vec<f32> = mv.iter().map(|p| p.0).collect();
    let var: Vec<f32> = mv.iter().map(|p| p.1).collect();
    let inv_std = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
        .collect();
    Stats { mean, var, inv_std }
}

/// The normalized (and, with `gamma`/`beta`, scaled and shifted) output, and the stats.
fn forward(
    xs: &[f32],
    dims: [usize; 4],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    epsilon: f64,
) -> (Vec<f32>, Stats) {
    let [_, c, h, w] = dims;
    let hw = h * w;
    let s = stats(xs, dims, epsilon);
    let mut out = vec![0f32; xs.len()];
    per_plane(&mut out, hw, |p, o| {
        let ci = p % c;
        let scale = s.inv_std[ci] * gamma.map_or(1.0, |g| g[ci]);
        let shift = beta.map_or(0.0, |b| b[ci]) - s.mean[ci] * scale;
        for (o, &v) in o.iter_mut().zip(&xs[p * hw..][..hw]) {
            *o = v * scale + shift;
        }
    });
    (out, s)
}

/// `sum(f(a[i], b[i]))` in eight f32 lanes, totalled in f64.
fn plane_sum_pair(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += f(x[i], y[i]);
        }
    }
    let mut total: f64 = ra.iter().zip(rb).map(|(&x, &y)| f(x, y) as f64).sum();
    for a in acc {
        total += a as f64;
    }
    total
}

struct CGeometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
}
impl CGeometry {
    #[inline(always)]
    fn channel_portable(&self, ci: usize, xs: &[f32], gs: &[f32], acc: &mut [f32]) {
        let CGeometry {
            n,
            c,
            h,
            w,
            ho,
            wo,
            k,
            s,
            p,
            d,
        } = *self;
        // Per kernel column j: the output columns [lo, hi) whose input column
        // ow*s + j*d - p lies inside, and the input column of output lo. Once per call:
        // per row they were two integer divisions per tap, as costly as the products.
        let window = Window::new(k, s, p);
        let spans: Vec<(usize, usize, usize)> = (0..k)
            .map(|j| {
                let (lo, hi) = window.valid(j * d, w, wo);
                (lo, hi, (lo * s + j * d).saturating_sub(p))
            })
            .collect();
        let mut lanes = vec![[0f32; 8]; k * k];
        for ni in 0..n {
            let xp = &xs[(ni * c + ci) * h * w..][..h * w];
            let gp = &gs[(ni * c + ci) * ho * wo..][..ho * wo];
            for i in 0..k {
                for oh in 0..ho {
                    let r = (oh * s + i * d) as isize - p as isize;
                    if r < 0 || r >= h as isize {
                        continue;
                    }
                    let xrow = &xp[r as usize * w..][..w];
                    let grow = &gp[oh * wo..][..wo];
                    for (j, &(lo, hi, start)) in spans.iter().enumerate() {
                        if lo >= hi {
                            continue;
                        }
                        let t = i * k + j;
                        if s == 1 {
                            dot_into(
                                &mut lanes[t],
                                &xrow[start..start + (hi - lo)],
                                &grow[lo..hi],
                            );
                        } else {
                            let shift = j * d;
                            lanes[t][0] += (lo..hi)
                                .map(|ow| xrow[ow * s + shift - p] * grow[ow])
                                .sum::<f32>();
                        }
                    }
                }
            }
        }
        for (a, l) in acc.iter_mut().zip(&lanes) {
            *a += l.iter().sum::<f32>();
        }
    }
}

/// Adds `a[i] * b[i]` into 8 running lane sums (the tail into lane 0): one tap's
/// products over every row and image stay in the lanes and are totalled once, not per
/// row (a horizontal sum per 32-wide row cost as much as its products).
#[inline(always)]
fn dot_into(lanes: &mut [f32; 8], a: &[f32], b: &[f32]) {
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes[0] += tail;
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn data(rng: &mut Rng, len: usize) -> Vec<f32> {
    rng.vec(len)
        .iter()
        .map(|v| v * 1e3f32.powf(v.abs()) - 0.3)
        .collect()
}

#[test]
fn pools_as_before() {
    let mut rng = Rng::new(1);
    for &dims in &[
        [2, 3, 8, 8],
        [1, 2, 7, 5],
        [2, 1, 1, 1],
        [1, 70, 16, 16],
        [4, 32, 32, 32],
        [4, 32, 31, 31],
        [3, 4, 9, 13],
    ] {
        for &(k, s, p) in &[
            (3, 1, 1),
            (3, 2, 1),
            (2, 2, 0),
            (5, 1, 2),
            (1, 1, 0),
            (3, 3, 0),
        ] {
            let win = Window::new(k, s, p);
            if !win.supported(dims[2], dims[3]) {
                continue;
            }
            for ties in [false, true] {
                let [n, c, h, w] = dims;
                let mut x = data(&mut rng, n * c * h * w);
                if ties {
                    x.iter_mut().for_each(|v| *v = (*v * 0.01).round());
                }
                let old = Geometry::new(dims, win);
                let (il, ol) = (h * w, old.ho * old.wo);
                let (mut omax, mut oarg, mut oavg) = (
                    vec![0f32; n * c * ol],
                    vec![0u32; n * c * ol],
                    vec![0f32; n * c * ol],
                );
                for p in 0..n * c {
                    old.max_plane(
                        &x[p * il..][..il],
                        &mut omax[p * ol..][..ol],
                        &mut oarg[p * ol..][..ol],
                    );
                    old.avg_plane(&x[p * il..][..il], &mut oavg[p * ol..][..ol]);
                }
                let g = Geom::square(c, [h, w], k, s, p, 1);
                for level in [crate::arch::Level::Portable, crate::arch::level()] {
                    let nmax = fresh_vec(n * c * ol, |o| {
                        crate::pool::window_pool::<{ crate::window::MAX }, _>(level, &x, n, &g, o)
                    });
                    let navg = fresh_vec(n * c * ol, |o| {
                        crate::pool::avg_at(level, &x, n, &g, false, o)
                    });
                    assert_eq!(
                        bits(&nmax),
                        bits(&omax),
                        "max {dims:?} {k} {s} {p} {level:?}"
                    );
                    assert_eq!(
                        bits(&navg),
                        bits(&oavg),
                        "avg {dims:?} {k} {s} {p} {level:?}"
                    );
                }
                let (mut nmax, mut narg) = (vec![0f32; n * c * ol], vec![0u32; n * c * ol]);
                crate::pool::max_with_argmax(&x, n, &g, &mut nmax, &mut narg);
                assert_eq!((bits(&nmax), narg), (bits(&omax), oarg.clone()));
                // backward
                let gr = data(&mut rng, n * c * ol);
                let mut ogx = vec![0f32; n * c * il];
                for p in 0..n * c {
                    old.avg_grad_plane(&gr[p * ol..][..ol], &mut ogx[p * il..][..il]);
                }
                let mut ngx = vec![7f32; n * c * il];
                crate::pool::avg_backward(&gr, n, &g, &mut ngx);
                assert_eq!(bits(&ngx), bits(&ogx), "avg grad");
            }
        }
    }
}

#[test]
fn batch_norm_as_before() {
    let mut rng = Rng::new(2);
    for dims in [[2, 3, 5, 7], [16, 4, 32, 32], [3, 8, 9, 9], [4, 2, 6, 6]] {
        let len = dims.iter().product();
        let x = data(&mut rng, len);
        let gamma = rng.vec(dims[1]);
        let beta = rng.vec(dims[1]);
        let (oy, os) = forward(&x, dims, Some(&gamma), Some(&beta), 1e-5);
        let ns = crate::affine::batch_stats(&x, dims, 1e-5);
        let mut ny = vec![0f32; len];
        crate::affine::normalize(&x, dims, &ns, Some(&gamma), Some(&beta), &mut ny);
        assert_eq!(
            (bits(&ny), bits(&ns.mean), bits(&ns.var), bits(&ns.inv_std)),
            (bits(&oy), bits(&os.mean), bits(&os.var), bits(&os.inv_std))
        );
        // backward, as the old BnBackward computed it
        let gs = data(&mut rng, len);
        let xs = &x;
        let s = &os;
        let gamma = Some(&gamma);
        let [n, c, h, w] = dims;
        let hw = h * w;
        let count = (n * hw) as f64;
        let at = |ni: usize, ci: usize| (ni * c + ci) * hw..(ni * c + ci) * hw + hw;
        let sums: Vec<(f64, f64)> = per_channel(c, gs.len(), |ci| {
            let (m, is) = (s.mean[ci], s.inv_std[ci]);
            let mut sg = 0f64;
            let mut sgx = 0f64;
            for ni in 0..n {
                let r = at(ni, ci);
                let (g, x) = (&gs[r.clone()], &xs[r]);
                sg += plane_sum(g, |v| v);
                sgx += plane_sum_pair(g, x, |gv, xv| gv * (xv - m) * is);
            }
            (sg, sgx)
        });
        let mut gx = vec![0f32; gs.len()];
        per_plane(&mut gx, hw, |p, o| {
            let ci = p % c;
            let (m, is) = (s.mean[ci], s.inv_std[ci]);
            let k = is * gamma.as_ref().map_or(1.0, |g| g[ci]);
            let mg = (sums[ci].0 / count) as f32;
            let mgx = (sums[ci].1 / count) as f32;
            let (g, x) = (&gs[p * hw..][..hw], &xs[p * hw..][..hw]);
            for ((o, &gv), &xv) in o.iter_mut().zip(g).zip(x) {
                *o = k * (gv - mg - (xv - m) * is * mgx);
            }
        });
        let nsums = crate::affine::grad_sums(&gs, xs, dims, &ns);
        assert_eq!(nsums, sums);
        let mut ngx = vec![0f32; len];
        crate::affine::input_grad(&gs, xs, dims, &ns, gamma.map(|g| &g[..]), &nsums, &mut ngx);
        assert_eq!(bits(&ngx), bits(&gx));
        // weighted-sum weight gradient: plane_sum_pair products
        assert_eq!(
            crate::elementwise::dot(&gs, xs).to_bits(),
            plane_sum_pair(&gs, xs, |a, b| a * b).to_bits()
        );
    }
}

#[test]
fn weight_grad_as_before() {
    let mut rng = Rng::new(3);
    for &(n, c, h, w, k, s, p, d) in &[
        (3, 4, 8, 8, 3, 1, 1, 1),
        (3, 4, 7, 7, 5, 2, 2, 1),
        (2, 4, 8, 8, 3, 1, 2, 2),
        (2, 3, 9, 9, 5, 2, 4, 2),
        (64, 4, 32, 32, 3, 1, 1, 1),
        (2, 2, 31, 29, 3, 2, 1, 1),
    ] {
        let g = Geom::square(c, [h, w], k, s, p, d);
        let x = data(&mut rng, n * c * h * w);
        let gr = data(&mut rng, n * c * g.oh * g.ow);
        let old = CGeometry {
            n,
            c,
            h,
            w,
            ho: g.oh,
            wo: g.ow,
            k,
            s,
            p,
            d,
        };
        let mut want = vec![0f32; c * k * k];
        for ci in 0..c {
            old.channel_portable(ci, &x, &gr, &mut want[ci * k * k..][..k * k]);
        }
        for level in [crate::arch::Level::Portable, crate::arch::level()] {
            let mut got = vec![0f32; c * k * k];
            crate::conv::depthwise_weight_grad_at(level, &x, &gr, n, &g, &mut got);
            assert_eq!(bits(&got), bits(&want), "{level:?}");
        }
    }
}

#[test]
fn sums_and_subsamples_as_before() {
    let mut rng = Rng::new(4);
    for len in [1usize, 7, 2048, 2049, 70000, 3 * 5 * 7 * 9] {
        let terms: Vec<Vec<f32>> = (0..7).map(|_| data(&mut rng, len)).collect();
        let weights = rng.vec(7);
        // the old forward block loop
        let mut old = vec![0f32; len];
        for (start, block) in old.chunks_mut(2048).enumerate() {
            let start = start * 2048;
            for (y, &wi) in terms.iter().zip(&weights) {
                for (o, &v) in block.iter_mut().zip(&y[start..]) {
                    *o += wi * v;
                }
            }
        }
        let mut new = vec![0f32; len];
        crate::elementwise::add_weighted(&terms, &weights, &mut new);
        assert_eq!(bits(&new), bits(&old));
    }
    // subsamples: models' (offset, stride 2) and runtime's (stride s from 0)
    for &(planes, h, w) in &[(3, 6, 6), (2, 7, 5), (1, 1, 1), (4, 2, 3), (2, 9, 7)] {
        let x = data(&mut rng, planes * h * w);
        for offset in [0, 1] {
            let (ho, wo) = (
                h.saturating_sub(offset).div_ceil(2),
                w.saturating_sub(offset).div_ceil(2),
            );
            let mut old: Vec<f32> = Vec::new();
            if ho * wo > 0 {
                for plane in x.chunks_exact(h * w) {
                    for i in 0..ho {
                        let row = &plane[(offset + 2 * i) * w..][..w];
                        old.extend((0..wo).map(|j| row[offset + 2 * j]));
                    }
                }
            }
            let new = fresh_vec(planes * ho * wo, |o| {
                crate::select::subsample(&x, planes, [h, w], offset, [2, 2], o)
            });
            assert_eq!(new, old);
        }
        for s in [[2, 2], [3, 2], [1, 3]] {
            let mut old: Vec<f32> = Vec::new();
            for plane in x.chunks_exact(h * w).take(planes) {
                for row in plane.chunks_exact(w).step_by(s[0]) {
                    old.extend(row.iter().step_by(s[1]));
                }
            }
            let len = planes * ((h - 1) / s[0] + 1) * ((w - 1) / s[1] + 1);
            let new = fresh_vec(len, |o| {
                crate::select::subsample(&x, planes, [h, w], 0, s, o)
            });
            assert_eq!(new, old);
        }
    }
}
