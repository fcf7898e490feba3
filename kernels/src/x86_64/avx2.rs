//! AVX2 + FMA builds: the window engine's register tiles (`R` output rows x `NV` vectors
//! of 8 columns, `R * NV` = 8 independent accumulator chains, enough to cover the FMA
//! latency, every tap a broadcast weight times one unaligned load per vector) and the
//! depthwise weight gradient's channel loop compiled for AVX2.

use core::arch::x86_64::*;

use crate::conv::WeightGrad;
use crate::window::{one, Out, Plane, CONV, MAX};

/// # Safety
/// AVX2 and FMA present; the tile lies inside the plane's output, and `p.xp` holds
/// every input it reads (the padded plane's extent, checked by the caller).
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
    let start = _mm256_set1_ps(p.start::<MODE>());
    let mut acc = [[start; NV]; R];
    let (xp, wt, cols) = (p.xp.as_ptr(), p.wt.as_ptr(), p.cols.as_ptr());
    for i in 0..kh {
        let rows: [*const f32; R] =
            core::array::from_fn(|r| xp.add(((oh0 + r) * g.sh + i * g.dh) * p.pws + ow0));
        for j in 0..kw {
            let wv = _mm256_set1_ps(if MODE == CONV {
                *wt.add(i * kw + j)
            } else {
                0.0
            });
            let cj = *cols.add(j);
            for (a, row) in acc.iter_mut().zip(rows) {
                let src = row.add(cj);
                for (v, av) in a.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(src.add(8 * v));
                    *av = match MODE {
                        CONV => _mm256_fmadd_ps(x, wv, *av),
                        MAX => _mm256_max_ps(x, *av),
                        _ => _mm256_add_ps(x, *av),
                    };
                }
            }
        }
    }
    let o = out.as_mut_ptr() as *mut f32;
    for (r, a) in acc.iter().enumerate() {
        for (v, av) in a.iter().enumerate() {
            _mm256_storeu_ps(o.add((oh0 + r) * g.ow + ow0 + 8 * v), *av);
        }
    }
}

/// Rows in tiles of `R` (the last ones one at a time), full vectors of each row in
/// tiles of `NV`, then `1`, the columns left over one by one.
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
    let vecs = g.ow / 8;
    let rows_full = g.oh / R * R;
    for oh0 in (0..g.oh).step_by(R) {
        let mut v = 0;
        while v + NV <= vecs {
            if oh0 < rows_full {
                tile::<MODE, KH, KW, R, NV>(p, out, oh0, 8 * v);
            } else {
                for oh in oh0..g.oh {
                    tile::<MODE, KH, KW, 1, NV>(p, out, oh, 8 * v);
                }
            }
            v += NV;
        }
        for oh in oh0..(oh0 + R).min(g.oh) {
            for vv in v..vecs {
                tile::<MODE, KH, KW, 1, 1>(p, out, oh, 8 * vv);
            }
            for ow in vecs * 8..g.ow {
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
    let vecs = p.g.ow / 8;
    if vecs >= 4 {
        plane_with::<MODE, KH, KW, 2, 4>(p, out)
    } else if vecs >= 2 {
        plane_with::<MODE, KH, KW, 4, 2>(p, out)
    } else {
        plane_with::<MODE, KH, KW, 8, 1>(p, out)
    }
}

/// # Safety
/// AVX2 and FMA present; `p.xp` is the whole padded plane of `p.g`, `out` the whole
/// output plane.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn window_plane<const MODE: u8>(p: &Plane, out: &mut [Out]) {
    match (p.g.kh, p.g.kw) {
        (3, 3) => plane_sized::<MODE, 3, 3>(p, out),
        (5, 5) => plane_sized::<MODE, 5, 5>(p, out),
        _ => plane_sized::<MODE, 0, 0>(p, out),
    }
}

/// [`WeightGrad::channel`] built for AVX2: its 8 lanes in one vector, the same sums in the
/// same order (no FMA: products are rounded before they are added, as in the portable
/// build).
///
/// # Safety
/// AVX2 present.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn weight_grad_channel(job: &WeightGrad, ci: usize, acc: &mut [f32]) {
    job.channel(ci, acc)
}
