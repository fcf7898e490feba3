//! Host-memory pooling kernels for the CPU backends (flex, ndarray).
//!
//! Burn 0.21's flex pools by visiting every window element with a bounds check and
//! writing an `i64` argmax it never needs at inference (2.7 ms for a 3x3 max pool on
//! 36x32x32 here). These kernels sweep every output row once per kernel tap over the
//! output columns whose input column is inside the image, so the inner loop is a
//! slice operation without bounds tests (contiguous at stride 1, where the compiler
//! vectorizes it). Planes (`N * C`) are split over the cores when there is enough
//! work. GPU backends keep Burn's ops. (A depthwise convolution written the same way
//! was slower than flex's at batch 1, so convolutions stay with Burn.)

use std::any::TypeId;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Whether `B` keeps its tensors in host memory, so these kernels apply.
pub(crate) fn is_host<B: Backend>() -> bool {
    let b = TypeId::of::<B>();
    b == TypeId::of::<Flex>() || b == TypeId::of::<NdArray>()
}

/// One spatial axis of a window: kernel taps, stride, leading padding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Axis {
    pub k: usize,
    pub s: usize,
    pub p: usize,
}

impl Axis {
    /// Output positions `[lo, hi)` whose input `o * s + t - p` lies in `[0, len)`.
    fn taps(&self, t: usize, len: usize, out: usize) -> (usize, usize) {
        let shift = t;
        let lo = self.p.saturating_sub(shift).div_ceil(self.s);
        let hi = if len + self.p > shift {
            ((len + self.p - shift - 1) / self.s + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// Number of taps of output `o` that fall inside `[0, len)`.
    fn inside(&self, o: usize, len: usize) -> usize {
        (0..self.k)
            .filter(|t| {
                let i = o * self.s + t;
                i >= self.p && i - self.p < len
            })
            .count()
    }
}

/// What a window computes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reduce {
    Max,
    /// Average; `true` divides by the whole kernel (padding counted), `false` by the
    /// taps inside the image.
    Avg(bool),
}

struct Job {
    h: usize,
    w: usize,
    wo: usize,
    rows: Axis,
    cols: Axis,
    reduce: Reduce,
}

impl Job {
    fn plane(&self, x: &[f32], out: &mut [f32]) {
        let (w, wo) = (self.w, self.wo);
        let (kh, kw) = (self.rows.k, self.cols.k);
        let start = match self.reduce {
            Reduce::Max => f32::NEG_INFINITY,
            Reduce::Avg(_) => 0.0,
        };
        for (oh, orow) in out.chunks_mut(wo).enumerate() {
            orow.fill(start);
            for ti in 0..kh {
                let r = oh * self.rows.s + ti;
                if r < self.rows.p || r - self.rows.p >= self.h {
                    continue;
                }
                let xrow = &x[(r - self.rows.p) * w..][..w];
                for tj in 0..kw {
                    let (lo, hi) = self.cols.taps(tj, w, wo);
                    if lo >= hi {
                        continue;
                    }
                    let first = lo * self.cols.s + tj - self.cols.p;
                    let dst = &mut orow[lo..hi];
                    let step = self.cols.s;
                    match self.reduce {
                        Reduce::Max => sweep(dst, xrow, first, step, |o, v| o.max(v)),
                        Reduce::Avg(_) => sweep(dst, xrow, first, step, |o, v| o + v),
                    }
                }
            }
            if let Reduce::Avg(include_pad) = self.reduce {
                if include_pad {
                    let inv = 1.0 / (kh * kw) as f32;
                    orow.iter_mut().for_each(|o| *o *= inv);
                } else {
                    let rows = self.rows.inside(oh, self.h);
                    for (ow, o) in orow.iter_mut().enumerate() {
                        *o /= (rows * self.cols.inside(ow, w)) as f32;
                    }
                }
            }
        }
    }
}

/// `dst[i] = f(dst[i], src[first + i * step])`; the stride-1 case is a plain zip.
#[inline(always)]
fn sweep(dst: &mut [f32], src: &[f32], first: usize, step: usize, f: impl Fn(f32, f32) -> f32) {
    if step == 1 {
        let n = dst.len();
        for (o, &v) in dst.iter_mut().zip(&src[first..first + n]) {
            *o = f(*o, v);
        }
    } else {
        for (o, &v) in dst.iter_mut().zip(src[first..].iter().step_by(step)) {
            *o = f(*o, v);
        }
    }
}

/// Calls `f` with the floats of `t` in NCHW order: read in place from a contiguous
/// flex tensor (shared or not), else from a copy.
pub(crate) fn with_floats<B: Backend, R>(t: Tensor<B, 4>, f: impl FnOnce(&[f32]) -> R) -> R {
    let numel = t.shape().num_elements();
    let prim = t.into_primitive().tensor();
    if let Some(ft) = (&prim as &dyn std::any::Any).downcast_ref::<burn_flex::FlexTensor>() {
        if ft.dtype() == burn::tensor::DType::F32
            && ft.is_contiguous()
            && ft.layout().start_offset() == 0
        {
            if let Some(xs) = ft.storage::<f32>().get(..numel) {
                return f(xs);
            }
        }
    }
    let t = Tensor::<B, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(prim));
    f(&host_vec(t))
}

/// The floats of `t` (no copy for a flex tensor nothing else holds).
pub(crate) fn host_vec<B: Backend>(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("float tensor data")
}

/// Pools `x [N, C, H, W]` (floor mode, symmetric padding, no dilation).
pub(crate) fn pool<B: Backend>(
    x: Tensor<B, 4>,
    rows: Axis,
    cols: Axis,
    reduce: Reduce,
) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let out_len = |len: usize, a: Axis| (len + 2 * a.p - a.k) / a.s + 1;
    let (ho, wo) = (out_len(h, rows), out_len(w, cols));
    with_floats(x, |xs| {
        pool_floats(xs, [n, c, h, w], [ho, wo], rows, cols, reduce, &device)
    })
}

