//! The operator registry: one builder per ONNX `op_type`, turning a node into run-time
//! steps or, when every input is known at load time, into a constant (shape subgraphs such
//! as `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` are folded here, once).

use crate::error::RuntimeError;
use crate::hostconv::Geom;
use crate::plan::{HostKind, Operand, PadKind, Planned, Step};
use crate::value::{from_proto, physical, show, Const, Dim, SymInt};
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Slice, Tensor, TensorData};
use onnx_protobuf::{attribute_proto::AttributeType, AttributeProto, NodeProto};
use std::collections::HashMap;

/// A builder: reads the node, defines its outputs in the context.
pub(crate) type Builder<B> = fn(&mut Ctx<'_, B>, &Node<'_>) -> Result<(), RuntimeError>;

/// Every supported operator.
pub(crate) fn registry<B: Backend>() -> HashMap<&'static str, Builder<B>> {
    let mut r: HashMap<&'static str, Builder<B>> = HashMap::new();
    r.insert("Conv", conv);
    r.insert("BatchNormalization", batch_norm);
    r.insert("Relu", relu);
    r.insert("MaxPool", max_pool);
    r.insert("AveragePool", avg_pool);
    r.insert("GlobalAveragePool", global_avg_pool);
    r.insert("ReduceMean", reduce_mean);
    r.insert("Add", add);
    r.insert("Mul", mul);
    r.insert("Concat", concat);
    r.insert("Slice", slice);
    r.insert("Pad", pad);
    r.insert("Flatten", flatten);
    r.insert("Reshape", reshape);
    r.insert("Gemm", gemm);
    r.insert("MatMul", matmul);
    r.insert("Constant", constant);
    r.insert("Shape", shape);
    r.insert("Gather", gather);
    r.insert("Unsqueeze", unsqueeze);
    r.insert("Identity", identity);
    r.insert("Dropout", identity);
    r
}

/// Largest run-time tensor per image (elements) a model may ask for: 2^28 (1 GiB of f32).
pub(crate) const MAX_ELEMENTS: usize = 1 << 28;

/// What is known about a value at load time.
#[derive(Clone, Debug)]
pub(crate) enum Known {
    /// A constant.
    Const(Const),
    /// A run-time value: id and shape.
    Value(usize, Vec<Dim>),
}

/// The loader's state.
pub(crate) struct Ctx<'d, B: Backend> {
    pub device: &'d B::Device,
    pub opset: i64,
    pub known: HashMap<String, Known>,
    pub plan: Vec<Planned<B>>,
    pub next_id: usize,
}

/// A node with attribute and input helpers; errors name the node and operator.
pub(crate) struct Node<'n> {
    pub proto: &'n NodeProto,
}

impl Node<'_> {
    pub(crate) fn name(&self) -> String {
        if self.proto.name.is_empty() {
            format!(
                "<unnamed {} -> {}>",
                self.proto.op_type,
                self.proto.output.first().map_or("?", String::as_str)
            )
        } else {
            self.proto.name.clone()
        }
    }

    pub(crate) fn err(&self, problem: impl Into<String>) -> RuntimeError {
        RuntimeError::node(&self.name(), &self.proto.op_type, problem)
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name == name)
    }

    fn int(&self, name: &str, default: i64) -> Result<i64, RuntimeError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::INT) => Ok(a.i),
            Some(_) => Err(self.err(format!("attribute {name} must be an integer"))),
        }
    }

    fn float(&self, name: &str, default: f32) -> Result<f32, RuntimeError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::FLOAT) => Ok(a.f),
            Some(_) => Err(self.err(format!("attribute {name} must be a float"))),
        }
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, RuntimeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::INTS) => Ok(Some(a.ints.clone())),
            Some(_) => Err(self.err(format!("attribute {name} must be a list of integers"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::STRING) => {
                Ok(Some(String::from_utf8_lossy(&a.s).into_owned()))
            }
            Some(_) => Err(self.err(format!("attribute {name} must be a string"))),
        }
    }

    /// Input `i`'s name, None when absent or empty (an omitted optional input).
    fn input(&self, i: usize) -> Option<&str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn output(&self) -> Result<&str, RuntimeError> {
        self.proto
            .output
            .first()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.err("no output"))
    }

    /// Like [`Self::sizes`] but every value must be at least 1 (strides, dilations, kernels).
    fn positive(&self, name: &str, len: usize, default: usize) -> Result<Vec<usize>, RuntimeError> {
        let v = self.sizes(name, len, default)?;
        if v.contains(&0) {
            return Err(self.err(format!("{name} {v:?} has a zero")));
        }
        Ok(v)
    }

    /// `usize` list from an attribute, with bounds.
    fn sizes(&self, name: &str, len: usize, default: usize) -> Result<Vec<usize>, RuntimeError> {
        match self.ints(name)? {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len => v
                .iter()
                .map(|&x| {
                    usize::try_from(x)
                        .ok()
                        .filter(|&x| x <= 1 << 20)
                        .ok_or_else(|| self.err(format!("{name} value {x} out of range")))
                })
                .collect(),
            Some(v) => Err(self.err(format!("{name} has {} values, {len} needed", v.len()))),
        }
    }
}

