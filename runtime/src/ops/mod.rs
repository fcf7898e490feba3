//! The operator registry: one builder per ONNX `op_type`, turning a node into run-time
//! steps or, when every input is known at load time, into a constant (shape subgraphs such
//! as `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` are folded here, once).
//!
//! The builders live by family: [`nn`] (convolution, normalization, pooling, dense),
//! [`shape`] (layout and shape arithmetic), [`elementwise`], [`reduce`]; this module holds
//! the registry, the loader's state ([`Ctx`]), the node helpers that read attributes with
//! defaults and name the node in their errors ([`Node`]), and the graph-level `Constant`
//! and `Identity`.

mod elementwise;
mod nn;
pub(crate) mod quant;
mod reduce;
mod shape;

use crate::error::RuntimeError;
use crate::plan::{Planned, Step};
use crate::value::{from_proto, physical, show, Const, Dim, QType, SymInt};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use onnx_protobuf::{attribute_proto::AttributeType, AttributeProto, NodeProto};
use std::collections::HashMap;

/// A builder: reads the node, defines its outputs in the context.
pub(crate) type Builder<B> = fn(&mut Ctx<'_, B>, &Node<'_>) -> Result<(), RuntimeError>;

/// Every supported operator.
pub(crate) fn registry<B: Backend>() -> HashMap<&'static str, Builder<B>> {
    let mut r: HashMap<&'static str, Builder<B>> = HashMap::new();
    r.insert("Conv", nn::conv);
    r.insert("BatchNormalization", nn::batch_norm);
    r.insert("Relu", elementwise::relu);
    r.insert("MaxPool", nn::max_pool);
    r.insert("AveragePool", nn::avg_pool);
    r.insert("GlobalAveragePool", reduce::global_avg_pool);
    r.insert("ReduceMean", reduce::reduce_mean);
    r.insert("Add", elementwise::add);
    r.insert("Mul", elementwise::mul);
    r.insert("Concat", shape::concat);
    r.insert("Slice", shape::slice);
    r.insert("Pad", shape::pad);
    r.insert("Flatten", shape::flatten);
    r.insert("Reshape", shape::reshape);
    r.insert("Gemm", nn::gemm);
    r.insert("MatMul", nn::matmul);
    r.insert("Constant", constant);
    r.insert("Shape", shape::shape);
    r.insert("Gather", shape::gather);
    r.insert("Unsqueeze", shape::unsqueeze);
    r.insert("Identity", identity);
    r.insert("Dropout", identity);
    r.insert("QuantizeLinear", quant::quantize_linear);
    r.insert("DequantizeLinear", quant::dequantize_linear);
    r
}

/// Operators that may read a run-time int8 / uint8 tensor (a `QuantizeLinear` output)
/// besides `DequantizeLinear`: they move or select values, so the integer codes held as
/// floats stay exact; their output has the input's type.
const INT_LAYOUT_OPS: [&str; 6] = [
    "MaxPool",
    "Reshape",
    "Flatten",
    "Unsqueeze",
    "Slice",
    "Concat",
];

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

impl Known {
    /// Integer constants of any width as [`Const::Int`] (see [`Const::widened`]).
    fn widened(self) -> Known {
        match self {
            Known::Const(c) => Known::Const(c.widened()),
            v => v,
        }
    }
}