fn pool_floats<B: Backend>(
    xs: &[f32],
    [n, c, h, w]: [usize; 4],
    [ho, wo]: [usize; 2],
    rows: Axis,
    cols: Axis,
    reduce: Reduce,
    device: &B::Device,
) -> Tensor<B, 4> {
    let job = Job {
        h,
        w,
        wo,
        rows,
        cols,
        reduce,
    };
    let planes = n * c;
    let (in_len, plane_out) = (h * w, ho * wo);
    let mut out = vec![0f32; planes * plane_out];
    // below this many window taps a second thread costs more than it saves
    let work = planes * plane_out * rows.k * cols.k;
    let threads = if work < 1 << 20 {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(planes)
    };
    let per = planes.div_ceil(threads);
    let run = |first: usize, chunk: &mut [f32]| {
        for (i, o) in chunk.chunks_mut(plane_out).enumerate() {
            job.plane(&xs[(first + i) * in_len..][..in_len], o);
        }
    };
    if threads <= 1 || plane_out == 0 {
        run(0, &mut out);
    } else {
        std::thread::scope(|scope| {
            for (t, chunk) in out.chunks_mut(per * plane_out).enumerate() {
                let run = &run;
                scope.spawn(move || run(t * per, chunk));
            }
        });
    }
    Tensor::from_data(TensorData::new(out, [n, c, ho, wo]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::{avg_pool2d, max_pool2d};
    use burn::tensor::{Distribution, Tolerance};

    type B = Flex;

    fn axis(k: usize, s: usize, p: usize) -> Axis {
        Axis { k, s, p }
    }

    /// Against Burn's own pooling (an independent implementation).
    #[test]
    fn kernels_match_burn() {
        let dev = Default::default();
        let tol = Tolerance::<f32>::absolute(1e-5);
        for &dims in &[
            [1, 3, 8, 8],
            [2, 5, 7, 9],
            [1, 2, 1, 1],
            [3, 40, 16, 16],
            [4, 64, 32, 32],
        ] {
            let x = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
            // pools: kernel, stride, padding per axis
            for &(kh, kw, sh, sw, ph, pw) in &[
                (3, 3, 1, 1, 1, 1),
                (3, 3, 2, 2, 1, 1),
                (2, 2, 2, 2, 0, 0),
                (3, 1, 1, 2, 1, 0),
            ] {
                if dims[2] + 2 * ph < kh || dims[3] + 2 * pw < kw {
                    continue;
                }
                let (r, cl) = (axis(kh, sh, ph), axis(kw, sw, pw));
                let fast = pool(x.clone(), r, cl, Reduce::Max);
                let slow = max_pool2d(x.clone(), [kh, kw], [sh, sw], [ph, pw], [1, 1], false);
                fast.into_data().assert_approx_eq(&slow.into_data(), tol);
                for include in [false, true] {
                    let fast = pool(x.clone(), r, cl, Reduce::Avg(include));
                    let slow = avg_pool2d(x.clone(), [kh, kw], [sh, sw], [ph, pw], include, false);
                    fast.into_data().assert_approx_eq(&slow.into_data(), tol);
                }
            }
        }
    }

    #[test]
    fn hand_worked_values() {
        // 1..9 in a 3x3 plane, 3x3 window, stride 2, padding 1 -> 2x2 outputs
        let dev = Default::default();
        let x = Tensor::<B, 4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &dev,
        );
        let a = axis(3, 2, 1);
        let v = |t: Tensor<B, 4>| t.into_data().to_vec::<f32>().unwrap();
        assert_eq!(v(pool(x.clone(), a, a, Reduce::Max)), [5.0, 6.0, 8.0, 9.0]);
        // windows {1,2,4,5}, {2,3,5,6}, {4,5,7,8}, {5,6,8,9}
        assert_eq!(
            v(pool(x.clone(), a, a, Reduce::Avg(false))),
            [3.0, 4.0, 6.0, 7.0]
        );
        assert_eq!(
            v(pool(x, a, a, Reduce::Avg(true))),
            [12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0]
        );
    }
}