impl<B: Backend> Ctx<'_, B> {
    fn get(&self, n: &Node, i: usize) -> Result<&Known, RuntimeError> {
        let name = n
            .input(i)
            .ok_or_else(|| n.err(format!("input {i} is missing")))?;
        self.known
            .get(name)
            .ok_or_else(|| n.err(format!("input '{name}' is not defined before the node")))
    }

    fn opt(&self, n: &Node, i: usize) -> Result<Option<&Known>, RuntimeError> {
        match n.input(i) {
            None => Ok(None),
            Some(_) => self.get(n, i).map(Some),
        }
    }

    fn value(&self, n: &Node, i: usize) -> Result<(usize, Vec<Dim>), RuntimeError> {
        match self.get(n, i)? {
            Known::Value(v, s) => Ok((*v, s.clone())),
            Known::Const(_) => Err(n.err(format!(
                "input {i} is a constant where a run-time tensor is expected"
            ))),
        }
    }

    fn constant(&self, n: &Node, i: usize, what: &str) -> Result<Const, RuntimeError> {
        match self.get(n, i)? {
            Known::Const(c) => Ok(c.clone()),
            Known::Value(..) => Err(n.err(format!("{what} must be an initializer or constant"))),
        }
    }

    fn floats(
        &self,
        n: &Node,
        i: usize,
        what: &str,
    ) -> Result<(Vec<usize>, Vec<f32>), RuntimeError> {
        match self.constant(n, i, what)? {
            Const::F32 { dims, data } => Ok((dims, data)),
            Const::Int { .. } => Err(n.err(format!("{what} must be float32"))),
        }
    }

    fn ints(&self, n: &Node, i: usize, what: &str) -> Result<Vec<i64>, RuntimeError> {
        self.constant(n, i, what)?.ints(what).map_err(|e| n.err(e))
    }

    fn define_const(&mut self, n: &Node, c: Const) -> Result<(), RuntimeError> {
        let out = n.output()?.to_string();
        self.known.insert(out, Known::Const(c));
        Ok(())
    }

    fn define(&mut self, n: &Node, step: Step<B>, shape: Vec<Dim>) -> Result<(), RuntimeError> {
        if shape.len() > 4 {
            return Err(n.err(format!("output rank {} (at most 4 supported)", shape.len())));
        }
        if shape.contains(&Dim::Fixed(0)) {
            return Err(n.err(format!("empty output {}", show(&shape))));
        }
        let per_image: Vec<usize> = shape.iter().map(|d| d.at(1)).collect();
        if crate::value::numel(&per_image).is_none_or(|e| e > MAX_ELEMENTS) {
            return Err(n.err(format!(
                "output {} has more than {MAX_ELEMENTS} elements per image",
                show(&shape)
            )));
        }
        let out = n.output()?.to_string();
        let id = self.next_id;
        self.next_id += 1;
        self.plan.push(Planned {
            step,
            out: id,
            last_use: vec![],
        });
        self.known.insert(out, Known::Value(id, shape));
        Ok(())
    }

    fn tensor4(&self, dims: &[usize], data: Vec<f32>) -> Result<Tensor<B, 4>, RuntimeError> {
        let p = physical(dims)?;
        Ok(Tensor::from_data(TensorData::new(data, p), self.device))
    }
}

fn fixed(n: &Node, d: Dim, what: &str) -> Result<usize, RuntimeError> {
    match d {
        Dim::Fixed(v) => Ok(v),
        Dim::Batch => Err(n.err(format!("{what} is the batch dimension"))),
    }
}

