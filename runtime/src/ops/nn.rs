//! Neural-network layers: Conv (a host-kernel step on the CPU backends for depthwise,
//! 1x1 and group-1 convolutions, Burn's `conv2d` otherwise), BatchNormalization (folded
//! to a per-channel affine at load time), MaxPool / AveragePool, and the dense layers
//! Gemm and MatMul.

use super::{fixed, rank4, Ctx, Node};
use crate::error::RuntimeError;
use crate::hostconv::Geom;
use crate::plan::{HostKind, Step};
use crate::value::{show, Dim};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

/// Output side of a convolution or pooling window.
fn window(
    n: &Node,
    size: usize,
    pad: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil: bool,
) -> Result<usize, RuntimeError> {
    let span = dilation * (kernel.max(1) - 1) + 1;
    let padded = size + pad;
    if stride == 0 || padded < span {
        return Err(n.err(format!(
            "window {kernel} (dilation {dilation}, stride {stride}) does not fit an input side of {size} with padding {pad}"
        )));
    }
    let mut out = if ceil {
        (padded - span).div_ceil(stride) + 1
    } else {
        (padded - span) / stride + 1
    };
    // The last window must start inside the input or its left padding (PyTorch's rule).
    if ceil && (out - 1) * stride >= size + pad / 2 {
        out -= 1;
    }
    Ok(out)
}

fn auto_pad_not_set(n: &Node) -> Result<(), RuntimeError> {
    match n.string("auto_pad")?.as_deref() {
        None | Some("NOTSET") | Some("") => Ok(()),
        Some(other) => Err(n.err(format!("auto_pad {other} is not supported (NOTSET is)"))),
    }
}

pub(super) fn conv<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    auto_pad_not_set(n)?;
    let (x, s) = cx.value(n, 0)?;
    let [b_dim, c, h, w] = rank4(n, &s)?;
    let (c, h, w) = (
        fixed(n, c, "channels")?,
        fixed(n, h, "height")?,
        fixed(n, w, "width")?,
    );
    let (wd, wv) = cx.floats(n, 1, "the weight")?;
    let [m, cg, kh, kw] = <[usize; 4]>::try_from(wd.as_slice())
        .map_err(|_| n.err(format!("weight of shape {wd:?} is not 4-D")))?;
    if wd.contains(&0) {
        return Err(n.err(format!("empty weight {wd:?}")));
    }
    let group = usize::try_from(n.int("group", 1)?).unwrap_or(0);
    if group == 0 || cg * group != c || m % group != 0 {
        return Err(n.err(format!(
            "weight {wd:?} with group {group} does not fit {c} input channels"
        )));
    }
    if let Some(k) = n.ints("kernel_shape")? {
        if k != [kh as i64, kw as i64] {
            return Err(n.err(format!("kernel_shape {k:?} differs from the weight {wd:?}")));
        }
    }
    let strides = n.positive("strides", 2, 1)?;
    let dil = n.positive("dilations", 2, 1)?;
    let pads = n.sizes("pads", 4, 0)?;
    let bias = match cx.opt(n, 2)? {
        None => None,
        Some(_) => {
            let (bd, bv) = cx.floats(n, 2, "the bias")?;
            if bd != [m] {
                return Err(n.err(format!("bias of shape {bd:?}, [{m}] needed")));
            }
            Some(bv)
        }
    };
    let oh = window(n, h, pads[0] + pads[2], kh, strides[0], dil[0], false)?;
    let ow = window(n, w, pads[1] + pads[3], kw, strides[1], dil[1], false)?;
    let symmetric = pads[0] == pads[2] && pads[1] == pads[3];
    let (padding, pre_pad) = if symmetric {
        ([pads[0], pads[1]], None)
    } else {
        ([0, 0], Some([pads[0], pads[2], pads[1], pads[3]]))
    };
    let depthwise = group == c && m == c && cg == 1;
    let pointwise = [kh, kw] == [1, 1] && pads == [0; 4] && group == 1;
    let dense = group == 1 && !pointwise;
    let step = if cx.on_host && (depthwise || pointwise || dense) {
        let b = bias;
        let kind = if pointwise {
            HostKind::Pointwise {
                w: wv,
                b,
                m,
                stride: [strides[0], strides[1]],
            }
        } else {
            let g = Geom {
                c,
                h,
                w,
                kh,
                kw,
                sh: strides[0],
                sw: strides[1],
                dh: dil[0],
                dw: dil[1],
                pt: pads[0],
                pl: pads[1],
                oh,
                ow,
            };
            if dense {
                HostKind::Dense { w: wv, b, m, g }
            } else {
                HostKind::Depthwise { w: wv, b, g }
            }
        };
        Step::HostConv {
            x,
            kind,
            relu_in: false,
        }
    } else {
        Step::Conv {
            x,
            w: cx.tensor4(&wd, wv)?,
            b: bias.map(|b| Tensor::<B, 1>::from_data(TensorData::new(b, [m]), cx.device)),
            opts: ConvOptions::new([strides[0], strides[1]], padding, [dil[0], dil[1]], group),
            pre_pad,
            relu_in: false,
        }
    };
    cx.define(
        n,
        step,
        vec![b_dim, Dim::Fixed(m), Dim::Fixed(oh), Dim::Fixed(ow)],
    )
}

