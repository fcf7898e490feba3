//! Lowering of the pools and layout ops: MaxPool (codes kept), AveragePool,
//! GlobalAveragePool / ReduceMean over H and W, Concat, and Slice and Pad (codes moved,
//! the input's quantization kept).

use super::lower::{bad, Lower};
use super::Op;
use crate::ops::{Known, Node};
use crate::value::Const;
use burn::tensor::backend::Backend;
use splitnas_host::kernels::{pool, Geom};

impl<B: Backend> Lower<'_, '_, B> {
    /// MaxPool (a layout op) and AveragePool: floor mode, no dilation, every window
    /// holding an image element.
    pub(super) fn pool(&mut self, n: &Node) -> Result<(), String> {
        let e = |e: crate::RuntimeError| e.to_string();
        let (x, xq) = self.deq_in(n, 0)?;
        let (xd, yd) = (
            self.dims(n.input(0).unwrap_or(""))?,
            self.dims(&n.proto.output[0])?,
        );
        let k = n.positive("kernel_shape", 2, 1).map_err(e)?;
        let s = n.positive("strides", 2, 1).map_err(e)?;
        let pads = n.sizes("pads", 4, 0).map_err(e)?;
        let dil = n.positive("dilations", 2, 1).map_err(e)?;
        let ceil = n.int("ceil_mode", 0).map_err(e)? != 0;
        let (&[c, h, w], &[_, oh, ow]) = (&xd[..], &yd[..]) else {
            return Err(bad(n, "a pool of a tensor that is not [N, C, H, W]"));
        };
        #[rustfmt::skip]
        let g = Geom { c, h, w, kh: k[0], kw: k[1], sh: s[0], sw: s[1], dh: 1, dw: 1,
                       pt: pads[0], pl: pads[1], oh, ow };
        if ceil || dil != [1, 1] || !pool::supported(&g) {
            return Err(bad(
                n,
                "ceil mode, dilation or padding beyond half the window",
            ));
        }
        let y = self.value(c * oh * ow);
        if n.proto.op_type == "MaxPool" {
            self.emit_deq(n, Op::MaxPool { x, y, g }, xq);
            return Ok(());
        }
        let (q, yq) = self.need_out_q(n)?;
        let count_pad = n.int("count_include_pad", 0).map_err(e)? != 0;
        let op = Op::AvgPool {
            x,
            y,
            g,
            count_pad,
            q: [xq, yq],
        };
        self.emit_q(q, op);
        Ok(())
    }

    /// GlobalAveragePool, and ReduceMean over H and W of `[N, C, H, W]`.
    pub(super) fn global_pool(&mut self, n: &Node) -> Result<(), String> {
        let (x, xq) = self.deq_in(n, 0)?;
        let xd = self.dims(n.input(0).unwrap_or(""))?;
        if n.proto.op_type == "ReduceMean" {
            let raw = if self.cx.opset >= 18 {
                match n.input(1) {
                    Some(_) => Some(self.cx.ints(n, 1, "axes").map_err(|e| e.to_string())?),
                    None => None,
                }
            } else {
                n.ints("axes").map_err(|e| e.to_string())?
            };
            let mut a: Vec<i64> = raw
                .unwrap_or_default()
                .iter()
                .map(|&a| if a < 0 { a + 4 } else { a })
                .collect();
            a.sort_unstable();
            if xd.len() != 3 || a != [2, 3] {
                return Err(bad(n, "a mean over other axes than H and W"));
            }
        }
        let [c, h, w] = <[usize; 3]>::try_from(xd).map_err(|_| bad(n, "input not [N, C, H, W]"))?;
        let hw = h * w;
        if hw > 1 << 23 {
            return Err(bad(n, "a plane of more than 2^23 elements"));
        }
        let (q, yq) = self.need_out_q(n)?;
        let y = self.value(c);
        let op = Op::GlobalAvg {
            x,
            y,
            hw,
            q: [xq, yq],
        };
        self.emit_q(q, op);
        Ok(())
    }

    pub(super) fn concat(&mut self, n: &Node) -> Result<(), String> {
        let mut xs = vec![];
        for i in 0..n.proto.input.len() {
            xs.push(self.deq_in(n, i)?);
        }
        let out = &n.proto.output[0];
        let yd = self.dims(out)?;
        let raw = n.int("axis", 1).map_err(|e| e.to_string())?;
        let rank = yd.len() as i64 + 1;
        let axis = if raw < 0 { raw + rank } else { raw };
        if axis < 1 || axis >= rank {
            return Err(bad(n, "a concatenation along the batch"));
        }
        let a = axis as usize - 1;
        let outer = yd[..a].iter().product();
        let (q, yq) = self.need_out_q(n)?;
        let y = self.value(yd.iter().product());
        self.emit_q(q, Op::Concat { xs, y, outer, yq });
        Ok(())
    }

