//! The int8 matrix product behind the convolutions and the fully connected layer:
//! `acc[m, p] = sum_k w[m, k] x[k, p]` in int32, then per output channel
//! `store(requant[m](acc + bias[m] - zx sum_k w[m, k]))`.
//!
//! Each SIMD path wants the columns `x [K, P]` in its own layout, packed per call (`K P`
//! bytes, small beside the `M K P` products):
//! - portable: `[K, P]` as given (borrowed when already so);
//! - AVX2 and NEON: pairs of rows interleaved, `[K/2][P'][2]` (`P'` a multiple of 8):
//!   AVX2 widens 8 pixels' pairs to i16 and `vpmaddwd`s them with a broadcast weight pair;
//!   NEON `vmull_s8`s them into i16 products and `vpadalq_s16` adds each pair into i32;
//! - AVX-512 VNNI: quads of rows, `[K/4][P'][4]` (`P'` a multiple of 16), shifted to u8
//!   (`x + 128`) for `vpdpbusd` (u8 x i8), whose extra `128 sum_k w[m, k]` the epilogue
//!   takes off with the zero point's correction.
//!
//! Rows past `K` are zero in the packed weights, pixels past `P` are computed and dropped.
//! The AVX2 and NEON products fit in i16 before they are widened (`|x w| <= 2^14`),
//! `vpdpbusd` sums its four in i32, and int32 sums wrap the same way in every order, so
//! all paths give the same accumulators (mod 2^32; equal when the true sum fits i32).

use alloc::borrow::Cow;
use alloc::vec;
use alloc::vec::Vec;

pub(crate) use super::requant::{check_channels, requant_of, store_row_portable};
use super::{OutQ, Requant};
use crate::arch::{self, Level};

/// Which build runs the int8 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Loops that define the result.
    Portable,
    /// AVX2: `vpmovsxbw` + `vpmaddwd`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 VNNI: `vpdpbusd`.
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// NEON: `vmull_s8` + `vpadalq_s16`.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// Whether the CPU has AVX-512 VNNI (and the AVX-512BW the kernel's loads assume).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn has_vnni() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
}

#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
fn has_vnni() -> bool {
    cfg!(all(
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512vnni"
    ))
}

impl Path {
    /// The fastest path at `level` (VNNI when the level is AVX-512 and the CPU has it).
    pub(crate) fn at(level: Level) -> Self {
        #[cfg(target_arch = "x86_64")]
        match level {
            Level::Avx512 if has_vnni() => return Path::Vnni,
            Level::Avx2 | Level::Avx512 => return Path::Avx2,
            _ => {}
        }
        #[cfg(target_arch = "aarch64")]
        if level == Level::Neon {
            return Path::Neon;
        }
        let _ = level;
        Path::Portable
    }

    /// The fastest path on this CPU.
    pub(crate) fn detect() -> Self {
        Self::at(arch::level())
    }

    /// The paths this CPU runs, portable first (for the tests).
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Self> {
        // other targets than x86_64 and aarch64 push nothing
        #[allow(unused_mut)]
        let mut v = vec![Path::Portable];
        for l in crate::testing::simd_levels("int8") {
            #[cfg(target_arch = "x86_64")]
            {
                if !v.contains(&Path::Avx2) {
                    v.push(Path::Avx2);
                }
                if l == Level::Avx512 {
                    if has_vnni() {
                        v.push(Path::Vnni);
                    } else {
                        std::println!("note: int8: VNNI skipped, this CPU does not have it");
                    }
                }
            }
            #[cfg(target_arch = "aarch64")]
            if l == Level::Neon {
                v.push(Path::Neon);
            }
            let _ = l;
        }
        v
    }

    /// Rows of `K` interleaved per packed pixel.
    fn group(self) -> usize {
        match self {
            Path::Portable => 1,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => 2,
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => 4,
            #[cfg(target_arch = "aarch64")]
            Path::Neon => 2,
        }
    }

    /// Pixels per vector: the packed pixel count is a multiple of it.
    fn lanes(self) -> usize {
        match self {
            Path::Portable => 1,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => 8,
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => 16,
            #[cfg(target_arch = "aarch64")]
            Path::Neon => 8,
        }
    }