fn rank4(n: &Node, s: &[Dim]) -> Result<[Dim; 4], RuntimeError> {
    <[Dim; 4]>::try_from(s).map_err(|_| n.err(format!("needs a 4-D input, got {}", show(s))))
}

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

fn conv<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
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
    let step = if crate::host::is_host::<B>() && (depthwise || pointwise || dense) {
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

fn batch_norm<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
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

fn relu<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    cx.define(n, Step::Relu(x), s)
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

fn max_pool<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
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

fn avg_pool<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
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

fn global_avg_pool<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let [b, c, _, _] = rank4(n, &s)?;
    cx.define(
        n,
        Step::GlobalAvgPool(x),
        vec![b, c, Dim::Fixed(1), Dim::Fixed(1)],
    )
}

/// Normalizes possibly negative axes against `rank`.
fn axes(n: &Node, raw: &[i64], rank: usize) -> Result<Vec<usize>, RuntimeError> {
    raw.iter()
        .map(|&a| {
            let a2 = if a < 0 { a + rank as i64 } else { a };
            usize::try_from(a2)
                .ok()
                .filter(|&a| a < rank)
                .ok_or_else(|| n.err(format!("axis {a} out of range for rank {rank}")))
        })
        .collect()
}

fn reduce_mean<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let raw = if cx.opset >= 18 {
        match cx.opt(n, 1)? {
            Some(_) => Some(cx.ints(n, 1, "axes")?),
            None => None,
        }
    } else {
        n.ints("axes")?
    };
    let raw = match raw {
        Some(a) if !a.is_empty() => a,
        _ if n.int("noop_with_empty_axes", 0)? != 0 => {
            return cx.define(n, Step::Reshape { x, out: s.clone() }, s);
        }
        _ => (0..s.len() as i64).collect(),
    };
    let mut ax = axes(n, &raw, s.len())?;
    ax.sort_unstable();
    ax.dedup();
    if ax.contains(&0) {
        return Err(n.err("reducing over the batch dimension is not supported"));
    }
    let keep = n.int("keepdims", 1)? != 0;
    let out: Vec<Dim> = s
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (ax.contains(&i), keep) {
            (true, true) => Some(Dim::Fixed(1)),
            (true, false) => None,
            (false, _) => Some(d),
        })
        .collect();
    cx.define(
        n,
        Step::ReduceMean {
            x,
            axes: ax,
            out: out.clone(),
        },
        out,
    )
}

