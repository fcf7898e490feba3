//! Runtime's adapter to the host kernels (`splitnas-host`, `splitnas-kernels`) on the CPU
//! backends (flex, ndarray): which backends run them, a tensor's floats read in place, and
//! pooling.
//!
//! Burn 0.21's flex pools by visiting every window element with a bounds check and
//! writing an `i64` argmax it never needs at inference (2.7 ms for a 3x3 max pool on
//! 36x32x32 here). [`pool`] runs the window kernels of `splitnas_kernels::pool` instead,
//! which cover floor mode with every window holding an image element; GPU backends keep
//! Burn's ops.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use splitnas_host::kernels::{pool as kernels, Geom};
use splitnas_host::{fresh_tensor, HostFloats, Route};

/// Whether `B` keeps its tensors in host memory, so the host kernels apply
/// (`splitnas_host::route`).
pub(crate) fn is_host<B: Backend>() -> bool {
    splitnas_host::route::<B>() == Route::Host
}

/// One spatial axis of a window: kernel taps, stride, leading padding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Axis {
    pub k: usize,
    pub s: usize,
    pub p: usize,
}

/// What a window computes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reduce {
    Max,
    /// Average; `true` divides by the whole kernel (padding counted), `false` by the
    /// taps inside the image.
    Avg(bool),
}

/// Calls `f` with the floats of `t` in NCHW order ([`HostFloats`]: read in place from a
/// contiguous flex tensor, gathered row by row from a strided flex view, else a copy).
pub(crate) fn with_floats<B: Backend, R>(t: Tensor<B, 4>, f: impl FnOnce(&[f32]) -> R) -> R {
    f(&HostFloats::new(t))
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
        oh: out_len(h, rows),
        ow: out_len(w, cols),
    };
    let xs = HostFloats::new(x);
    fresh_tensor([n, c, g.oh, g.ow], &device, |out| match reduce {
        Reduce::Max => kernels::max(&xs, n, &g, out),
        Reduce::Avg(count_pad) => kernels::avg(&xs, n, &g, count_pad, out),
    })
}
