//! Host-memory helpers for the CPU backends (flex, ndarray): reading a tensor's floats
//! in place, and pooling.
//!
//! Burn 0.21's flex pools by visiting every window element with a bounds check and
//! writing an `i64` argmax it never needs at inference (2.7 ms for a 3x3 max pool on
//! 36x32x32 here). [`pool`] runs the window kernels of [`crate::hostconv`] instead
//! (padded plane, outputs accumulated in registers over the taps), which cover floor
//! mode with every window holding an image element; GPU backends keep Burn's ops.

use std::any::TypeId;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::hostconv::{self, Geom};

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

/// Calls `f` with the floats of `t` in NCHW order: read in place from a contiguous
/// flex tensor (shared or not, at any offset), gathered row by row from a strided flex
/// view (a `Slice`, a batch chunk), else from a copy.
pub(crate) fn with_floats<B: Backend, R>(t: Tensor<B, 4>, f: impl FnOnce(&[f32]) -> R) -> R {
    let prim = t.into_primitive().tensor();
    if let Some(ft) = (&prim as &dyn std::any::Any).downcast_ref::<burn_flex::FlexTensor>() {
        if ft.dtype() == burn::tensor::DType::F32 {
            let (layout, xs) = (ft.layout(), ft.storage::<f32>());
            if let Some((start, end)) = layout.contiguous_offsets() {
                if let Some(v) = xs.get(start..end) {
                    return f(v);
                }
            } else if let Some(v) = gather(xs, layout) {
                return f(&v);
            }
        }
    }
    let t = Tensor::<B, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(prim));
    f(&host_vec(t))
}

/// The elements of a 4-D strided view with non-negative strides, row by row (a
/// contiguous row is one copy); `None` when the view reaches outside `xs`.
fn gather(xs: &[f32], layout: &burn_flex::Layout) -> Option<Vec<f32>> {
    let (dims, strides) = (layout.shape(), layout.strides());
    if dims.num_dims() != 4 || !layout.has_positive_strides() {
        return None;
    }
    let d: [usize; 4] = std::array::from_fn(|i| dims[i]);
    let s: [usize; 4] = std::array::from_fn(|i| strides[i] as usize);
    let last = layout.start_offset() + (0..4).map(|i| d[i].saturating_sub(1) * s[i]).sum::<usize>();
    if d.contains(&0) || last >= xs.len() {
        return None;
    }
    let mut out = Vec::with_capacity(d.iter().product());
    for n in 0..d[0] {
        for c in 0..d[1] {
            for h in 0..d[2] {
                let row = layout.start_offset() + n * s[0] + c * s[1] + h * s[2];
                if s[3] == 1 {
                    out.extend_from_slice(&xs[row..row + d[3]]);
                } else {
                    out.extend((0..d[3]).map(|w| xs[row + w * s[3]]));
                }
            }
        }
    }
    Some(out)
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
    let g = Geom {
        c,
        h,
        w,
        kh: rows.k,
        kw: cols.k,
        sh: rows.s,
        sw: cols.s,
        dh: 1,
        dw: 1,
        pt: rows.p,
        pl: cols.p,
        oh: ho,
        ow: wo,
    };
    let out = match reduce {
        Reduce::Max => hostconv::pool::<{ hostconv::MAX }>(xs, n, &g),
        Reduce::Avg(include_pad) => {
            let mut out = hostconv::pool::<{ hostconv::SUM }>(xs, n, &g);
            if include_pad {
                let taps = (rows.k * cols.k) as f32;
                out.iter_mut().for_each(|o| *o /= taps);
            } else {
                let inside: Vec<f32> = (0..ho)
                    .flat_map(|oh| (0..wo).map(move |ow| (oh, ow)))
                    .map(|(oh, ow)| (rows.inside(oh, h) * cols.inside(ow, w)) as f32)
                    .collect();
                for plane in out.chunks_exact_mut(ho * wo) {
                    for (o, d) in plane.iter_mut().zip(&inside) {
                        *o /= d;
                    }
                }
            }
            out
        }
    };
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

    /// Views (a slice, a batch chunk at an offset, swapped axes with a non-unit inner
    /// stride) read the same floats as Burn's own copy of them.
    #[test]
    fn views_read_like_burn() {
        let dev = Default::default();
        let x = Tensor::<B, 4>::random([2, 3, 5, 6], Distribution::Normal(0.0, 1.0), &dev);
        let views = [
            x.clone().slice([0..2, 1..3, 1..5, 2..6]),
            x.clone().split(1, 0).pop().unwrap(),
            x.clone().swap_dims(2, 3),
            x.clone().swap_dims(2, 3).slice([1..2, 0..3, 1..4, 0..5]),
        ];
        for v in views {
            let want = v.clone().into_data().to_vec::<f32>().unwrap();
            assert_eq!(with_floats(v, |xs| xs.to_vec()), want);
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
