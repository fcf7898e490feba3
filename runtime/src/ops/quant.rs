//! `QuantizeLinear` and `DequantizeLinear` (opset 13 semantics) on the float path: per
//! tensor (a scalar or one-element scale) or per axis (a 1-D scale along `axis`); Q
//! computes `saturate(round_half_to_even(x / scale) + zero)` into int8 or uint8 (the zero
//! point's type, uint8 when it is omitted), DQ `(q - zero) scale` from int8, uint8 or int32
//! (biases, zero point 0).
//!
//! A constant input is folded at load time (so `DequantizeLinear(weights)` becomes float
//! weights, and the Conv / Gemm / MatMul builders run unchanged). On a run-time value the
//! node becomes a step on Burn tensors that hold the integer codes as floats (fake
//! quantization): correct on every device. The int8 engine ([`crate::int8`]) replaces
//! the whole plan on the CPU backends when it covers the graph.

use super::{Ctx, Known, Node};
use crate::error::RuntimeError;
use crate::plan::{QParams, Step};
use crate::value::{Const, Dim, QType};
use burn::tensor::backend::Backend;
use splitnas_host::kernels::int8::quant::quantize_one;

/// The checked scale and zero point of a Q or DQ node.
pub(crate) struct Params {
    /// One scale per channel of `axis` (one in all: per tensor).
    pub scale: Vec<f32>,
    /// Zero points, as many as scales.
    pub zero: Vec<i32>,
    /// The integer type: the zero point's (Q: uint8 when omitted; DQ: the input's).
    pub ty: QType,
    /// The quantization axis (normalized), None per tensor.
    pub axis: Option<usize>,
}

impl Params {
    /// `[outer, C, inner]` view of a tensor of `dims`: (channels, inner).
    fn layout(&self, dims: &[usize]) -> (usize, usize) {
        match self.axis {
            None => (1, 1),
            Some(a) => (dims[a], dims[a + 1..].iter().product()),
        }
    }

    /// The channel of element `i` of a tensor of `dims`.
    fn channel(&self, i: usize, (c, inner): (usize, usize)) -> usize {
        (i / inner) % c
    }
}

/// Name of input `i` (for messages).
fn name<'a>(n: &'a Node, i: usize) -> &'a str {
    n.input(i).unwrap_or("?")
}

/// Reads and checks the scale (input 1), zero point (input 2) and `axis` of `n` for an
/// input of `shape`; `x_ty` is the input's integer type (DQ) or None (Q).
pub(crate) fn params<B: Backend>(
    cx: &Ctx<B>,
    n: &Node,
    shape: &[Dim],
    x_ty: Option<QType>,
) -> Result<Params, RuntimeError> {
    let s_name = name(n, 1);
    let (sd, scale) = match cx.get(n, 1)? {
        Known::Const(Const::F32 { dims, data }) => (dims.clone(), data.clone()),
        _ => {
            return Err(n.err(format!(
                "scale '{s_name}' must be a float32 initializer or constant"
            )))
        }
    };
    if sd.len() > 1 {
        return Err(n.err(format!(
            "scale '{s_name}' has shape {sd:?}: a scalar or a 1-D tensor is needed"
        )));
    }
    if let Some((i, v)) = scale
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        return Err(n.err(format!(
            "scale '{s_name}' holds {v} at index {i}: scales must be positive and finite"
        )));
    }
    let (ty, zero) = match cx.opt(n, 2)? {
        None => (x_ty.unwrap_or(QType::U8), vec![0; scale.len()]),
        Some(k) => {
            let z_name = name(n, 2);
            let Known::Const(Const::Quant { ty, dims, data }) = k else {
                return Err(n.err(format!(
                    "zero point '{z_name}' must be an int8 or uint8 initializer or constant"
                )));
            };
            if *dims != sd {
                return Err(n.err(format!(
                    "zero point '{z_name}' has shape {dims:?}, its scale '{s_name}' {sd:?}"
                )));
            }
            match x_ty {
                None if *ty == QType::I32 => {
                    return Err(n.err(format!(
                        "zero point '{z_name}' is int32: QuantizeLinear outputs int8 or uint8"
                    )))
                }
                Some(x) if x != *ty => {
                    return Err(n.err(format!(
                        "zero point '{z_name}' is {} but input '{}' is {}",
                        ty.name(),
                        name(n, 0),
                        x.name()
                    )))
                }
                _ => {}
            }
            if *ty == QType::I32 && data.iter().any(|&z| z != 0) {
                return Err(n.err(format!("zero point '{z_name}' of an int32 input must be 0")));
            }
            (*ty, data.clone())
        }
    };
    let axis = if sd.is_empty() || scale.len() == 1 {
        None
    } else {
        let raw = n.int("axis", 1)?;
        let rank = shape.len() as i64;
        let a = if raw < 0 { raw + rank } else { raw };
        let a = usize::try_from(a)
            .ok()
            .filter(|&a| a < shape.len())
            .ok_or_else(|| {
                n.err(format!(
                    "axis {raw} is out of range for input '{}' of rank {rank}",
                    name(n, 0)
                ))
            })?;
        match shape[a] {
            Dim::Fixed(c) if c == scale.len() => {}
            d => {
                return Err(n.err(format!(
                    "scale '{s_name}' has {} values, axis {a} of input '{}' has {d}",
                    scale.len(),
                    name(n, 0)
                )))
            }
        }
        Some(a)
    };
    Ok(Params {
        scale,
        zero,
        ty,
        axis,
    })
}

