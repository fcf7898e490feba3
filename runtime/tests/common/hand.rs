//! Hand references for the int8 engine's tests: the ONNX QuantizeLinear /
//! DequantizeLinear formulas (elementwise requantizations: Relu, Add, Concat), a naive
//! grouped convolution on integer codes, windows of pools, and the stores of the
//! QLinearConv arithmetic (the kernel crate's fixed-point `Requant` defines the rounding
//! of an accumulator's requantization; everything else here is written out).

use splitnas_host::kernels::int8::Requant;

/// `QuantizeLinear` of one value into int8: `clamp(round_half_even(x / s) + z)`.
pub fn q(x: f32, s: f32, z: i32) -> i32 {
    ((x / s).round_ties_even() as i32 + z).clamp(-128, 127)
}

pub fn codes(x: &[f32], s: f32, z: i32) -> Vec<i32> {
    x.iter().map(|&v| q(v, s, z)).collect()
}

/// `DequantizeLinear`: `(c - z) s`.
pub fn deq(c: &[i32], s: f32, z: i32) -> Vec<f32> {
    c.iter().map(|&v| (v - z) as f32 * s).collect()
}

/// An int8 store: `clamp(v + z)`, nothing below `z` with a ReLU.
pub fn store(v: i32, z: i32, relu: bool) -> i32 {
    (v + z).clamp(if relu { z } else { -128 }, 127)
}

/// `x` codes from `(sx, zx)` to `(sy, zy)`: `Q(DQ(x))`, `Q(max(DQ(x), 0))` with a ReLU
/// (the ONNX formulas in f32).
pub fn requant(x: &[i32], (sx, zx): (f32, i32), (sy, zy): (f32, i32), relu: bool) -> Vec<i32> {
    let lo = if relu { 0.0 } else { f32::MIN };
    x.iter()
        .map(|&v| q(((v - zx) as f32 * sx).max(lo), sy, zy))
        .collect()
}

/// A convolution's shape: `c` input channels of `h x w`, `m` outputs, `k x k` kernel,
/// stride `s`, padding `p` on every side, dilation `d`, `groups`.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub d: usize,
    pub groups: usize,
}

impl Conv {
    pub fn out(&self) -> (usize, usize) {
        let span = self.d * (self.k - 1) + 1;
        (
            (self.h + 2 * self.p - span) / self.s + 1,
            (self.w + 2 * self.p - span) / self.s + 1,
        )
    }

    /// int32 sums `bias[m] + sum w (x - zx)` per output of `n` images of codes `x`;
    /// taps outside the image add nothing.
    pub fn acc(&self, x: &[i32], zx: i32, wq: &[i8], bias: Option<&[i32]>) -> Vec<i32> {
        let (oh, ow) = self.out();
        let (cg, mg) = (self.c / self.groups, self.m / self.groups);
        let n = x.len() / (self.c * self.h * self.w);
        let mut y = vec![];
        for img in 0..n {
            for m in 0..self.m {
                let g = m / mg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut a = bias.map_or(0, |b| b[m]);
                        for ci in 0..cg {
                            let ch = g * cg + ci;
                            for ki in 0..self.k {
                                for kj in 0..self.k {
                                    let r = (i * self.s + ki * self.d) as i64 - self.p as i64;
                                    let c = (j * self.s + kj * self.d) as i64 - self.p as i64;
                                    if r < 0 || c < 0 || r >= self.h as i64 || c >= self.w as i64 {
                                        continue;
                                    }
                                    let xi = ((img * self.c + ch) * self.h + r as usize) * self.w
                                        + c as usize;
                                    let wi = ((m * cg + ci) * self.k + ki) * self.k + kj;
                                    a += wq[wi] as i32 * (x[xi] - zx);
                                }
                            }
                        }
                        y.push(a);
                    }
                }
            }
        }
        y
    }
}

/// Per output channel `m` of `per` outputs each: `store(requant(s_x s_w[m] / s_y), zy)`.
pub fn requant_acc(acc: &[i32], per: usize, sx: f32, sw: &[f32], (sy, zy): (f32, i32)) -> Vec<i32> {
    acc.iter()
        .enumerate()
        .map(|(i, &a)| {
            let m = (i / per) % sw.len();
            store(Requant::from_scales(sx, sw[m], sy).apply(a), zy, false)
        })
        .collect()
}

/// For each output of a `k x k` window (stride `s`, padding `p`) over `n c` planes of
/// `h x w` codes: `f(codes inside the image, taps counted with padding)`.
pub fn windows(
    x: &[i32],
    [h, w]: [usize; 2],
    [k, s, p]: [usize; 3],
    mut f: impl FnMut(&[i32], usize) -> i32,
) -> Vec<i32> {
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = vec![];
    for plane in x.chunks_exact(h * w) {
        for i in 0..oh {
            for j in 0..ow {
                let mut taps = vec![];
                for a in 0..k {
                    for b in 0..k {
                        let (r, c) = ((i * s + a) as i64 - p as i64, (j * s + b) as i64 - p as i64);
                        if r >= 0 && c >= 0 && r < h as i64 && c < w as i64 {
                            taps.push(plane[r as usize * w + c as usize]);
                        }
                    }
                }
                y.push(f(&taps, k * k));
            }
        }
    }
    y
}

/// `num / den` rounded half away from zero.
pub fn div_away(num: i32, den: i32) -> i32 {
    let q = (num.abs() as f64 / den as f64 + 0.5).floor() as i32;
    if num < 0 {
        -q
    } else {
        q
    }
}
