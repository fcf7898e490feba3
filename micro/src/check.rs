//! Validation of one decoded op against the tensor table and the constant blob: after
//! [`check_op`] every kernel call [`crate::Plan::run`] makes for the op has the slice
//! lengths and arguments the kernel asserts, so a run cannot panic or index out of bounds.

use crate::error::PlanError;
use crate::format::{u32_at, Dense, Op, TensorId, NONE};
use crate::{Plan, Tensor, MAX_K, MAX_ROW};
use splitnas_kernels::int8::pool;
use splitnas_kernels::Geom;

/// The product of window sizes in u64 (each below 2^15: no overflow).
fn vol(v: &[usize]) -> u64 {
    v.iter().map(|&d| d as u64).product()
}

/// `v` as a u64 product, none on overflow.
fn prod(v: &[u32]) -> Option<u64> {
    v.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64))
}

impl<'a> Plan<'a> {
    /// Checks op number `op` (decoded) against the tensors and constants.
    pub(crate) fn check_op(&self, op: usize, decoded: &Op<'_>) -> Result<(), PlanError> {
        let t = |id: TensorId| self.tensor_checked(op, id);
        let shape = |tensor: TensorId, what: &'static str| PlanError::Shape { op, tensor, what };
        let bad = |what: &'static str| PlanError::OpArgs { op, what };
        match *decoded {
            Op::Dense(d) => self.check_dense(op, &d)?,
            Op::MaxPool { x, y, g } | Op::AvgPool { x, y, g, .. } => {
                let (xt, yt) = (t(x)?, t(y)?);
                check_window(op, &g)?;
                if !g.pool_supported()
                    || (g.oh - 1) * g.sh >= g.h + g.pt
                    || (g.ow - 1) * g.sw >= g.w + g.pl
                {
                    return Err(bad("a pooling window the kernels do not cover"));
                }
                if xt.len as u64 != vol(&[g.c, g.h, g.w]) {
                    return Err(shape(x, "length is not the window's input"));
                }
                if yt.len as u64 != vol(&[g.c, g.oh, g.ow]) {
                    return Err(shape(y, "length is not the window's output"));
                }
                if let Op::AvgPool { .. } = decoded {
                    let need = pool::avg_scratch_len(&g);
                    limit(op, "average pool scratch (ow + 2 kh kw)", need, MAX_ROW)?;
                }
            }
            Op::GlobalAvg { x, y, hw, .. } => {
                let (xt, yt) = (t(x)?, t(y)?);
                if hw == 0 || hw > 1 << 23 {
                    return Err(bad("a global average over 0 or more than 2^23 values"));
                }
                if xt.len as u64 != yt.len as u64 * hw as u64 {
                    return Err(shape(x, "length is not channels x hw"));
                }
            }
            Op::Requant { x, y, .. } => {
                if t(x)?.len != t(y)?.len {
                    return Err(shape(y, "length differs from the input's"));
                }
            }
            Op::Add { a, b, y, .. } => {
                let n = t(y)?.len;
                if t(a)?.len != n || t(b)?.len != n {
                    return Err(shape(y, "length differs from an input's"));
                }
            }
            Op::Concat {
                y, outer, parts, ..
            } => {
                let yt = t(y)?;
                if outer == 0 {
                    return Err(bad("a concatenation of 0 blocks"));
                }
                let mut total = 0u64;
                for i in 0..parts.len() / 3 {
                    let (p, _) = crate::format::concat_part(parts, i);
                    let len = t(p)?.len;
                    if len % outer != 0 {
                        return Err(shape(p, "length is not a multiple of the blocks"));
                    }
                    total += len as u64;
                }
                if total != yt.len as u64 {
                    return Err(shape(y, "length is not the parts' sum"));
                }
            }
            Op::Slice { x, y, dims, ranges } => {
                if dims.contains(&0) || prod(&dims) != Some(t(x)?.len as u64) {
                    return Err(shape(x, "length is not its dims' product"));
                }
                for (r, &d) in ranges.iter().zip(&dims) {
                    let (s, step, count) = (r.0 as u64, r.1 as u64, r.2 as u64);
                    if step == 0 || count == 0 || s + (count - 1) * step >= d as u64 {
                        return Err(bad("a slice range outside its axis"));
                    }
                }
                if prod(&ranges.map(|r| r.2)) != Some(t(y)?.len as u64) {
                    return Err(shape(y, "length is not the slice's"));
                }
            }
            Op::Pad {
                x, y, dims, pads, ..
            } => {
                if dims.contains(&0) || prod(&dims) != Some(t(x)?.len as u64) {
                    return Err(shape(x, "length is not its dims' product"));
                }
                let out = [0, 1, 2].map(|a| dims[a] as u64 + pads[a].0 as u64 + pads[a].1 as u64);
                let n = out.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
                if n != Some(t(y)?.len as u64) {
                    return Err(shape(y, "length is not the padded dims' product"));
                }
            }
            Op::Affine {
                x,
                y,
                inner,
                c,
                a,
                b,
                ..
            } => {
                let n = t(x)?.len;
                if c == 0 || inner == 0 || prod(&[c, inner]) != Some(n as u64) {
                    return Err(shape(x, "length is not channels x inner"));
                }
                if t(y)?.len != n {
                    return Err(shape(y, "length differs from the input's"));
                }
                self.consts_at(op, a, c as u64 * 4, 4)?;
                self.consts_at(op, b, c as u64 * 4, 4)?;
            }
        }
        Ok(())
    }