/// The Burn form of `p` for a run-time input of rank `rank`.
fn step_params<B: Backend>(
    cx: &Ctx<B>,
    p: &Params,
    rank: usize,
) -> Result<QParams<B>, RuntimeError> {
    Ok(match p.axis {
        None => QParams::Scalar {
            scale: p.scale[0],
            zero: p.zero[0] as f32,
        },
        Some(a) => {
            let mut dims = vec![1; rank];
            dims[a] = p.scale.len();
            QParams::Tensor {
                scale: cx.tensor4(&dims, p.scale.clone())?,
                zero: cx.tensor4(&dims, p.zero.iter().map(|&z| z as f32).collect())?,
            }
        }
    })
}

fn fixed_shape(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

pub(super) fn quantize_linear<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let x = cx.get(n, 0)?.clone();
    let not_float = |what: &str| {
        n.err(format!(
            "input '{}' is {what}: QuantizeLinear needs float32",
            name(n, 0)
        ))
    };
    match x {
        Known::Const(Const::F32 { dims, data }) => {
            let p = params(cx, n, &fixed_shape(&dims), None)?;
            let l = p.layout(&dims);
            let q = data
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = p.channel(i, l);
                    let (s, z) = (p.scale[c], p.zero[c]);
                    match p.ty {
                        QType::I8 => quantize_one::<i8>(v, s, z as i8) as i32,
                        _ => quantize_one::<u8>(v, s, z as u8) as i32,
                    }
                })
                .collect();
            cx.define_const(
                n,
                Const::Quant {
                    ty: p.ty,
                    dims,
                    data: q,
                },
            )
        }
        Known::Const(Const::Quant { ty, .. }) => Err(not_float(ty.name())),
        Known::Const(Const::Int { .. }) => Err(not_float("int64")),
        Known::Value(v, shape) => {
            if let Some(ty) = cx.int_values.get(&v) {
                return Err(not_float(&format!(
                    "{} (a QuantizeLinear output)",
                    ty.name()
                )));
            }
            let p = params(cx, n, &shape, None)?;
            let (lo, hi) = p.ty.range();
            let step = Step::Quantize {
                x: v,
                p: step_params(cx, &p, shape.len())?,
                lo: lo as f32,
                hi: hi as f32,
            };
            cx.define_typed(n, step, shape, Some(p.ty))
        }
    }
}

pub(super) fn dequantize_linear<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let x = cx.get(n, 0)?.clone();
    let not_int = |what: &str| {
        n.err(format!(
            "input '{}' is {what}: DequantizeLinear needs int8, uint8 or int32",
            name(n, 0)
        ))
    };
    match x {
        Known::Const(Const::Quant { ty, dims, data }) => {
            let p = params(cx, n, &fixed_shape(&dims), Some(ty))?;
            let l = p.layout(&dims);
            let f = data
                .iter()
                .enumerate()
                .map(|(i, &q)| {
                    let c = p.channel(i, l);
                    // int32 inputs have zero point 0: no overflow
                    (q - p.zero[c]) as f32 * p.scale[c]
                })
                .collect();
            cx.define_const(n, Const::F32 { dims, data: f })
        }
        Known::Const(Const::F32 { .. }) => Err(not_int("float32")),
        Known::Const(Const::Int { .. }) => Err(not_int("int64")),
        Known::Value(v, shape) => {
            let Some(&ty) = cx.int_values.get(&v) else {
                return Err(not_int("a float32 run-time tensor"));
            };
            let p = params(cx, n, &shape, Some(ty))?;
            let step = Step::Dequantize {
                x: v,
                p: step_params(cx, &p, shape.len())?,
            };
            cx.define_typed(n, step, shape, None)
        }
    }
}
