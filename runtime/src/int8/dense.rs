//! Lowering of the layers with weights: Conv, Gemm and MatMul whose weights are a
//! `DequantizeLinear` of an int8 initializer (symmetric: zero point 0; per output channel
//! or per tensor) and whose bias is a `DequantizeLinear` of an int32 initializer (or a
//! float constant), brought to accumulator units `s_x s_w[m]`.

use super::lower::{bad, Lower};
use super::{Dense, Op};
use crate::ops::quant::params;
use crate::ops::{Known, Node};
use crate::value::{Const, Dim, QType};
use burn::tensor::backend::Backend;
use splitnas_host::kernels::Geom;

/// Largest bias magnitude (accumulator units) the kernels' int32 sums take with room
/// (`splitnas_kernels::int8::conv`'s preconditions).
const MAX_BIAS: f64 = (1u64 << 30) as f64;
/// Largest products per output channel with a bias, and without one.
const MAX_TAPS: [usize; 2] = [32_000, 65_000];

/// Quantized weights: int8 values, shape, and one scale per output channel.
struct Weight {
    q: Vec<i8>,
    dims: Vec<usize>,
    scale: Vec<f32>,
}

impl<B: Backend> Lower<'_, '_, B> {
    /// Input `i` of `n` as int8 weights with `m` output channels along `axis`.
    fn weight(&self, n: &Node, i: usize, axis: usize, m: usize) -> Result<Weight, String> {
        let name = n.input(i).unwrap_or("");
        let not = || {
            bad(
                n,
                format!("weight '{name}' is not a DequantizeLinear of int8 values"),
            )
        };
        let dq = self.producer.get(name).map(|&p| Node {
            proto: &self.nodes[p],
        });
        let dq = dq
            .filter(|d| d.proto.op_type == "DequantizeLinear")
            .ok_or_else(not)?;
        let Some(Known::Const(Const::Quant { ty, dims, data })) =
            dq.input(0).and_then(|x| self.cx.known.get(x))
        else {
            return Err(not());
        };
        let shape: Vec<Dim> = dims.iter().map(|&d| Dim::Fixed(d)).collect();
        let p = params(self.cx, &dq, &shape, Some(*ty)).map_err(|e| e.to_string())?;
        let shift = match ty {
            QType::I8 => 0,
            QType::U8 => 128,
            QType::I32 => return Err(not()),
        };
        if p.zero.iter().any(|&z| z != shift) {
            return Err(bad(
                n,
                format!("weight '{name}' is not symmetric (zero point not 0)"),
            ));
        }
        if dims.get(axis) != Some(&m) {
            return Err(bad(
                n,
                format!("weight '{name}' of shape {dims:?} for {m} outputs"),
            ));
        }
        let scale = match p.axis {
            None => vec![p.scale[0]; m],
            Some(a) if a == axis => p.scale,
            Some(a) => return Err(bad(n, format!("weight '{name}' quantized along axis {a}"))),
        };
        let q = data.iter().map(|&v| (v - shift) as i8).collect();
        Ok(Weight {
            q,
            dims: dims.clone(),
            scale,
        })
    }

    /// Input `i` of `n` (optional) as int32 in accumulator units `acc[m]`: an int32
    /// `DequantizeLinear` whose scale is `acc` kept as it is, other scales and float
    /// constants rescaled and rounded; one value or one per output channel.
    fn bias(&self, n: &Node, i: usize, acc: &[f64]) -> Result<Option<Vec<i32>>, String> {
        let Some(name) = n.input(i) else {
            return Ok(None);
        };
        let m = acc.len();
        let pick = |v: &[f32], c: usize| v[if v.len() == 1 { 0 } else { c }];
        let dq = self.producer.get(name).map(|&p| Node {
            proto: &self.nodes[p],
        });
        let int = dq
            .filter(|d| d.proto.op_type == "DequantizeLinear")
            .and_then(|d| match d.input(0).and_then(|x| self.cx.known.get(x)) {
                Some(Known::Const(Const::Quant {
                    ty: QType::I32,
                    dims,
                    data,
                })) => Some((d, dims, data)),
                _ => None,
            });
        let b: Vec<f64> = if let Some((d, dims, data)) = int {
            let shape: Vec<Dim> = dims.iter().map(|&v| Dim::Fixed(v)).collect();
            let p = params(self.cx, &d, &shape, Some(QType::I32)).map_err(|e| e.to_string())?;
            let fits = |len: usize| len == 1 || len == m;
            if !fits(data.len()) || !fits(p.scale.len()) {
                return Err(bad(n, format!("bias '{name}' for {m} outputs")));
            }
            (0..m)
                .map(|c| {
                    let q = data[if data.len() == 1 { 0 } else { c }] as f64;
                    let s = pick(&p.scale, c) as f64;
                    if (s - acc[c]).abs() <= 1e-6 * acc[c] {
                        q
                    } else {
                        (q * s / acc[c]).round()
                    }
                })
                .collect()
        } else {
            match self.cx.known.get(name) {
                Some(Known::Const(Const::F32 { data, .. }))
                    if data.len() == 1 || data.len() == m =>
                {
                    (0..m)
                        .map(|c| (pick(data, c) as f64 / acc[c]).round())
                        .collect()
                }
                _ => {
                    return Err(bad(
                        n,
                        format!("bias '{name}' is not a constant of {m} values"),
                    ))
                }
            }
        };
        if b.iter().any(|v| v.abs() > MAX_BIAS) {
            return Err(bad(
                n,
                format!("bias '{name}' beyond 2^30 accumulator units"),
            ));
        }
        Ok(Some(b.iter().map(|&v| v as i32).collect()))
    }

