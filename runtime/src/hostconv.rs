//! Runtime's calls into the convolution kernels of `splitnas_kernels::conv` (depthwise,
//! 1x1 pointwise, dense) and the strided subsample, each into a fresh vector (no zero pass
//! before the kernel writes it).

use splitnas_host::kernels::conv::{self, Filter};
use splitnas_host::kernels::{fresh_vec, select};

pub(crate) use splitnas_host::kernels::Geom;

/// Every `s`-th row and column of each of the `planes` planes `[h, w]` of `x`.
pub(crate) fn subsample(x: &[f32], planes: usize, [h, w]: [usize; 2], s: [usize; 2]) -> Vec<f32> {
    let len = planes * select::subsample_len(h, 0, s[0]) * select::subsample_len(w, 0, s[1]);
    fresh_vec(len, |o| select::subsample(x, planes, [h, w], 0, s, o))
}

/// Depthwise convolution of `x [n, C, H, W]` with `wt [C, 1, kh, kw]` and optional bias
/// `[C]`, ReLU on the input first when `relu`; returns `[n, C, oh, ow]`.
pub(crate) fn depthwise(
    x: &[f32],
    n: usize,
    wt: &[f32],
    bias: Option<&[f32]>,
    g: &Geom,
    relu: bool,
) -> Vec<f32> {
    fresh_vec(n * g.c * g.plane_out(), |o| {
        conv::depthwise(x, n, g, Filter { wt, bias, relu }, o)
    })
}

/// 1x1 convolution of `x [n, k, HW]` with `wt [m, k]` and optional bias `[m]`, ReLU on
/// the input first when `relu`; returns `[n, m, HW]`.
pub(crate) fn pointwise(
    x: &[f32],
    n: usize,
    hw: usize,
    wt: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    fresh_vec(n * m * hw, |o| {
        conv::pointwise(x, [n, hw], m, Filter { wt, bias, relu }, o)
    })
}

/// Dense convolution (group 1, any kernel) of `x [n, C, H, W]` with `wt [m, C kh kw]`
/// and optional bias `[m]`, ReLU on the input first when `relu`; returns `[n, m, oh, ow]`.
pub(crate) fn dense(
    x: &[f32],
    n: usize,
    wt: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    g: &Geom,
    relu: bool,
) -> Vec<f32> {
    fresh_vec(n * m * g.plane_out(), |o| {
        conv::dense(x, n, m, g, Filter { wt, bias, relu }, o)
    })
}