    /// `group` consecutive weights of a row (the rest of `ws` zero) as one packed word.
    fn word(self, ws: [i8; 4]) -> i32 {
        match self {
            Path::Portable => ws[0] as i32,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => {
                let h = |v: i8| v as i16 as u16 as u32;
                (h(ws[0]) | h(ws[1]) << 16) as i32
            }
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => i32::from_le_bytes(ws.map(|v| v as u8)),
            #[cfg(target_arch = "aarch64")]
            Path::Neon => i16::from_le_bytes([ws[0] as u8, ws[1] as u8]) as i32,
        }
    }

    /// What the packing adds to every activation (VNNI's u8 shift).
    fn offset(self) -> i32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => 128,
            _ => 0,
        }
    }
}

/// Weights `[M, K]` packed for a path: row `m` is `kg` words, each `group` weights of
/// consecutive `k` (portable: one i32; AVX2: two i16 halves; NEON: two i8 in the low
/// half; VNNI: four i8), zero past `K`; and the row sums `sum_k w[m, k]`.
pub(crate) struct Weights {
    pub(crate) w: Vec<i32>,
    pub(crate) kg: usize,
    pub(crate) sums: Vec<i32>,
}

impl Weights {
    pub(crate) fn pack(path: Path, wt: &[i8], m: usize, k: usize) -> Self {
        assert_eq!(wt.len(), m * k, "int8 weight length");
        let g = path.group();
        let kg = k.div_ceil(g);
        let mut w = vec![0i32; m * kg];
        for (row, dst) in wt.chunks_exact(k.max(1)).zip(w.chunks_exact_mut(kg.max(1))) {
            for (d, ws) in dst.iter_mut().zip(row.chunks(g)) {
                *d = path.word(core::array::from_fn(|i| ws.get(i).copied().unwrap_or(0)));
            }
        }
        let sums = if k == 0 {
            vec![0; m]
        } else {
            wt.chunks_exact(k)
                .map(|r| r.iter().map(|&v| v as i32).sum())
                .collect()
        };
        Self { w, kg, sums }
    }
}

/// Columns `x [K, P]` packed for a path (see the module doc): `kg` groups of `pp`
/// pixels, each `group` bytes.
pub(crate) struct Cols<'a> {
    pub(crate) x: Cow<'a, [i8]>,
    pub(crate) kg: usize,
    pub(crate) pp: usize,
}

impl<'a> Cols<'a> {
    /// Packs `x[k, p] = src[k sk + p sp]` for `k < K`, `p < P` (borrowed when the path
    /// reads `[K, P]` as it is).
    pub(crate) fn pack(
        path: Path,
        src: &'a [i8],
        [k, p]: [usize; 2],
        [sk, sp]: [usize; 2],
    ) -> Self {
        if k > 0 && p > 0 {
            assert!(
                (k - 1) * sk + (p - 1) * sp < src.len(),
                "int8 column source"
            );
        }
        if path.group() == 1 && sp == 1 && sk == p {
            return Self {
                x: Cow::Borrowed(&src[..k * p]),
                kg: k,
                pp: p.next_multiple_of(path.lanes()),
            };
        }
        Self::build(path, [k, p], |kk, row| {
            if sp == 1 {
                row.copy_from_slice(&src[kk * sk..][..p]);
            } else {
                for (pi, d) in row.iter_mut().enumerate() {
                    *d = src[kk * sk + pi * sp];
                }
            }
        })
    }

    /// Packs the rows `fill(k, row)` writes (`P` values each) for `k < K`.
    pub(crate) fn build(
        path: Path,
        [k, p]: [usize; 2],
        mut fill: impl FnMut(usize, &mut [i8]),
    ) -> Self {
        let (g, pp) = (path.group(), p.next_multiple_of(path.lanes()));
        let kg = k.div_ceil(g);
        let off = path.offset() as i8 as u8;
        // rows past K and pixels past P stay 0: their weights are 0 / they are dropped
        let mut x = vec![0i8; kg * pp * g];
        if g == 1 && off == 0 {
            for kk in 0..k {
                fill(kk, &mut x[kk * pp..][..p]);
            }
        } else {
            // one group of `g` rows at a time, interleaved pixel by pixel in one pass
            let mut rows = vec![0i8; g * p];
            for q in 0..kg {
                let n = g.min(k - q * g);
                for t in 0..n {
                    fill(q * g + t, &mut rows[t * p..][..p]);
                }
                let dst = &mut x[q * pp * g..][..p * g];
                match (g, n) {
                    (4, 4) => interleave::<4>(&rows, p, off, dst),
                    (2, 2) => interleave::<2>(&rows, p, off, dst),
                    _ => {
                        for t in 0..n {
                            for (d, &v) in dst.chunks_exact_mut(g).zip(&rows[t * p..][..p]) {
                                d[t] = (v as u8 ^ off) as i8;
                            }
                        }
                    }
                }
            }
        }
        Self {
            x: Cow::Owned(x),
            kg,
            pp,
        }
    }
}