/// Numpy broadcasting of two shapes.
fn broadcast(n: &Node, a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, RuntimeError> {
    let r = a.len().max(b.len());
    let pad = |s: &[Dim]| {
        let mut v = vec![Dim::Fixed(1); r - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (a2, b2) = (pad(a), pad(b));
    a2.iter()
        .zip(&b2)
        .map(|(&x, &y)| match (x, y) {
            (x, y) if x == y => Ok(x),
            (Dim::Fixed(1), y) => Ok(y),
            (x, Dim::Fixed(1)) => Ok(x),
            _ => Err(n.err(format!(
                "shapes {} and {} do not broadcast",
                show(a),
                show(b)
            ))),
        })
        .collect()
}

fn binary<B: Backend>(
    cx: &mut Ctx<B>,
    n: &Node,
    make: fn(Operand<B>, Operand<B>) -> Step<B>,
    host: fn(f32, f32) -> f32,
) -> Result<(), RuntimeError> {
    let a = cx.get(n, 0)?.clone();
    let b = cx.get(n, 1)?.clone();
    let shape_of = |k: &Known| match k {
        Known::Const(c) => c.dims().iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>(),
        Known::Value(_, s) => s.clone(),
    };
    let out = broadcast(n, &shape_of(&a), &shape_of(&b))?;
    if let (
        Known::Const(Const::F32 { dims: da, data: va }),
        Known::Const(Const::F32 { dims: db, data: vb }),
    ) = (&a, &b)
    {
        // Constant folding for equal shapes or a scalar operand.
        let folded = if da == db {
            va.iter().zip(vb).map(|(x, y)| host(*x, *y)).collect()
        } else if vb.len() == 1 {
            va.iter().map(|x| host(*x, vb[0])).collect()
        } else if va.len() == 1 {
            vb.iter().map(|y| host(va[0], *y)).collect()
        } else {
            return Err(n.err("broadcasting between two constants is not supported"));
        };
        let dims = if va.len() >= vb.len() {
            da.clone()
        } else {
            db.clone()
        };
        return cx.define_const(n, Const::F32 { dims, data: folded });
    }
    let operand = |k: &Known| -> Result<Operand<B>, RuntimeError> {
        match k {
            Known::Value(v, s) if s.len() == out.len() => Ok(Operand::Value(*v)),
            Known::Value(_, s) => Err(n.err(format!(
                "run-time operand of rank {} broadcast to rank {} is not supported",
                s.len(),
                out.len()
            ))),
            Known::Const(Const::F32 { dims, data }) => {
                let mut full = vec![1; out.len() - dims.len()];
                full.extend_from_slice(dims);
                Ok(Operand::Const(cx.tensor4(&full, data.clone())?))
            }
            Known::Const(Const::Int { .. }) => Err(n.err("integer operands are not supported")),
        }
    };
    let (oa, ob) = (operand(&a)?, operand(&b)?);
    cx.define(n, make(oa, ob), out)
}

fn add<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    binary(cx, n, Step::Add, |a, b| a + b)
}

fn mul<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    binary(cx, n, Step::Mul, |a, b| a * b)
}

fn concat<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let count = n.proto.input.len();
    if count == 0 {
        return Err(n.err("no inputs"));
    }
    let parts: Vec<Known> = (0..count)
        .map(|i| cx.get(n, i).cloned())
        .collect::<Result<_, _>>()?;
    let axis_raw = n.int("axis", i64::MIN)?;
    if axis_raw == i64::MIN {
        return Err(n.err("attribute axis is required"));
    }
    if parts.iter().all(|p| matches!(p, Known::Const(_))) {
        // Shape arithmetic: 1-D integer (or float) constants.
        let mut ints = vec![];
        let mut floats = vec![];
        for p in &parts {
            match p {
                Known::Const(Const::Int { dims, data }) if dims.len() == 1 => {
                    ints.extend_from_slice(data)
                }
                Known::Const(Const::F32 { dims, data }) if dims.len() == 1 => {
                    floats.extend_from_slice(data)
                }
                _ => {
                    return Err(
                        n.err("concatenating constants of rank other than 1 is not supported")
                    )
                }
            }
        }
        return match (ints.is_empty(), floats.is_empty()) {
            (false, true) => cx.define_const(
                n,
                Const::Int {
                    dims: vec![ints.len()],
                    data: ints,
                },
            ),
            (true, false) => cx.define_const(
                n,
                Const::F32 {
                    dims: vec![floats.len()],
                    data: floats,
                },
            ),
            _ => Err(n.err("mixed integer and float constants")),
        };
    }
    let mut ids = vec![];
    let mut shapes = vec![];
    for p in &parts {
        match p {
            Known::Value(v, s) => {
                ids.push(*v);
                shapes.push(s.clone());
            }
            Known::Const(_) => {
                return Err(n.err("concatenating constants with run-time tensors is not supported"))
            }
        }
    }
    let rank = shapes[0].len();
    let axis = axes(n, &[axis_raw], rank)?[0];
    let mut out = shapes[0].clone();
    let mut total = 0;
    for s in &shapes {
        let same = s.len() == rank && (0..rank).all(|i| i == axis || s[i] == shapes[0][i]);
        if !same {
            return Err(n.err(format!(
                "inputs {} and {} differ off axis {axis}",
                show(&shapes[0]),
                show(s)
            )));
        }
        total += fixed(n, s[axis], "the concatenation axis")?;
    }
    out[axis] = Dim::Fixed(total);
    cx.define(n, Step::Concat { xs: ids, axis }, out)
}

/// Resolves one Slice axis: clamped start/end for a positive step.
fn slice_range(start: i64, end: i64, step: i64, dim: usize) -> (usize, usize) {
    let d = dim as i64;
    let norm = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
    let _ = step;
    let (s, e) = (norm(start), norm(end));
    (s as usize, e.max(s) as usize)
}