    /// Per-image `[d0, d1, d2]` of a run-time tensor of rank 2 to 4 (trailing 1s).
    pub(super) fn dims3(&self, n: &Node, name: &str) -> Result<[usize; 3], String> {
        let d = self.dims(name)?;
        if d.is_empty() || d.len() > 3 {
            return Err(bad(n, "a tensor of rank other than 2 to 4"));
        }
        let mut p = [1; 3];
        p[..d.len()].copy_from_slice(&d);
        Ok(p)
    }

    pub(super) fn int_input(
        &self,
        n: &Node,
        i: usize,
        what: &str,
    ) -> Result<Option<Vec<i64>>, String> {
        match n.input(i) {
            None => Ok(None),
            Some(_) => self
                .cx
                .ints(n, i, what)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    /// Slice (a layout op) with positive steps; the batch axis whole.
    pub(super) fn slice(&mut self, n: &Node) -> Result<(), String> {
        let (x, xq) = self.deq_in(n, 0)?;
        let dims = self.dims3(n, n.input(0).unwrap_or(""))?;
        let (Some(starts), Some(ends)) = (
            self.int_input(n, 1, "starts")?,
            self.int_input(n, 2, "ends")?,
        ) else {
            return Err(bad(n, "starts or ends missing"));
        };
        let rank = self.dims(n.input(0).unwrap_or(""))?.len() as i64 + 1;
        let axes = self
            .int_input(n, 3, "axes")?
            .unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = self
            .int_input(n, 4, "steps")?
            .unwrap_or_else(|| vec![1; starts.len()]);
        if axes.len() != starts.len() || steps.len() != starts.len() || ends.len() != starts.len() {
            return Err(bad(n, "starts, ends, axes and steps differ in length"));
        }
        let mut ranges = dims.map(|d| (0, 1, d));
        for (i, &a) in axes.iter().enumerate() {
            let a = if a < 0 { a + rank } else { a };
            if a == 0 {
                continue; // the whole batch (the float path allows no other)
            }
            if !(1..rank).contains(&a) || steps[i] < 1 {
                return Err(bad(n, "an axis out of range or a step below 1"));
            }
            let (d, step) = (dims[a as usize - 1] as i64, steps[i]);
            let norm = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
            let (s, e) = (norm(starts[i]), norm(ends[i]));
            let count = (e.max(s) - s + step - 1) / step;
            ranges[a as usize - 1] = (s as usize, step as usize, count as usize);
        }
        let out = self.dims3(n, &n.proto.output[0])?;
        if ranges.map(|r| r.2) != out {
            return Err(bad(n, "slice sizes disagree with the output shape"));
        }
        let y = self.value(out.iter().product());
        self.emit_deq(n, Op::Slice { x, y, dims, ranges }, xq);
        Ok(())
    }

    /// Constant padding (a layout op) by real 0: the input's zero point.
    pub(super) fn pad(&mut self, n: &Node) -> Result<(), String> {
        let (x, xq) = self.deq_in(n, 0)?;
        let dims = self.dims3(n, n.input(0).unwrap_or(""))?;
        let mode = n.string("mode").map_err(|e| e.to_string())?;
        let value = match n.input(2).map(|v| self.cx.known.get(v)) {
            None => 0.0,
            Some(Some(Known::Const(Const::F32 { data, .. }))) => *data.first().unwrap_or(&0.0),
            Some(_) => f32::NAN,
        };
        if !matches!(mode.as_deref(), None | Some("constant")) || value != 0.0 {
            return Err(bad(n, "padding other than constant 0"));
        }
        let pads = self.int_input(n, 1, "pads")?.unwrap_or_default();
        let rank = dims.len() + 1;
        let axes = self
            .int_input(n, 3, "axes")?
            .unwrap_or_else(|| (0..rank as i64).collect());
        if pads.len() != 2 * axes.len() {
            return Err(bad(n, "pads do not fit the axes"));
        }
        let mut full = [(0usize, 0usize); 3];
        for (i, &a) in axes.iter().enumerate() {
            let a = if a < 0 { a + rank as i64 } else { a } as usize;
            let size = |v: i64| usize::try_from(v).ok().filter(|&v| v <= 1 << 20);
            let (Some(b), Some(e)) = (size(pads[i]), size(pads[i + axes.len()])) else {
                return Err(bad(n, "pads out of range"));
            };
            match a {
                0 if b + e == 0 => {}
                1..=3 => full[a - 1] = (b, e),
                _ => return Err(bad(n, "padding of the batch")),
            }
        }
        let out = self.dims3(n, &n.proto.output[0])?;
        if (0..3).any(|a| dims[a] + full[a].0 + full[a].1 != out[a]) {
            return Err(bad(n, "pads disagree with the output shape"));
        }
        let y = self.value(out.iter().product());
        let op = Op::Pad {
            x,
            y,
            dims,
            pads: full,
            fill: xq.zero,
        };
        self.emit_deq(n, op, xq);
        Ok(())
    }
}
