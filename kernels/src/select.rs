//! Channel selection as plane copies: select (`y[:, j] = x[:, index[j]]`, which with a
//! permutation is a channel shuffle), select from the concatenation of two inputs without
//! building it (merge), the gradient scatter back onto the source channels, and every
//! `s`-th row and column of each plane (subsample) with its gradient.

use crate::out::{copy_into, mark_written, slots, Output};

/// `out [n, index.len(), plane]`: channel `j` of sample `s` is channel `index[j]` of sample
/// `s` of `x [n, c, plane]`, one plane copy each.
///
/// # Panics
/// When an index is `c` or above, or a length does not fit.
pub fn select_planes<O: Output + ?Sized>(
    x: &[f32],
    [n, c]: [usize; 2],
    plane: usize,
    index: &[usize],
    out: &mut O,
) {
    assert_eq!(x.len(), n * c * plane, "select input length");
    assert!(
        index.iter().all(|&i| i < c),
        "channel index out of range for {c} channels"
    );
    let o = slots(out, n * index.len() * plane, "select");
    if !o.is_empty() {
        let dst = o.chunks_exact_mut(plane);
        let src = x
            .chunks_exact(c * plane)
            .flat_map(|s| index.iter().map(move |&i| &s[i * plane..][..plane]));
        for (d, s) in dst.zip(src) {
            copy_into(d, s);
        }
    }
    // SAFETY: `n * index.len()` planes copied, the whole output.
    unsafe { mark_written(out) };
}

/// `out [n, index.len(), plane]`: channel `j` is channel `index[j]` of the concatenation
/// of `a [n, ca, plane]` and `b [n, cb, plane]` along the channels.
///
/// # Panics
/// When an index is `ca + cb` or above, or a length does not fit.
#[allow(clippy::too_many_arguments)]
pub fn merge_planes<O: Output + ?Sized>(
    a: &[f32],
    ca: usize,
    b: &[f32],
    cb: usize,
    n: usize,
    plane: usize,
    index: &[usize],
    out: &mut O,
) {
    assert_eq!(a.len(), n * ca * plane, "merge first input length");
    assert_eq!(b.len(), n * cb * plane, "merge second input length");
    assert!(
        index.iter().all(|&i| i < ca + cb),
        "channel index out of range for {ca} + {cb} channels"
    );
    let o = slots(out, n * index.len() * plane, "merge");
    if !o.is_empty() {
        let mut dst = o.chunks_exact_mut(plane);
        for s in 0..n {
            for &i in index {
                let src = if i < ca {
                    &a[(s * ca + i) * plane..]
                } else {
                    &b[(s * cb + i - ca) * plane..]
                };
                copy_into(dst.next().expect("one plane per index"), &src[..plane]);
            }
        }
    }
    // SAFETY: `n * index.len()` planes copied, the whole output.
    unsafe { mark_written(out) };
}

/// The gradient of a select: adds plane `j` of `grad [n, index.len(), plane]` onto channel
/// `index[j] - offset` of `gx [n, channels, plane]`, for the indices in `offset..offset +
/// channels` (the second input of a merge has `offset` = the first input's channels). An
/// index may repeat; its gradients add up.
pub fn scatter_planes(
    grad: &[f32],
    index: &[usize],
    [n, channels]: [usize; 2],
    plane: usize,
    offset: usize,
    gx: &mut [f32],
) {
    assert_eq!(
        grad.len(),
        n * index.len() * plane,
        "scatter gradient length"
    );
    assert_eq!(gx.len(), n * channels * plane, "scatter output length");
    if gx.is_empty() || grad.is_empty() {
        return;
    }
    for (gx, g) in gx
        .chunks_exact_mut(channels * plane)
        .zip(grad.chunks_exact(index.len() * plane))
    {
        for (&i, g) in index.iter().zip(g.chunks_exact(plane)) {
            if (offset..offset + channels).contains(&i) {
                for (a, b) in gx[(i - offset) * plane..][..plane].iter_mut().zip(g) {
                    *a += b;
                }
            }
        }
    }
}

/// Rows (or columns) `offset, offset + s, ..` below `len`: `ceil((len - offset) / s)`.
pub fn subsample_len(len: usize, offset: usize, s: usize) -> usize {
    len.saturating_sub(offset).div_ceil(s)
}