fn slice<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let data = cx.get(n, 0)?.clone();
    let starts = cx.ints(n, 1, "starts")?;
    let ends = cx.ints(n, 2, "ends")?;
    if starts.len() != ends.len() || starts.is_empty() {
        return Err(n.err("starts and ends are empty or differ in length"));
    }
    let rank = match &data {
        Known::Const(c) => c.dims().len(),
        Known::Value(_, s) => s.len(),
    };
    let ax = match cx.opt(n, 3)? {
        Some(_) => axes(n, &cx.ints(n, 3, "axes")?, rank)?,
        None => (0..starts.len()).collect(),
    };
    let steps = match cx.opt(n, 4)? {
        Some(_) => cx.ints(n, 4, "steps")?,
        None => vec![1; starts.len()],
    };
    if ax.len() != starts.len() || steps.len() != starts.len() {
        return Err(n.err("starts, ends, axes and steps differ in length"));
    }
    if let Some(s) = steps.iter().find(|&&s| s <= 0) {
        return Err(n.err(format!("step {s} is not supported (positive steps are)")));
    }
    match data {
        Known::Const(Const::Int { dims, data }) if dims.len() == 1 && ax == [0] => {
            let (s, e) = slice_range(starts[0], ends[0], steps[0], dims[0]);
            let picked: Vec<SymInt> = data[s..e]
                .iter()
                .step_by(steps[0] as usize)
                .copied()
                .collect();
            cx.define_const(
                n,
                Const::Int {
                    dims: vec![picked.len()],
                    data: picked,
                },
            )
        }
        Known::Const(_) => Err(n.err("slicing constants of rank other than 1 is not supported")),
        Known::Value(x, shape) => {
            let mut slices = [
                Slice::new(0, None, 1),
                Slice::new(0, None, 1),
                Slice::new(0, None, 1),
                Slice::new(0, None, 1),
            ];
            let mut out = shape.clone();
            for (i, &a) in ax.iter().enumerate() {
                let size = match shape[a] {
                    Dim::Fixed(v) => v,
                    Dim::Batch if starts[i] == 0 && ends[i] >= i32::MAX as i64 && steps[i] == 1 => {
                        continue
                    }
                    Dim::Batch => return Err(n.err("slicing the batch dimension is not supported")),
                };
                let (s, e) = slice_range(starts[i], ends[i], steps[i], size);
                if e <= s {
                    return Err(n.err(format!("empty slice on axis {a}")));
                }
                let st = steps[i] as usize;
                slices[a] = Slice::new(s as isize, Some(e as isize), st as isize);
                out[a] = Dim::Fixed((e - s).div_ceil(st));
            }
            cx.define(n, Step::Slice { x, slices }, out)
        }
    }
}

fn pad<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let pads = cx.ints(n, 1, "pads")?;
    let value = match cx.opt(n, 2)? {
        Some(_) => {
            let (_, v) = cx.floats(n, 2, "constant_value")?;
            *v.first().unwrap_or(&0.0)
        }
        None => 0.0,
    };
    let ax = match cx.opt(n, 3)? {
        Some(_) => axes(n, &cx.ints(n, 3, "axes")?, s.len())?,
        None => (0..s.len()).collect(),
    };
    if pads.len() != 2 * ax.len() {
        return Err(n.err(format!("{} pads for {} axes", pads.len(), ax.len())));
    }
    let mode = match n.string("mode")?.as_deref() {
        None | Some("constant") => PadKind::Constant(value),
        Some("reflect") => PadKind::Reflect,
        Some("edge") => PadKind::Edge,
        Some(m) => return Err(n.err(format!("mode {m} is not supported"))),
    };
    let mut full = [(0usize, 0usize); 4];
    let mut out = s.clone();
    for (i, &a) in ax.iter().enumerate() {
        let (before, after) = (pads[i], pads[i + ax.len()]);
        let (before, after) = match (usize::try_from(before), usize::try_from(after)) {
            (Ok(b), Ok(e)) if b <= 1 << 20 && e <= 1 << 20 => (b, e),
            _ => {
                return Err(n.err(format!(
                    "pads {before}, {after} not supported (non-negative, at most 2^20)"
                )))
            }
        };
        if before + after == 0 {
            continue;
        }
        let size = fixed(n, s[a], "a padded axis")?;
        if !matches!(mode, PadKind::Constant(_)) && (before >= size || after >= size) {
            return Err(n.err(format!(
                "{mode:?} padding of {before}/{after} on a side of {size}"
            )));
        }
        full[a] = (before, after);
        out[a] = Dim::Fixed(size + before + after);
    }
    cx.define(
        n,
        Step::Pad {
            x,
            pads: full,
            mode,
        },
        out,
    )
}

/// Multiplies dims; Batch counts as a separate power.
fn product(dims: &[Dim]) -> (usize, usize) {
    dims.iter().fold((0, 1), |(b, f), d| match d {
        Dim::Batch => (b + 1, f),
        Dim::Fixed(v) => (b, f.saturating_mul(*v)),
    })
}

