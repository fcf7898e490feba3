//! NEON build of the window engine (depthwise convolution, max and summing pools):
//! register tiles of `R` output rows x `NV` vectors of 4 columns (up to 16 independent
//! accumulator chains of the 32 vector registers, enough to cover the multiply-add
//! latency), every tap a broadcast weight times one unaligned load per vector.
//!
//! The results equal the portable build's bit for bit: on aarch64 the portable loops fuse
//! each tap's multiply-add too (`crate::window`), taps run in the same order, and the
//! maximum is a compare-and-select that keeps the running value on ties and NaN, as the
//! portable `if x > acc` does.

use core::arch::aarch64::*;

use crate::window::{one, Out, Plane, CONV, MAX};

/// # Safety
/// NEON present; the tile lies inside the plane's output, and `p.xp` holds every input it
/// reads (the padded plane's extent, checked by the caller).
#[inline(always)]
unsafe fn tile<
    const MODE: u8,
    const KH: usize,
    const KW: usize,
    const R: usize,
    const NV: usize,
>(
    p: &Plane,
    out: &mut [Out],
    oh0: usize,
    ow0: usize,
) {
    let g = p.g;
    let (kh, kw) = p.kernel::<KH, KW>();
    let start = vdupq_n_f32(p.start::<MODE>());
    let mut acc = [[start; NV]; R];
    let (xp, wt, cols) = (p.xp.as_ptr(), p.wt.as_ptr(), p.cols.as_ptr());
    for i in 0..kh {
        let rows: [*const f32; R] =
            core::array::from_fn(|r| xp.add(((oh0 + r) * g.sh + i * g.dh) * p.pws + ow0));
        for j in 0..kw {
            let wv = vdupq_n_f32(if MODE == CONV {
                *wt.add(i * kw + j)
            } else {
                0.0
            });
            let cj = *cols.add(j);
            for (a, row) in acc.iter_mut().zip(rows) {
                let src = row.add(cj);
                for (v, av) in a.iter_mut().enumerate() {
                    let x = vld1q_f32(src.add(4 * v));
                    *av = match MODE {
                        CONV => vfmaq_f32(*av, x, wv),
                        MAX => vbslq_f32(vcgtq_f32(x, *av), x, *av),
                        _ => vaddq_f32(*av, x),
                    };
                }
            }
        }
    }
    let o = out.as_mut_ptr() as *mut f32;
    for (r, a) in acc.iter().enumerate() {
        for (v, av) in a.iter().enumerate() {
            vst1q_f32(o.add((oh0 + r) * g.ow + ow0 + 4 * v), *av);
        }
    }
}

/// Rows in tiles of `R` (the last ones one at a time), full vectors of each row in tiles
/// of `NV`, then `1`, the columns left over one by one.
#[inline(always)]
unsafe fn plane_with<
    const MODE: u8,
    const KH: usize,
    const KW: usize,
    const R: usize,
    const NV: usize,
>(
    p: &Plane,
    out: &mut [Out],
) {
    let g = p.g;
    let vecs = g.ow / 4;
    let rows_full = g.oh / R * R;
    for oh0 in (0..g.oh).step_by(R) {
        let mut v = 0;
        while v + NV <= vecs {
            if oh0 < rows_full {
                tile::<MODE, KH, KW, R, NV>(p, out, oh0, 4 * v);
            } else {
                for oh in oh0..g.oh {
                    tile::<MODE, KH, KW, 1, NV>(p, out, oh, 4 * v);
                }
            }
            v += NV;
        }
        for oh in oh0..(oh0 + R).min(g.oh) {
            for vv in v..vecs {
                tile::<MODE, KH, KW, 1, 1>(p, out, oh, 4 * vv);
            }
            for ow in vecs * 4..g.ow {
                one::<MODE, true, KH, KW>(p, out, oh, ow);
            }
        }
    }
}

#[inline(always)]
unsafe fn plane_sized<const MODE: u8, const KH: usize, const KW: usize>(
    p: &Plane,
    out: &mut [Out],
) {
    let vecs = p.g.ow / 4;
    if vecs >= 4 {
        plane_with::<MODE, KH, KW, 4, 4>(p, out)
    } else if vecs >= 2 {
        plane_with::<MODE, KH, KW, 8, 2>(p, out)
    } else {
        plane_with::<MODE, KH, KW, 8, 1>(p, out)
    }
}

/// # Safety
/// NEON present; `p.xp` is the whole padded plane of `p.g`, `out` the whole output plane.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn window_plane<const MODE: u8>(p: &Plane, out: &mut [Out]) {
    match (p.g.kh, p.g.kw) {
        (3, 3) => plane_sized::<MODE, 3, 3>(p, out),
        (5, 5) => plane_sized::<MODE, 5, 5>(p, out),
        _ => plane_sized::<MODE, 0, 0>(p, out),
    }
}