/// Every `s`-th row and column from `offset` of each of the `planes` planes `[h, w]` of
/// `x`: `out[p, i, j] = x[p, offset + s[0] i, offset + s[1] j]` (`x[:, :, o::s, o::s]` in
/// PyTorch). A strided 1x1 convolution is a 1x1 convolution of the subsampled input.
pub fn subsample<O: Output + ?Sized>(
    x: &[f32],
    planes: usize,
    [h, w]: [usize; 2],
    offset: usize,
    s: [usize; 2],
    out: &mut O,
) {
    assert_eq!(x.len(), planes * h * w, "subsample input length");
    let (ho, wo) = (
        subsample_len(h, offset, s[0]),
        subsample_len(w, offset, s[1]),
    );
    let o = slots(out, planes * ho * wo, "subsample");
    if !o.is_empty() {
        for (plane, o) in x.chunks_exact(h * w).zip(o.chunks_exact_mut(ho * wo)) {
            for (i, orow) in o.chunks_exact_mut(wo).enumerate() {
                let row = &plane[(offset + s[0] * i) * w..][..w];
                let ins = row[offset..].iter().step_by(s[1]);
                for (d, &v) in orow.iter_mut().zip(ins) {
                    d.write(v);
                }
            }
        }
    }
    // SAFETY: every output row of every plane written above.
    unsafe { mark_written(out) };
}

/// The gradient of [`subsample`]: writes `g [planes, ho, wo]` to the positions of `gx
/// [planes, h, w]` the subsample read (the others are left as they are).
pub fn subsample_backward(
    g: &[f32],
    planes: usize,
    [h, w]: [usize; 2],
    offset: usize,
    s: [usize; 2],
    gx: &mut [f32],
) {
    let (ho, wo) = (
        subsample_len(h, offset, s[0]),
        subsample_len(w, offset, s[1]),
    );
    assert_eq!(g.len(), planes * ho * wo, "subsample gradient length");
    assert_eq!(gx.len(), planes * h * w, "subsample input-gradient length");
    if ho * wo == 0 {
        return;
    }
    for (plane, g) in gx.chunks_exact_mut(h * w).zip(g.chunks_exact(ho * wo)) {
        for (i, g) in g.chunks_exact(wo).enumerate() {
            let row = &mut plane[(offset + s[0] * i) * w..][..w];
            for (j, &v) in g.iter().enumerate() {
                row[offset + s[1] * j] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fresh_vec;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn hand_made_planes() {
        // channel c of sample n holds the value 10 * n + c everywhere (planes of 4)
        let x: Vec<f32> = (0..2)
            .flat_map(|n| (0..3).flat_map(move |c| core::iter::repeat_n((10 * n + c) as f32, 4)))
            .collect();
        let y = fresh_vec(16, |o| select_planes(&x, [2, 3], 4, &[2, 0], o));
        let expect: Vec<f32> = [2.0, 0.0, 12.0, 10.0]
            .iter()
            .flat_map(|&v| core::iter::repeat_n(v, 4))
            .collect();
        assert_eq!(y, expect);
        // merge [a (1 channel); b (2 channels)], planes of 1
        let (a, b) = ([1.0, 2.0], [3.0, 4.0, 5.0, 6.0]);
        let y = fresh_vec(6, |o| merge_planes(&a, 1, &b, 2, 2, 1, &[2, 0, 0], o));
        assert_eq!(y, [4.0, 1.0, 1.0, 6.0, 2.0, 2.0]);
        // its gradient: repeats add up; each input gets the channels in its range
        let g = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut ga = vec![0.0; 2];
        scatter_planes(&g, &[2, 0, 0], [2, 1], 1, 0, &mut ga);
        assert_eq!(ga, [5.0, 11.0]);
        let mut gb = vec![0.0; 4];
        scatter_planes(&g, &[2, 0, 0], [2, 2], 1, 1, &mut gb);
        assert_eq!(gb, [0.0, 1.0, 0.0, 4.0]);
    }

    #[test]
    fn subsample_picks_every_second_pixel() {
        // one 3x4 plane 0..12; offset 1: rows 1, columns 1 and 3
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(
            fresh_vec(2, |o| subsample(&x, 1, [3, 4], 1, [2, 2], o)),
            [5.0, 7.0]
        );
        // offset 0, stride 2 rows and 3 columns: rows 0, 2; columns 0, 3
        assert_eq!(
            fresh_vec(4, |o| subsample(&x, 1, [3, 4], 0, [2, 3], o)),
            [0.0, 3.0, 8.0, 11.0]
        );
        let mut gx = vec![0.0; 12];
        subsample_backward(&[1.0, 2.0], 1, [3, 4], 1, [2, 2], &mut gx);
        assert_eq!(gx.iter().filter(|&&v| v != 0.0).count(), 2);
        assert_eq!((gx[5], gx[7]), (1.0, 2.0));
    }
}