pub(super) fn batch_norm<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    if n.int("training_mode", 0)? != 0 {
        return Err(n.err("training_mode = 1 is not supported (inference only)"));
    }
    let eps = n.float("epsilon", 1e-5)?;
    let (x, s) = cx.value(n, 0)?;
    let c = fixed(
        n,
        *s.get(1).ok_or_else(|| n.err("input without channels"))?,
        "channels",
    )?;
    let mut p = vec![];
    for (i, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
        let (d, v) = cx.floats(n, i, what)?;
        if d != [c] {
            return Err(n.err(format!("{what} of shape {d:?}, [{c}] needed")));
        }
        p.push(v);
    }
    let scale: Vec<f32> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
    let shift: Vec<f32> = (0..c).map(|i| p[1][i] - p[2][i] * scale[i]).collect();
    let step = Step::BatchNorm {
        x,
        scale: cx.tensor4(&[1, c], scale)?,
        shift: cx.tensor4(&[1, c], shift)?,
    };
    cx.define(n, step, s)
}

/// Kernel, strides, symmetric pads, dilations and ceil mode of a pooling node.
fn pool_geometry(
    n: &Node,
    s: &[Dim],
) -> Result<
    (
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 2],
        bool,
        Vec<Dim>,
    ),
    RuntimeError,
> {
    auto_pad_not_set(n)?;
    let [b, c, h, w] = rank4(n, s)?;
    if n.ints("kernel_shape")?.is_none() {
        return Err(n.err("kernel_shape is required"));
    }
    let k = n.positive("kernel_shape", 2, 1)?;
    let st = n.positive("strides", 2, 1)?;
    let pads = n.sizes("pads", 4, 0)?;
    let dil = n.positive("dilations", 2, 1)?;
    if pads[0] != pads[2] || pads[1] != pads[3] {
        return Err(n.err(format!("asymmetric pads {pads:?} are not supported")));
    }
    let ceil = n.int("ceil_mode", 0)? != 0;
    let oh = window(
        n,
        fixed(n, h, "height")?,
        2 * pads[0],
        k[0],
        st[0],
        dil[0],
        ceil,
    )?;
    let ow = window(
        n,
        fixed(n, w, "width")?,
        2 * pads[1],
        k[1],
        st[1],
        dil[1],
        ceil,
    )?;
    Ok((
        [k[0], k[1]],
        [st[0], st[1]],
        [pads[0], pads[1]],
        [dil[0], dil[1]],
        ceil,
        vec![b, c, Dim::Fixed(oh), Dim::Fixed(ow)],
    ))
}

