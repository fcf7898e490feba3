//! The window engine behind depthwise convolution and max / summing pools: each input
//! plane is copied once into a padded plane (ReLU applied there; a column stride `s`
//! stores it as `s` column phases so a tap's loads stay contiguous), then outputs are
//! accumulated over all taps, the kernel size fixed at compile time for 3x3 and 5x5.
//! Portable: rows of 8 outputs the compiler vectorizes; x86_64: AVX2 + FMA register tiles
//! (`crate::x86_64::avx2`); aarch64: NEON register tiles (`crate::aarch64::window`). Every output is written once; no zero pass.

use core::mem::MaybeUninit;

use crate::arch::Level;
use crate::conv::Filter;
use crate::Geom;

/// Work (multiply-adds) below which a kernel stays on the calling thread. Measured on a
/// 2-core x86: a DARTS op on one 32x32 image (0.3-1.3 M multiply-adds) ran 1.3-2.9x
/// slower split over two rayon workers than on one thread; a batch of 32 ran 1.6-3x
/// faster split.
pub(crate) const PARALLEL_WORK: usize = 1 << 22;

/// What a window computes over its taps ([`window`]'s `MODE`): multiply-add.
pub(crate) const CONV: u8 = 0;
/// Maximum (the padding reads as minus infinity).
pub(crate) const MAX: u8 = 1;
/// Sum (the padding reads as zero); average pools divide afterwards.
pub(crate) const SUM: u8 = 2;

pub(crate) type Out = MaybeUninit<f32>;

/// `acc + a * b`, fused (one rounding) when `FMA`.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if FMA {
        #[cfg(feature = "std")]
        return a.mul_add(b, acc);
        #[cfg(not(feature = "std"))]
        return libm::fmaf(a, b, acc);
    }
    acc + a * b
}

#[inline(always)]
fn tap<const MODE: u8, const FMA: bool>(acc: f32, x: f32, w: f32) -> f32 {
    match MODE {
        CONV => madd::<FMA>(acc, x, w),
        // `vmaxps`-shaped, not `f32::max` (no NaN fix-up in the inner loop)
        MAX => {
            if x > acc {
                x
            } else {
                acc
            }
        }
        _ => acc + x,
    }
}

/// One plane's inputs. The padded input `xp` (ReLU already applied, border at the pad
/// value) is kept as `sw` column phases, `[sw][ph][pws]`: padded column `c` lies in
/// phase `c % sw` at `c / sw`, so the columns a tap reads for consecutive outputs are
/// contiguous at any column stride. `wt [kh, kw]` and `b` are read for `CONV` only.
pub(crate) struct Plane<'a> {
    pub(crate) xp: &'a [f32],
    /// Offset of tap column `j`'s phase and first column (`(j dw % sw) ph pws + j dw / sw`).
    pub(crate) cols: &'a [usize],
    pub(crate) pws: usize,
    pub(crate) wt: &'a [f32],
    pub(crate) b: f32,
    pub(crate) g: &'a Geom,
}

impl Plane<'_> {
    /// The kernel size: `KH` x `KW` when fixed at compile time (non-zero), else `g`'s.
    #[inline(always)]
    pub(crate) fn kernel<const KH: usize, const KW: usize>(&self) -> (usize, usize) {
        (
            if KH > 0 { KH } else { self.g.kh },
            if KW > 0 { KW } else { self.g.kw },
        )
    }

    /// An accumulator's starting value: the bias, minus infinity, or zero.
    #[inline(always)]
    pub(crate) fn start<const MODE: u8>(&self) -> f32 {
        match MODE {
            CONV => self.b,
            MAX => f32::NEG_INFINITY,
            _ => 0.0,
        }
    }

    /// Offset in `xp` of the input tap `(i, j)` reads for output `(oh, ow)`; the next
    /// output column's is the next float.
    #[inline(always)]
    pub(crate) fn at(&self, oh: usize, ow: usize, i: usize, j: usize) -> usize {
        self.cols[j] + (oh * self.g.sh + i * self.g.dh) * self.pws + ow
    }
}

/// One output computed tap by tap: the portable path, and the leftovers of the vector
/// tiles.
#[inline(always)]
pub(crate) fn one<const MODE: u8, const FMA: bool, const KH: usize, const KW: usize>(
    p: &Plane,
    out: &mut [Out],
    oh: usize,
    ow: usize,
) {
    let g = p.g;
    let (kh, kw) = p.kernel::<KH, KW>();
    let mut a = p.start::<MODE>();
    for i in 0..kh {
        for j in 0..kw {
            let wv = if MODE == CONV { p.wt[i * kw + j] } else { 0.0 };
            a = tap::<MODE, FMA>(a, p.xp[p.at(oh, ow, i, j)], wv);
        }
    }
    out[oh * g.ow + ow].write(a);
}