    fn check_dense(&self, op: usize, d: &Dense) -> Result<(), PlanError> {
        let bad = |what: &'static str| PlanError::OpArgs { op, what };
        let shape = |tensor: TensorId, what: &'static str| PlanError::Shape { op, tensor, what };
        let (xt, yt) = (self.tensor_checked(op, d.x)?, self.tensor_checked(op, d.y)?);
        if d.m == 0 || d.groups == 0 || !d.m.is_multiple_of(d.groups) {
            return Err(bad("output channels not a positive multiple of the groups"));
        }
        let k = match d.geom {
            Some(g) => {
                check_window(op, &g)?;
                if g.c % d.groups as usize != 0 {
                    return Err(bad("groups that do not divide the input channels"));
                }
                limit(op, "output row width", g.ow, MAX_ROW)?;
                if xt.len as u64 != vol(&[g.c, g.h, g.w]) {
                    return Err(shape(d.x, "length is not the window's input"));
                }
                if yt.len as u64 != vol(&[d.m as usize, g.oh, g.ow]) {
                    return Err(shape(d.y, "length is not M x the window's output"));
                }
                vol(&[g.c / d.groups as usize, g.kh, g.kw])
            }
            None => {
                if d.groups != 1 || d.k == 0 {
                    return Err(bad("a fully connected layer with groups or no products"));
                }
                if xt.len != d.k || yt.len != d.m {
                    return Err(shape(d.y, "lengths are not [K] and [M]"));
                }
                d.k as u64
            }
        };
        limit(
            op,
            "products per output channel",
            k.min(u32::MAX as u64) as usize,
            MAX_K,
        )?;
        self.consts_at(op, d.weights, d.m as u64 * k, 1)?;
        if d.bias != NONE {
            self.consts_at(op, d.bias, d.m as u64 * 4, 4)?;
        }
        if d.requants != 1 && d.requants != d.m {
            return Err(bad("requantization multipliers neither 1 nor M"));
        }
        let rq = self.consts_at(op, d.requant, d.requants as u64 * 8, 4)?;
        for (ch, pair) in rq.chunks_exact(8).enumerate() {
            let (mult, shift) = (u32_at(pair, 0) as i32, u32_at(pair, 4) as i32);
            if mult < 0 || !(-31..=30).contains(&shift) {
                return Err(PlanError::Requant {
                    op,
                    channel: ch as u32,
                });
            }
        }
        Ok(())
    }

    /// The `len` constant bytes at `offset` (a multiple of `align`), or the error.
    pub(crate) fn consts_at(
        &self,
        op: usize,
        offset: u32,
        len: u64,
        align: u32,
    ) -> Result<&'a [u8], PlanError> {
        let err = PlanError::Const {
            op,
            offset,
            len: len.min(u32::MAX as u64) as u32,
        };
        let end = offset as u64 + len;
        if end > self.consts.len() as u64 || !offset.is_multiple_of(align) {
            return Err(err);
        }
        Ok(&self.consts[offset as usize..end as usize])
    }

    /// Tensor `id`, or the error naming op `op`.
    pub(crate) fn tensor_checked(&self, op: usize, id: TensorId) -> Result<Tensor, PlanError> {
        self.tensor(id).ok_or(PlanError::TensorId {
            op,
            tensor: id as u32,
        })
    }
}

/// A window's sizes: non-zero channels, input, kernel, strides, dilations and output.
fn check_window(op: usize, g: &Geom) -> Result<(), PlanError> {
    let sizes = [
        g.c, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.oh, g.ow,
    ];
    if sizes.contains(&0) {
        return Err(PlanError::OpArgs {
            op,
            what: "a window with a zero size, stride or dilation",
        });
    }
    Ok(())
}

fn limit(op: usize, what: &'static str, value: usize, max: usize) -> Result<(), PlanError> {
    if value > max {
        return Err(PlanError::Limit {
            op,
            what,
            value: value.min(u32::MAX as usize) as u32,
            max: max as u32,
        });
    }
    Ok(())
}