/// `dst[p G + t] = rows[t p + p] ^ off` for `t < G`, `p < P`: `G` rows of `P` values
/// interleaved (the packed layout of one group of rows).
#[inline]
fn interleave<const G: usize>(rows: &[i8], p: usize, off: u8, dst: &mut [i8]) {
    let rs: [&[i8]; G] = core::array::from_fn(|t| &rows[t * p..][..p]);
    for (pi, d) in dst.chunks_exact_mut(G).enumerate() {
        for t in 0..G {
            d[t] = (rs[t][pi] as u8 ^ off) as i8;
        }
    }
}

/// `acc[r aw + c - c0] = sum_k w[m0 + r, k] x[k, c]` for `r < rows`, `c0 <= c < c1`
/// (`aw = c1 - c0`; plus the VNNI shift's `128 sum_k w`). `c0` and `c1` are multiples
/// of the path's lanes, or `c1 = pp`.
pub(crate) fn dot(
    path: Path,
    w: &Weights,
    m0: usize,
    rows: usize,
    x: &Cols,
    [c0, c1]: [usize; 2],
    acc: &mut [i32],
) {
    let (kg, pp, aw) = (x.kg, x.pp, c1 - c0);
    assert_eq!(w.kg, kg, "int8 weights and columns disagree on K");
    assert!((m0 + rows) * kg <= w.w.len(), "int8 weight rows");
    assert_eq!(acc.len(), rows * aw, "int8 accumulator length");
    assert!(x.x.len() >= kg * pp * path.group(), "int8 columns length");
    let lanes = path.lanes();
    assert!(
        c0.is_multiple_of(lanes) && aw.is_multiple_of(lanes) && c1 <= pp,
        "int8 column block {c0}..{c1} of {pp}"
    );
    if acc.is_empty() {
        return;
    }
    let wr = &w.w[m0 * kg..][..rows * kg];
    match path {
        Path::Portable => {
            acc.fill(0);
            for (a, wrow) in acc.chunks_exact_mut(aw).zip(wr.chunks_exact(kg.max(1))) {
                for (q, &wv) in wrow.iter().enumerate() {
                    for (o, &v) in a.iter_mut().zip(&x.x[q * pp + c0..c1 + q * pp]) {
                        *o = o.wrapping_add(wv * v as i32);
                    }
                }
            }
        }
        // SAFETY (all three): the CPU has the path's features (`Path::at` only picks a
        // path the level or the detection allows); the lengths and the block are
        // asserted above.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe {
            crate::x86_64::int8::dot_avx2(wr, kg, rows, &x.x, (pp, c0, c1), acc)
        },
        #[cfg(target_arch = "x86_64")]
        Path::Vnni => unsafe {
            crate::x86_64::int8::dot_vnni(wr, kg, rows, &x.x, (pp, c0, c1), acc)
        },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => unsafe {
            crate::aarch64::int8::dot_neon(wr, kg, rows, &x.x, (pp, c0, c1), acc)
        },
    }
}

/// The per-channel end of a product: `store(requant[m](acc + base[m]))`.
pub(crate) struct Epilogue<'a> {
    /// `bias[m] - (zx + path offset) sum_k w[m, k]`, wrapping.
    base: Vec<i32>,
    requant: &'a [Requant],
    out: OutQ,
}

impl<'a> Epilogue<'a> {
    /// The epilogue of `w`'s product on `path` with input zero point `zx`; `requant` holds
    /// one multiplier per output channel, or one for all.
    ///
    /// # Panics
    /// When `bias` or `requant` have a length other than `M` (`requant`: or 1).
    pub(crate) fn new(
        path: Path,
        w: &Weights,
        bias: Option<&[i32]>,
        zx: i8,
        requant: &'a [Requant],
        out: OutQ,
    ) -> Self {
        let m = w.sums.len();
        check_channels(m, bias, requant);
        let z = zx as i32 + path.offset();
        let base = (0..m)
            .map(|i| {
                bias.map_or(0, |b| b[i])
                    .wrapping_sub(z.wrapping_mul(w.sums[i]))
            })
            .collect();
        Self { base, requant, out }
    }