/// The portable plane: rows of `W` outputs accumulated together (the compiler
/// vectorizes the lanes), the rest one by one.
#[inline(always)]
fn plane_portable<const MODE: u8, const FMA: bool, const KH: usize, const KW: usize>(
    p: &Plane,
    out: &mut [Out],
) {
    const W: usize = 8;
    let g = p.g;
    let (kh, kw) = p.kernel::<KH, KW>();
    let full = g.ow / W * W;
    let start = p.start::<MODE>();
    for oh in 0..g.oh {
        for ow0 in (0..full).step_by(W) {
            let mut acc = [start; W];
            for i in 0..kh {
                for j in 0..kw {
                    let wv = if MODE == CONV { p.wt[i * kw + j] } else { 0.0 };
                    let src = &p.xp[p.at(oh, ow0, i, j)..][..W];
                    for (a, &x) in acc.iter_mut().zip(src) {
                        *a = tap::<MODE, FMA>(*a, x, wv);
                    }
                }
            }
            for (o, &a) in out[oh * g.ow + ow0..][..W].iter_mut().zip(&acc) {
                o.write(a);
            }
        }
        for ow in full..g.ow {
            one::<MODE, FMA, KH, KW>(p, out, oh, ow);
        }
    }
}

fn plane_at<const MODE: u8>(p: &Plane, out: &mut [Out], level: Level) {
    assert_eq!(out.len(), p.g.oh * p.g.ow, "window output plane");
    #[cfg(target_arch = "x86_64")]
    if matches!(level, Level::Avx2 | Level::Avx512) {
        // SAFETY: callers pass a level the CPU has (`arch::level`, or checked with
        // `arch::available`); `window` sized `xp` to the padded plane and `out` to the
        // output plane (asserted above).
        return unsafe { crate::x86_64::avx2::window_plane::<MODE>(p, out) };
    }
    #[cfg(target_arch = "aarch64")]
    if level == Level::Neon {
        // SAFETY: as above, for NEON.
        return unsafe { crate::aarch64::window::window_plane::<MODE>(p, out) };
    }
    let _ = level;
    // aarch64 has FMA in its baseline: the portable loops use it there
    const FMA: bool = cfg!(target_arch = "aarch64");
    match (p.g.kh, p.g.kw) {
        (3, 3) => plane_portable::<MODE, FMA, 3, 3>(p, out),
        (5, 5) => plane_portable::<MODE, FMA, 5, 5>(p, out),
        _ => plane_portable::<MODE, FMA, 0, 0>(p, out),
    }
}

/// Writes plane `x [h, w]` into the phases of `xp` (see [`Plane`]) at padded row `pt`,
/// column `pl`, ReLU'd when asked. The border is not touched: `xp` is filled with the
/// pad value once per call, and every plane writes the same interior positions.
fn pad_plane(x: &[f32], xp: &mut [f32], g: &Geom, (ph, pws): (usize, usize), relu: bool) {
    for (r, src) in x.chunks_exact(g.w).enumerate() {
        if g.sw == 1 {
            let dst = &mut xp[(r + g.pt) * pws + g.pl..][..g.w];
            if relu {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v.max(0.0);
                }
            } else {
                dst.copy_from_slice(src);
            }
        } else {
            for (col, &v) in src.iter().enumerate() {
                let c = col + g.pl;
                xp[((c % g.sw) * ph + r + g.pt) * pws + c / g.sw] =
                    if relu { v.max(0.0) } else { v };
            }
        }
    }
}

/// Runs `MODE` over every window of every plane of `x [n, C, H, W]` into `out [n, C, oh,
/// ow]`: each input plane is copied once into a padded plane, then the outputs are
/// accumulated in registers over all taps. `f.wt [C, kh, kw]` and `f.bias [C]` are read
/// for `CONV` only. Writes every element of `out`.
pub(crate) fn window<const MODE: u8>(
    x: &[f32],
    n: usize,
    f: Filter,
    g: &Geom,
    level: Level,
    out: &mut [Out],
) {
    let Filter { wt, bias, relu } = f;
    let (plane_in, plane_out, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert_eq!(x.len(), n * g.c * plane_in, "window input length");
    let len = n * g.c * plane_out;
    assert_eq!(out.len(), len, "window output length");
    if len == 0 {
        return;
    }
    if MODE == CONV {
        assert_eq!(wt.len(), g.c * taps, "depthwise weight length");
        if let Some(b) = bias {
            assert_eq!(b.len(), g.c, "depthwise bias length");
        }
    }
    // the padded plane holds every input position any output reads
    let ph = ((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1).max(g.pt + g.h);
    let pw = ((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1).max(g.pl + g.w);
    let pws = pw.div_ceil(g.sw);
    let pad = if MODE == MAX { f32::NEG_INFINITY } else { 0.0 };
    let cols: alloc::vec::Vec<usize> = (0..g.kw)
        .map(|j| {
            let c = j * g.dw;
            (c % g.sw) * ph * pws + c / g.sw
        })
        .collect();
    let job = |xp: &mut alloc::vec::Vec<f32>, p: usize, o: &mut [Out]| {
        let ch = p % g.c;
        if xp.is_empty() {
            // the border, once per buffer: planes only overwrite the interior
            xp.resize(g.sw * ph * pws, pad);
        }
        pad_plane(&x[p * plane_in..][..plane_in], xp, g, (ph, pws), relu);
        let wt = if MODE == CONV {
            &wt[ch * taps..][..taps]
        } else {
            &[]
        };
        let b = bias.map_or(0.0, |b| b[ch]);
        let plane = Plane {
            xp,
            cols: &cols,
            pws,
            wt,
            b,
            g,
        };
        plane_at::<MODE>(&plane, o, level);
    };
    let parallel = len * taps >= PARALLEL_WORK && crate::par::threads() >= 2;
    crate::par::chunks_with(
        out,
        plane_out,
        parallel,
        8,
        alloc::vec::Vec::new,
        |xp, p, o| job(xp, p, o),
    );
}
