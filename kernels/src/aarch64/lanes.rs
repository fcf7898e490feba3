//! NEON builds of the element-wise inner loops of batch normalization and the weighted
//! sum: four lanes per vector, every element computed with the same operations in the
//! same order as the portable loop (a product rounded before it is added: no fused
//! multiply-add), so the results are equal bit for bit. The tails go through the portable
//! expressions.

use core::arch::aarch64::*;

/// `out[i] = x[i] * scale + shift` over `out.len()` elements.
///
/// # Safety
/// NEON present; `x` at least as long as `out`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn scale_shift(x: &[f32], scale: f32, shift: f32, out: &mut [f32]) {
    let n = out.len();
    assert!(x.len() >= n, "scale_shift input length");
    let (s, t) = (vdupq_n_f32(scale), vdupq_n_f32(shift));
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let full = n / 4 * 4;
    for i in (0..full).step_by(4) {
        let v = vld1q_f32(xp.add(i));
        vst1q_f32(op.add(i), vaddq_f32(vmulq_f32(v, s), t));
    }
    for i in full..n {
        out[i] = x[i] * scale + shift;
    }
}

/// `out[i] += w * y[i]` over `out.len()` elements.
///
/// # Safety
/// NEON present; `y` at least as long as `out`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn add_scaled(out: &mut [f32], w: f32, y: &[f32]) {
    let n = out.len();
    assert!(y.len() >= n, "add_scaled term length");
    let wv = vdupq_n_f32(w);
    let (yp, op) = (y.as_ptr(), out.as_mut_ptr());
    let full = n / 4 * 4;
    for i in (0..full).step_by(4) {
        let o = vld1q_f32(op.add(i));
        vst1q_f32(op.add(i), vaddq_f32(o, vmulq_f32(wv, vld1q_f32(yp.add(i)))));
    }
    for i in full..n {
        out[i] += w * y[i];
    }
}

/// Batch norm's input gradient of one plane: `out[i] = k * (g[i] - mg - (x[i] - m) * is
/// * mgx)`.
///
/// # Safety
/// NEON present; `g` and `x` at least as long as `out`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn bn_input_grad(
    out: &mut [f32],
    g: &[f32],
    x: &[f32],
    [k, mg, m, is, mgx]: [f32; 5],
) {
    let n = out.len();
    assert!(g.len() >= n && x.len() >= n, "input gradient lengths");
    let [kv, mgv, mv, isv, mgxv] = [k, mg, m, is, mgx].map(|v| vdupq_n_f32(v));
    let (gp, xp, op) = (g.as_ptr(), x.as_ptr(), out.as_mut_ptr());
    let full = n / 4 * 4;
    for i in (0..full).step_by(4) {
        let xh = vmulq_f32(vmulq_f32(vsubq_f32(vld1q_f32(xp.add(i)), mv), isv), mgxv);
        let d = vsubq_f32(vsubq_f32(vld1q_f32(gp.add(i)), mgv), xh);
        vst1q_f32(op.add(i), vmulq_f32(kv, d));
    }
    for i in full..n {
        out[i] = k * (g[i] - mg - (x[i] - m) * is * mgx);
    }
}