/// The loader's state.
pub(crate) struct Ctx<'d, B: Backend> {
    pub device: &'d B::Device,
    pub opset: i64,
    pub known: HashMap<String, Known>,
    pub plan: Vec<Planned<B>>,
    pub next_id: usize,
    /// Whether the plan uses the host kernels (decided once, at load).
    pub on_host: bool,
    /// Run-time values holding integer codes (`QuantizeLinear` outputs and layout ops on
    /// them), with their type; every other run-time value is float32.
    pub int_values: HashMap<usize, QType>,
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

    pub(crate) fn int(&self, name: &str, default: i64) -> Result<i64, RuntimeError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::INT) => Ok(a.i),
            Some(_) => Err(self.err(format!("attribute {name} must be an integer"))),
        }
    }

    pub(crate) fn float(&self, name: &str, default: f32) -> Result<f32, RuntimeError> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::FLOAT) => Ok(a.f),
            Some(_) => Err(self.err(format!("attribute {name} must be a float"))),
        }
    }

    pub(crate) fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, RuntimeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::INTS) => Ok(Some(a.ints.clone())),
            Some(_) => Err(self.err(format!("attribute {name} must be a list of integers"))),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.type_.enum_value() == Ok(AttributeType::STRING) => {
                Ok(Some(String::from_utf8_lossy(&a.s).into_owned()))
            }
            Some(_) => Err(self.err(format!("attribute {name} must be a string"))),
        }
    }

    /// Input `i`'s name, None when absent or empty (an omitted optional input).
    pub(crate) fn input(&self, i: usize) -> Option<&str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub(crate) fn output(&self) -> Result<&str, RuntimeError> {
        self.proto
            .output
            .first()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.err("no output"))
    }

    /// Like [`Self::sizes`] but every value must be at least 1 (strides, dilations, kernels).
    pub(crate) fn positive(
        &self,
        name: &str,
        len: usize,
        default: usize,
    ) -> Result<Vec<usize>, RuntimeError> {
        let v = self.sizes(name, len, default)?;
        if v.contains(&0) {
            return Err(self.err(format!("{name} {v:?} has a zero")));
        }
        Ok(v)
    }

    /// `usize` list from an attribute, with bounds.
    pub(crate) fn sizes(
        &self,
        name: &str,
        len: usize,
        default: usize,
    ) -> Result<Vec<usize>, RuntimeError> {
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
    pub(crate) fn get(&self, n: &Node, i: usize) -> Result<&Known, RuntimeError> {
        let name = n
            .input(i)
            .ok_or_else(|| n.err(format!("input {i} is missing")))?;
        self.known
            .get(name)
            .ok_or_else(|| n.err(format!("input '{name}' is not defined before the node")))
    }

    pub(crate) fn opt(&self, n: &Node, i: usize) -> Result<Option<&Known>, RuntimeError> {
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
            _ => Err(n.err(format!("{what} must be float32"))),
        }
    }

    pub(crate) fn ints(&self, n: &Node, i: usize, what: &str) -> Result<Vec<i64>, RuntimeError> {
        self.constant(n, i, what)?.ints(what).map_err(|e| n.err(e))
    }

    fn define_const(&mut self, n: &Node, c: Const) -> Result<(), RuntimeError> {
        let out = n.output()?.to_string();
        self.known.insert(out, Known::Const(c));
        Ok(())
    }

    /// The integer type of `step`'s output when its inputs hold integer codes (only
    /// [`INT_LAYOUT_OPS`] may read them, all of one type), None for float inputs.
    fn int_output(&self, n: &Node, step: &Step<B>) -> Result<Option<QType>, RuntimeError> {
        let types: Vec<(usize, Option<QType>)> = step
            .inputs()
            .into_iter()
            .map(|v| (v, self.int_values.get(&v).copied()))
            .collect();
        let Some(&(v, Some(ty))) = types.iter().find(|t| t.1.is_some()) else {
            return Ok(None);
        };
        let op = n.proto.op_type.as_str();
        if INT_LAYOUT_OPS.contains(&op) && types.iter().all(|t| t.1 == Some(ty)) {
            return Ok(Some(ty));
        }
        let input = n
            .proto
            .input
            .iter()
            .find(|i| matches!(self.known.get(*i), Some(Known::Value(id, _)) if *id == v))
            .map_or("?", String::as_str);
        Err(n.err(format!(
            "input '{input}' is {} (a QuantizeLinear output): {op} needs float32 (a DequantizeLinear first)",
            ty.name()
        )))
    }

    fn define(&mut self, n: &Node, step: Step<B>, shape: Vec<Dim>) -> Result<(), RuntimeError> {
        let ty = self.int_output(n, &step)?;
        self.define_typed(n, step, shape, ty)
    }

    /// [`Self::define`] with the output's integer type given (`QuantizeLinear`) or float
    /// (`DequantizeLinear`).
    fn define_typed(
        &mut self,
        n: &Node,
        step: Step<B>,
        shape: Vec<Dim>,
        ty: Option<QType>,
    ) -> Result<(), RuntimeError> {
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
            name: n.name().into(),
            out: id,
            last_use: vec![],
        });
        self.known.insert(out, Known::Value(id, shape));
        if let Some(ty) = ty {
            self.int_values.insert(id, ty);
        }
        Ok(())
    }

    fn tensor4(&self, dims: &[usize], data: Vec<f32>) -> Result<Tensor<B, 4>, RuntimeError> {
        let p = physical(dims)?;
        Ok(Tensor::from_data(TensorData::new(data, p), self.device))
    }
}

/// A fixed dimension's size; the batch dimension is an error naming `what`.
fn fixed(n: &Node, d: Dim, what: &str) -> Result<usize, RuntimeError> {
    match d {
        Dim::Fixed(v) => Ok(v),
        Dim::Batch => Err(n.err(format!("{what} is the batch dimension"))),
    }
}

/// A 4-D shape, or an error.
fn rank4(n: &Node, s: &[Dim]) -> Result<[Dim; 4], RuntimeError> {
    <[Dim; 4]>::try_from(s).map_err(|_| n.err(format!("needs a 4-D input, got {}", show(s))))
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

/// `Constant`: the value attribute becomes a load-time constant.
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