    /// Emits the [`Dense`] op for `n` (weights `[M, K]` row-major, or a convolution's).
    #[allow(clippy::too_many_arguments)]
    fn emit_dense(
        &mut self,
        n: &Node,
        (x, xq): (usize, splitnas_host::kernels::int8::Quant),
        conv: Option<(Geom, usize)>,
        k: usize,
        w: Weight,
        bias_input: usize,
        out_size: usize,
    ) -> Result<(), String> {
        let acc: Vec<f64> = w
            .scale
            .iter()
            .map(|&s| xq.scale as f64 * s as f64)
            .collect();
        let bias = self.bias(n, bias_input, &acc)?;
        if k == 0 || k > MAX_TAPS[bias.is_none() as usize] {
            return Err(bad(
                n,
                format!("{k} products per output, beyond the int32 sums' room"),
            ));
        }
        let (q, yq) = self.need_out_q(n)?;
        let y = self.value(out_size);
        let mut d = Dense {
            x,
            y,
            zx: xq.zero,
            conv,
            k,
            w: w.q,
            bias,
            acc_scale: acc,
            out: yq,
            relu: false,
            requant: vec![],
        };
        d.set_out(yq, false);
        self.names[y].clone_from(&q);
        self.ints.insert(q, y);
        self.ops.push(Op::Dense(Box::new(d)));
        Ok(())
    }

    pub(super) fn conv(&mut self, n: &Node) -> Result<(), String> {
        let e = |e: crate::RuntimeError| e.to_string();
        let x = self.deq_in(n, 0)?;
        let (xd, yd) = (
            self.dims(n.input(0).unwrap_or(""))?,
            self.dims(&n.proto.output[0])?,
        );
        let (&[c, h, w], &[m, oh, ow]) = (&xd[..], &yd[..]) else {
            return Err(bad(n, "a convolution of a tensor that is not [N, C, H, W]"));
        };
        let wt = self.weight(n, 1, 0, m)?;
        let [_, cg, kh, kw] =
            <[usize; 4]>::try_from(&wt.dims[..]).map_err(|_| bad(n, "weight not 4-D"))?;
        let groups = usize::try_from(n.int("group", 1).map_err(e)?).unwrap_or(0);
        if groups == 0 || cg * groups != c || m % groups != 0 {
            return Err(bad(n, "groups that do not divide the channels"));
        }
        let s = n.positive("strides", 2, 1).map_err(e)?;
        let d = n.positive("dilations", 2, 1).map_err(e)?;
        let p = n.sizes("pads", 4, 0).map_err(e)?;
        #[rustfmt::skip]
        let g = Geom { c, h, w, kh, kw, sh: s[0], sw: s[1], dh: d[0], dw: d[1], pt: p[0], pl: p[1], oh, ow };
        self.emit_dense(n, x, Some((g, groups)), cg * kh * kw, wt, 2, m * oh * ow)
    }

    /// `x [N, K]` times weights stored `[K, M]` (`transposed` false) or `[M, K]`.
    fn fully_connected(&mut self, n: &Node, transposed: bool) -> Result<(), String> {
        let x = self.deq_in(n, 0)?;
        let (xd, yd) = (
            self.dims(n.input(0).unwrap_or(""))?,
            self.dims(&n.proto.output[0])?,
        );
        let (&[k], &[m]) = (&xd[..], &yd[..]) else {
            return Err(bad(n, "input or output not [N, K]"));
        };
        let mut wt = self.weight(n, 1, if transposed { 0 } else { 1 }, m)?;
        if wt.dims != if transposed { [m, k] } else { [k, m] } {
            return Err(bad(n, format!("weight of shape {:?}", wt.dims)));
        }
        if !transposed {
            wt.q = (0..m * k).map(|i| wt.q[(i % k) * m + i / k]).collect();
        }
        self.emit_dense(n, x, None, k, wt, 2, m)
    }

    pub(super) fn gemm(&mut self, n: &Node) -> Result<(), String> {
        let e = |e: crate::RuntimeError| e.to_string();
        let (alpha, beta) = (
            n.float("alpha", 1.0).map_err(e)?,
            n.float("beta", 1.0).map_err(e)?,
        );
        if n.int("transA", 0).map_err(e)? != 0 || alpha != 1.0 || beta != 1.0 {
            return Err(bad(n, "transA, alpha or beta other than the defaults"));
        }
        let trans_b = n.int("transB", 0).map_err(e)? != 0;
        self.fully_connected(n, trans_b)
    }

    pub(super) fn matmul(&mut self, n: &Node) -> Result<(), String> {
        self.fully_connected(n, false)
    }
}