pub(super) fn max_pool<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    if n.proto.output.len() > 1 && !n.proto.output[1].is_empty() {
        return Err(n.err("the Indices output is not supported"));
    }
    if n.int("storage_order", 0)? != 0 {
        return Err(n.err("storage_order = 1 is not supported"));
    }
    let (x, s) = cx.value(n, 0)?;
    let (kernel, stride, padding, dilation, ceil, out) = pool_geometry(n, &s)?;
    let step = Step::MaxPool {
        x,
        kernel,
        stride,
        padding,
        dilation,
        ceil,
    };
    cx.define(n, step, out)
}

pub(super) fn avg_pool<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let (kernel, stride, padding, dilation, ceil, out) = pool_geometry(n, &s)?;
    if dilation != [1, 1] {
        return Err(n.err("dilated average pooling is not supported"));
    }
    let step = Step::AvgPool {
        x,
        kernel,
        stride,
        padding,
        include_pad: n.int("count_include_pad", 0)? != 0,
        ceil,
    };
    cx.define(n, step, out)
}

/// Shared by Gemm and MatMul: `x [N, K] @ w [K, M] + b`.
fn dense<B: Backend>(
    cx: &mut Ctx<B>,
    n: &Node,
    x: usize,
    s: &[Dim],
    w: Vec<f32>,
    k: usize,
    m: usize,
    bias: Option<Vec<f32>>,
) -> Result<(), RuntimeError> {
    if s.len() != 2 || s[1] != Dim::Fixed(k) {
        return Err(n.err(format!(
            "input {} does not fit a [{k}, {m}] weight",
            show(s)
        )));
    }
    let w = Tensor::<B, 2>::from_data(TensorData::new(w, [k, m]), cx.device);
    let b = bias.map(|b| Tensor::<B, 2>::from_data(TensorData::new(b, [1, m]), cx.device));
    cx.define(n, Step::Gemm { x, w, b, out: m }, vec![s[0], Dim::Fixed(m)])
}

pub(super) fn gemm<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    if n.int("transA", 0)? != 0 {
        return Err(n.err("transA = 1 is not supported"));
    }
    let (x, s) = cx.value(n, 0)?;
    let (bd, bv) = cx.floats(n, 1, "B")?;
    let [r, c] = <[usize; 2]>::try_from(bd.as_slice()).map_err(|_| n.err("B must be 2-D"))?;
    let alpha = n.float("alpha", 1.0)?;
    let beta = n.float("beta", 1.0)?;
    // w as [K, M], scaled by alpha.
    let (k, m, w) = if n.int("transB", 0)? != 0 {
        let mut w = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                w[j * r + i] = bv[i * c + j] * alpha;
            }
        }
        (c, r, w)
    } else {
        (r, c, bv.iter().map(|v| v * alpha).collect())
    };
    let bias = match cx.opt(n, 2)? {
        None => None,
        Some(_) => {
            let (cd, cv) = cx.floats(n, 2, "C")?;
            let b: Vec<f32> = match (cd.as_slice(), cv.len()) {
                (_, 1) => vec![cv[0] * beta; m],
                ([len] | [1, len], _) if *len == m => cv.iter().map(|v| v * beta).collect(),
                _ => {
                    return Err(n.err(format!(
                        "C of shape {cd:?} is not supported ([{m}] or [1, {m}])"
                    )))
                }
            };
            Some(b)
        }
    };
    dense(cx, n, x, &s, w, k, m, bias)
}

pub(super) fn matmul<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let (bd, bv) = cx.floats(n, 1, "the right operand")?;
    let [k, m] = <[usize; 2]>::try_from(bd.as_slice())
        .map_err(|_| n.err("only x @ W with a constant 2-D W is supported"))?;
    dense(cx, n, x, &s, bv, k, m, None)
}