fn flatten<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let axis = n.int("axis", 1)?;
    let a = if axis < 0 {
        axis + s.len() as i64
    } else {
        axis
    };
    if a < 1 || a as usize > s.len() {
        return Err(n.err(format!(
            "axis {axis} is not supported for rank {} (the batch must stay first)",
            s.len()
        )));
    }
    let (head, tail) = s.split_at(a as usize);
    let first = match product(head) {
        (1, 1) => Dim::Batch,
        (0, f) => Dim::Fixed(f),
        _ => return Err(n.err("flattening the batch dimension into others is not supported")),
    };
    let second = match product(tail) {
        (0, f) => Dim::Fixed(f),
        _ => return Err(n.err("flattening the batch dimension into others is not supported")),
    };
    let out = vec![first, second];
    cx.define(
        n,
        Step::Reshape {
            x,
            out: out.clone(),
        },
        out,
    )
}

fn reshape<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let target = match cx.constant(n, 1, "the shape")? {
        Const::Int { data, dims } if dims.len() == 1 => data,
        _ => return Err(n.err("the shape must be a 1-D integer tensor")),
    };
    let allow_zero = n.int("allowzero", 0)? != 0;
    let data = cx.get(n, 0)?.clone();
    let in_shape: Vec<Dim> = match &data {
        Known::Const(c) => c.dims().iter().map(|&d| Dim::Fixed(d)).collect(),
        Known::Value(_, s) => s.clone(),
    };
    let mut out: Vec<Option<Dim>> = vec![];
    for (i, t) in target.iter().enumerate() {
        out.push(match t {
            SymInt::Batch => Some(Dim::Batch),
            SymInt::Val(0) if !allow_zero => Some(*in_shape.get(i).ok_or_else(|| {
                n.err(format!("0 at position {i} has no input dimension to copy"))
            })?),
            SymInt::Val(-1) => None,
            SymInt::Val(v) if *v > 0 => Some(Dim::Fixed(*v as usize)),
            SymInt::Val(v) => return Err(n.err(format!("shape entry {v} is not supported"))),
        });
    }
    if out.iter().filter(|d| d.is_none()).count() > 1 {
        return Err(n.err("more than one -1 in the shape"));
    }
    let (bi, fi) = product(&in_shape);
    let known: Vec<Dim> = out.iter().flatten().copied().collect();
    let (bo, fo) = product(&known);
    let resolved: Vec<Dim> = if out.iter().any(|d| d.is_none()) {
        if fo == 0 || fi % fo != 0 || bi < bo {
            return Err(n.err(format!("cannot reshape {} to {target:?}", show(&in_shape))));
        }
        let fill = match bi - bo {
            0 => Dim::Fixed(fi / fo),
            1 if fi == fo => Dim::Batch,
            _ => {
                return Err(n.err(format!(
                    "cannot infer -1 reshaping {} to {target:?}",
                    show(&in_shape)
                )))
            }
        };
        out.iter().map(|d| d.unwrap_or(fill)).collect()
    } else {
        if (bi, fi) != (bo, fo) {
            return Err(n.err(format!("cannot reshape {} to {target:?}", show(&in_shape))));
        }
        known
    };
    match data {
        Known::Const(Const::F32 { data, .. }) => {
            let dims = resolved
                .iter()
                .map(|&d| fixed(n, d, "a constant's dimension"))
                .collect::<Result<_, _>>()?;
            cx.define_const(n, Const::F32 { dims, data })
        }
        Known::Const(Const::Int { data, .. }) => {
            let dims = resolved
                .iter()
                .map(|&d| fixed(n, d, "a constant's dimension"))
                .collect::<Result<_, _>>()?;
            cx.define_const(n, Const::Int { dims, data })
        }
        Known::Value(x, _) => cx.define(
            n,
            Step::Reshape {
                x,
                out: resolved.clone(),
            },
            resolved,
        ),
    }
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

fn gemm<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
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

fn matmul<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let (bd, bv) = cx.floats(n, 1, "the right operand")?;
    let [k, m] = <[usize; 2]>::try_from(bd.as_slice())
        .map_err(|_| n.err("only x @ W with a constant 2-D W is supported"))?;
    dense(cx, n, x, &s, bv, k, m, None)
}

