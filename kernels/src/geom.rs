//! The shape of a sliding window over `[N, C, H, W]` planes, shared by the convolution
//! and pooling kernels.

/// Geometry of a 2-D window (convolution or pooling) over planes of `[N, C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    /// Channels (input channels for a dense convolution).
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Row stride.
    pub sh: usize,
    /// Column stride.
    pub sw: usize,
    /// Row dilation.
    pub dh: usize,
    /// Column dilation.
    pub dw: usize,
    /// Leading padding (top); trailing padding only shows in `oh`.
    pub pt: usize,
    /// Leading padding (left); trailing padding only shows in `ow`.
    pub pl: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Geom {
    /// A square window (`k x k`, stride `s`, padding `p` on every side, dilation `d`) over
    /// `c` planes of `[h, w]`, output size in floor mode. `None` when no output fits
    /// (the dilated kernel is larger than the padded plane) or `k` or `s` is zero.
    pub fn try_square(
        c: usize,
        [h, w]: [usize; 2],
        k: usize,
        s: usize,
        p: usize,
        d: usize,
    ) -> Option<Self> {
        let span = d.checked_mul(k.checked_sub(1)?)? + 1;
        if s == 0 || h + 2 * p < span || w + 2 * p < span {
            return None;
        }
        Some(Self {
            c,
            h,
            w,
            kh: k,
            kw: k,
            sh: s,
            sw: s,
            dh: d,
            dw: d,
            pt: p,
            pl: p,
            oh: (h + 2 * p - span) / s + 1,
            ow: (w + 2 * p - span) / s + 1,
        })
    }

    /// [`Geom::try_square`] for shapes the caller knows to fit.
    ///
    /// # Panics
    /// When no output fits.
    pub fn square(c: usize, hw: [usize; 2], k: usize, s: usize, p: usize, d: usize) -> Self {
        Self::try_square(c, hw, k, s, p, d).expect("window larger than the padded plane")
    }

    /// Floats in one input plane.
    #[inline]
    pub fn plane_in(&self) -> usize {
        self.h * self.w
    }

    /// Floats in one output plane.
    #[inline]
    pub fn plane_out(&self) -> usize {
        self.oh * self.ow
    }

    /// For the tap at column offset `off` (`j * dw` for kernel column `j`): the output
    /// columns `[lo, hi)` whose input column `ow * sw + off - pl` lies inside the image,
    /// and the input column of output `lo`.
    #[inline]
    pub(crate) fn col_span(&self, off: usize) -> (usize, usize, usize) {
        let lo = self.pl.saturating_sub(off).div_ceil(self.sw);
        let hi = if self.w + self.pl > off {
            ((self.w - 1 + self.pl - off) / self.sw + 1).min(self.ow)
        } else {
            0
        };
        let hi = hi.max(lo);
        (lo, hi, (lo * self.sw + off).saturating_sub(self.pl))
    }

    /// [`Geom::col_span`] of every kernel column (dilation `dw`). Computed once per call:
    /// recomputing them per row (two integer divisions each) cost more than the pooling
    /// itself on 32-wide planes.
    #[cfg(feature = "alloc")]
    pub(crate) fn col_spans(&self) -> alloc::vec::Vec<(usize, usize, usize)> {
        (0..self.kw).map(|j| self.col_span(j * self.dw)).collect()
    }

    /// Whether the pooling kernels cover this window: a non-empty undilated kernel with a
    /// non-zero stride, padding at most half the kernel, and at least one output (so
    /// every window holds an image element). `crate::pool::supported` without `alloc`.
    pub fn pool_supported(&self) -> bool {
        self.kh > 0
            && self.kw > 0
            && self.sh > 0
            && self.sw > 0
            && self.dh == 1
            && self.dw == 1
            && 2 * self.pt <= self.kh
            && 2 * self.pl <= self.kw
            && self.oh > 0
            && self.ow > 0
    }

    /// Input rows `[r0, r1)` of output row `oh` of an undilated window.
    #[inline]
    pub(crate) fn rows(&self, oh: usize) -> (usize, usize) {
        let start = oh * self.sh;
        (
            start.saturating_sub(self.pt),
            (start + self.kh - self.pt).min(self.h),
        )
    }

    /// Number of input columns inside the image in output column `ow`'s undilated window.
    #[inline]
    pub(crate) fn cols(&self, ow: usize) -> usize {
        let start = ow * self.sw;
        (start + self.kw - self.pl).min(self.w) - start.saturating_sub(self.pl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_output_sizes() {
        let g = Geom::square(2, [7, 5], 3, 2, 1, 1);
        assert_eq!((g.oh, g.ow), (4, 3));
        let g = Geom::square(1, [8, 8], 3, 1, 2, 2);
        assert_eq!((g.oh, g.ow), (8, 8));
        assert!(Geom::try_square(1, [2, 2], 5, 1, 1, 1).is_none());
        assert!(Geom::try_square(1, [2, 2], 0, 1, 0, 1).is_none());
    }

    #[test]
    fn col_spans_cover_the_inside_taps() {
        // 3 wide, stride 2, padding 1: outputs at input columns -1..1 and 1..3
        let g = Geom::square(1, [3, 3], 3, 2, 1, 1);
        // tap 0 reads columns -1 (outside) and 1; tap 2 reads 1 and 3 (outside)
        assert_eq!(g.col_spans(), vec![(1, 2, 1), (0, 2, 0), (0, 1, 1)]);
        assert_eq!((g.rows(0), g.rows(1)), ((0, 2), (1, 3)));
        assert_eq!((g.cols(0), g.cols(1)), (2, 2));
    }
}