    /// Channel `m`'s accumulators stored into `dst` (as long as `acc`).
    #[inline]
    pub(crate) fn row(&self, path: Path, m: usize, acc: &[i32], dst: &mut [i8]) {
        store_row(
            path,
            acc,
            self.base[m],
            requant_of(self.requant, m),
            self.out,
            dst,
        );
    }

    /// Channel `m`'s accumulators stored into every `step`-th element of `dst`.
    pub(crate) fn row_strided(&self, m: usize, acc: &[i32], dst: &mut [i8], step: usize) {
        let (b, r) = (self.base[m], requant_of(self.requant, m));
        for (d, &a) in dst.iter_mut().step_by(step).zip(acc) {
            *d = self.out.store(r.apply(a.wrapping_add(b)));
        }
    }
}

/// [`store_row_portable`] on `path` (the same integers on every path).
#[inline]
pub(crate) fn store_row(path: Path, acc: &[i32], base: i32, r: Requant, out: OutQ, dst: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if path == Path::Vnni {
        // SAFETY: the CPU has AVX-512F and AVX2 (the VNNI path requires them).
        return unsafe { crate::x86_64::int8::store_row_avx512(acc, base, r, out, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(path, Path::Avx2 | Path::Vnni) {
        // SAFETY: the CPU has AVX2 (both paths require it).
        return unsafe { crate::x86_64::int8::store_row_avx2(acc, base, r, out, dst) };
    }
    #[cfg(target_arch = "aarch64")]
    if path == Path::Neon {
        // SAFETY: the CPU has NEON.
        return unsafe { crate::aarch64::int8::store_row_neon(acc, base, r, out, dst) };
    }
    let _ = path;
    store_row_portable(acc, base, r, out, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tested paths include the one this CPU runs, and the packings agree on `K`.
    #[test]
    fn paths_cover_this_cpu() {
        let all = Path::all();
        std::println!("int8 paths on this CPU: {all:?}");
        assert!(all.contains(&Path::detect()) && all[0] == Path::Portable);
        let wt: Vec<i8> = (0..35).map(|v| v as i8 - 17).collect();
        for path in all {
            let w = Weights::pack(path, &wt, 5, 7);
            assert_eq!(w.kg, 7usize.div_ceil(path.group()), "{path:?}");
            assert_eq!(w.sums, [-98, -49, 0, 49, 98], "{path:?}");
            let x = [1i8; 21];
            let c = Cols::pack(path, &x, [7, 3], [3, 1]);
            assert_eq!((c.kg, c.pp % path.lanes()), (w.kg, 0), "{path:?}");
        }
    }

    /// The SIMD requantization rows give the portable integers: accumulators over the
    /// whole i32 range and its ends, multipliers with right shifts 0..31 and left shifts,
    /// clamps with and without ReLU, odd lengths.
    #[test]
    fn store_rows_equal_portable() {
        let mut rng = crate::testing::Rng::new(4);
        let mut acc: Vec<i32> = (0..203)
            .map(|i| {
                let u = rng.unit() as f64;
                match i % 4 {
                    0 => (u * 2e9) as i32,
                    1 => (u * 1e5) as i32,
                    2 => (u * 300.0) as i32,
                    _ => (u * 4e7) as i32,
                }
            })
            .collect();
        acc[..6].copy_from_slice(&[i32::MIN, i32::MAX, -1, 0, 1, i32::MIN + 1]);
        // small right shifts (0.3, 0.25, 0.13) meet exact ties of the last rounding often
        let reals = [
            1e-9, 3e-7, 1e-4, 0.0123, 0.13, 0.25, 0.3, 0.37, 0.5, 0.99999, 1.0, 3.7, 1e3, 0.0,
        ];
        for (i, &real) in reals.iter().enumerate() {
            let r = Requant::new(real);
            for out in [
                OutQ::new(-7),
                OutQ::relu(13),
                OutQ::new(127),
                OutQ::relu(-128),
            ] {
                let base = [0, 12345, -(1 << 30)][i % 3];
                let mut want = vec![0i8; acc.len()];
                store_row_portable(&acc, base, r, out, &mut want);
                for path in Path::all() {
                    for len in [acc.len(), 8, 7, 0] {
                        let mut got = vec![0i8; len];
                        store_row(path, &acc[..len], base, r, out, &mut got);
                        assert_eq!(got, want[..len], "{path:?} {r:?} {out:?} base {base}");
                    }
                }
            }
        }
    }
}