fn constant<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let a = n
        .proto
        .attribute
        .first()
        .ok_or_else(|| n.err("no value attribute"))?;
    let c = match (a.name.as_str(), a.t.as_ref()) {
        ("value", Some(t)) => from_proto(t).map_err(|e| n.err(e))?,
        ("value_float", _) => Const::F32 {
            dims: vec![],
            data: vec![a.f],
        },
        ("value_floats", _) => Const::F32 {
            dims: vec![a.floats.len()],
            data: a.floats.clone(),
        },
        ("value_int", _) => Const::Int {
            dims: vec![],
            data: vec![SymInt::Val(a.i)],
        },
        ("value_ints", _) => Const::Int {
            dims: vec![a.ints.len()],
            data: a.ints.iter().map(|&v| SymInt::Val(v)).collect(),
        },
        (other, _) => return Err(n.err(format!("constant attribute {other} is not supported"))),
    };
    cx.define_const(n, c)
}

fn shape<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let dims: Vec<SymInt> = match cx.get(n, 0)? {
        Known::Const(c) => c.dims().iter().map(|&d| SymInt::Val(d as i64)).collect(),
        Known::Value(_, s) => s
            .iter()
            .map(|d| match d {
                Dim::Batch => SymInt::Batch,
                Dim::Fixed(v) => SymInt::Val(*v as i64),
            })
            .collect(),
    };
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(n.int("start", 0)?);
    let end = clamp(n.int("end", r)?).max(start);
    let picked = dims[start..end].to_vec();
    cx.define_const(
        n,
        Const::Int {
            dims: vec![picked.len()],
            data: picked,
        },
    )
}

fn gather<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let data = match cx.get(n, 0)? {
        Known::Const(c) => c.clone(),
        Known::Value(..) => {
            return Err(
                n.err("Gather on run-time tensors is not supported (only on shapes and constants)")
            )
        }
    };
    let idx_const = cx.constant(n, 1, "the indices")?;
    let idx = idx_const.ints("the indices").map_err(|e| n.err(e))?;
    if n.int("axis", 0)? != 0 || data.dims().len() != 1 {
        return Err(n.err("only Gather on axis 0 of a 1-D constant is supported"));
    }
    let len = data.dims()[0] as i64;
    let pos: Vec<usize> = idx
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| (j as i64) < len)
                .ok_or_else(|| n.err(format!("index {i} out of range for length {len}")))
        })
        .collect::<Result<_, _>>()?;
    let dims = idx_const.dims().to_vec();
    let c = match data {
        Const::Int { data, .. } => Const::Int {
            dims,
            data: pos.iter().map(|&j| data[j]).collect(),
        },
        Const::F32 { data, .. } => Const::F32 {
            dims,
            data: pos.iter().map(|&j| data[j]).collect(),
        },
    };
    cx.define_const(n, c)
}

fn unsqueeze<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let raw = cx.ints(n, 1, "axes")?;
    let data = cx.get(n, 0)?.clone();
    let in_shape: Vec<Dim> = match &data {
        Known::Const(c) => c.dims().iter().map(|&d| Dim::Fixed(d)).collect(),
        Known::Value(_, s) => s.clone(),
    };
    let rank = in_shape.len() + raw.len();
    let mut ax = axes(n, &raw, rank)?;
    ax.sort_unstable();
    let mut out = in_shape.clone();
    for &a in &ax {
        out.insert(a.min(out.len()), Dim::Fixed(1));
    }
    match data {
        Known::Const(c) => {
            let dims = out
                .iter()
                .map(|&d| fixed(n, d, "a constant's dimension"))
                .collect::<Result<Vec<_>, _>>()?;
            let c = match c {
                Const::F32 { data, .. } => Const::F32 { dims, data },
                Const::Int { data, .. } => Const::Int { dims, data },
            };
            cx.define_const(n, c)
        }
        Known::Value(x, _) => cx.define(
            n,
            Step::Reshape {
                x,
                out: out.clone(),
            },
            out,
        ),
    }
}

/// Identity and inference-mode Dropout: the output is the input (no step).
fn identity<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    if n.proto.op_type == "Dropout" && n.proto.output.len() > 1 && !n.proto.output[1].is_empty() {
        return Err(n.err("the Dropout mask output is not supported"));
    }
    let v = cx.get(n, 0)?.clone();
    let out = n.output()?.to_string();
    cx.known.insert(out, v);
    Ok(())
}
