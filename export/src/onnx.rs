//! The ONNX writer: a [`CompactNetwork`] -> one self-contained ONNX model (opset 17, IR
//! version 8, weights as little-endian `raw_data` initializers, metadata in
//! `metadata_props`). One small function per emitted node type.

use crate::compact::{CompactNetwork, ConvLayer, Layer, ValueId};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};

/// ONNX operator set written.
pub const OPSET: i64 = 17;
/// ONNX IR version written.
pub const IR_VERSION: i64 = 8;
/// Name of the graph input.
pub const INPUT: &str = "input";
/// Name of the graph output.
pub const OUTPUT: &str = "logits";

/// What the file says about the model, in `metadata_props`.
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    /// Genotype in DARTS notation.
    pub genotype: String,
    /// Per-input-channel mean of the training images (pixels in [0, 1]).
    pub mean: Vec<f32>,
    /// Per-input-channel standard deviation.
    pub std: Vec<f32>,
    /// Class names, one per logit.
    pub classes: Vec<String>,
    /// Data set name.
    pub dataset: String,
}

impl Metadata {
    /// The `metadata_props` entries, in file order.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("genotype", self.genotype.clone()),
            ("mean", serde_json::json!(self.mean).to_string()),
            ("std", serde_json::json!(self.std).to_string()),
            ("classes", serde_json::json!(self.classes).to_string()),
            ("dataset", self.dataset.clone()),
            ("splitnas_version", env!("CARGO_PKG_VERSION").to_string()),
        ]
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::INT),
        i: v,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::INTS),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::FLOAT),
        f: v,
        ..Default::default()
    }
}

fn f32_initializer(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::FLOAT as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_initializer(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: DataType::INT64 as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(
    op_type: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op_type.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// `Conv` with its weight (and bias) initializers `NAME/weight`, `NAME/bias`.
fn write_conv(g: &mut GraphProto, name: &str, x: &str, y: &str, c: &ConvLayer) {
    let w = format!("{name}/weight");
    g.initializer.push(f32_initializer(&w, &c.shape, &c.weight));
    let mut inputs = vec![x.to_string(), w];
    if let Some(bias) = &c.bias {
        let b = format!("{name}/bias");
        g.initializer.push(f32_initializer(&b, &[bias.len()], bias));
        inputs.push(b);
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    g.node.push(node(
        "Conv",
        name,
        &inputs,
        y,
        vec![
            attr_ints("kernel_shape", &c.shape[2..]),
            attr_ints("strides", &[c.stride; 2]),
            attr_ints("pads", &[c.padding; 4]),
            attr_ints("dilations", &[c.dilation; 2]),
            attr_int("group", c.groups as i64),
        ],
    ));
}

fn write_relu(g: &mut GraphProto, name: &str, x: &str, y: &str) {
    g.node.push(node("Relu", name, &[x], y, vec![]));
}

fn pool_attributes(kernel: usize, stride: usize, padding: usize) -> Vec<AttributeProto> {
    vec![
        attr_ints("kernel_shape", &[kernel; 2]),
        attr_ints("strides", &[stride; 2]),
        attr_ints("pads", &[padding; 4]),
    ]
}

fn write_max_pool(g: &mut GraphProto, name: &str, x: &str, y: &str, k: usize, s: usize, p: usize) {
    g.node
        .push(node("MaxPool", name, &[x], y, pool_attributes(k, s, p)));
}

/// `AveragePool` over the real pixels only (count_include_pad = 0).
fn write_avg_pool(g: &mut GraphProto, name: &str, x: &str, y: &str, k: usize, s: usize, p: usize) {
    let mut attributes = pool_attributes(k, s, p);
    attributes.push(attr_int("count_include_pad", 0));
    g.node.push(node("AveragePool", name, &[x], y, attributes));
}

fn write_add(g: &mut GraphProto, name: &str, a: &str, b: &str, y: &str) {
    g.node.push(node("Add", name, &[a, b], y, vec![]));
}

fn write_concat(g: &mut GraphProto, name: &str, xs: &[&str], y: &str) {
    g.node
        .push(node("Concat", name, xs, y, vec![attr_int("axis", 1)]));
}

/// Names of the shared `Slice` constants of [`write_shift`].
const SHIFT: [&str; 3] = ["shift/starts", "shift/ends", "shift/axes"];

/// `x[:, :, 1:, 1:]` as a `Slice` (opset 13 input form) reading the shared constants
/// `shift/starts`, `shift/ends`, `shift/axes`, added on first use.
fn write_shift(g: &mut GraphProto, name: &str, x: &str, y: &str) {
    if !g.initializer.iter().any(|t| t.name == SHIFT[0]) {
        g.initializer.push(i64_initializer(SHIFT[0], &[1, 1]));
        g.initializer
            .push(i64_initializer(SHIFT[1], &[i64::MAX, i64::MAX]));
        g.initializer.push(i64_initializer(SHIFT[2], &[2, 3]));
    }
    g.node.push(node(
        "Slice",
        name,
        &[x, SHIFT[0], SHIFT[1], SHIFT[2]],
        y,
        vec![],
    ));
}

fn write_global_avg_pool(g: &mut GraphProto, name: &str, x: &str, y: &str) {
    g.node
        .push(node("GlobalAveragePool", name, &[x], y, vec![]));
}

fn write_flatten(g: &mut GraphProto, name: &str, x: &str, y: &str) {
    g.node
        .push(node("Flatten", name, &[x], y, vec![attr_int("axis", 1)]));
}

/// `Gemm` with transB = 1: `y = x W^T + b`, W in `[outputs, inputs]`.
fn write_gemm(
    g: &mut GraphProto,
    name: &str,
    x: &str,
    y: &str,
    weight: &[f32],
    bias: &[f32],
    inputs: usize,
    outputs: usize,
) {
    let (w, b) = (format!("{name}/weight"), format!("{name}/bias"));
    g.initializer
        .push(f32_initializer(&w, &[outputs, inputs], weight));
    g.initializer.push(f32_initializer(&b, &[outputs], bias));
    g.node.push(node(
        "Gemm",
        name,
        &[x, &w, &b],
        y,
        vec![
            attr_float("alpha", 1.0),
            attr_float("beta", 1.0),
            attr_int("transB", 1),
        ],
    ));
}

fn value_info(name: &str, dims: &[Result<usize, &str>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| {
            let mut dim = tensor_shape_proto::Dimension::new();
            match d {
                Ok(v) => dim.set_dim_value(*v as i64),
                Err(p) => dim.set_dim_param(p.to_string()),
            }
            dim
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::FLOAT as i32,
        shape: MessageField::some(TensorShapeProto {
            dim,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut t = TypeProto::new();
    t.set_tensor_type(tensor);
    ValueInfoProto {
        name: name.into(),
        type_: MessageField::some(t),
        ..Default::default()
    }
}

/// The ONNX model of `net` with `meta` in its `metadata_props`.
pub fn to_model(net: &CompactNetwork, meta: &Metadata) -> ModelProto {
    let mut g = GraphProto {
        name: "splitnas".into(),
        ..Default::default()
    };
    let last = net.nodes.len();
    let value = |v: ValueId| -> String {
        match v {
            0 => INPUT.to_string(),
            v if v == last => OUTPUT.to_string(),
            v => net.nodes[v - 1].name.clone(),
        }
    };
    for (i, n) in net.nodes.iter().enumerate() {
        let y = value(i + 1);
        let xs: Vec<String> = n.inputs.iter().map(|&v| value(v)).collect();
        let x = xs.first().map_or("", String::as_str);
        let name = n.name.as_str();
        match &n.layer {
            Layer::Conv(c) => write_conv(&mut g, name, x, &y, c),
            Layer::Relu => write_relu(&mut g, name, x, &y),
            Layer::MaxPool {
                kernel,
                stride,
                padding,
            } => write_max_pool(&mut g, name, x, &y, *kernel, *stride, *padding),
            Layer::AvgPool {
                kernel,
                stride,
                padding,
            } => write_avg_pool(&mut g, name, x, &y, *kernel, *stride, *padding),
            Layer::Add => write_add(&mut g, name, x, &xs[1], &y),
            Layer::Concat => {
                let xs: Vec<&str> = xs.iter().map(String::as_str).collect();
                write_concat(&mut g, name, &xs, &y)
            }
            Layer::Shift => write_shift(&mut g, name, x, &y),
            Layer::GlobalAveragePool => write_global_avg_pool(&mut g, name, x, &y),
            Layer::Flatten => write_flatten(&mut g, name, x, &y),
            Layer::Gemm {
                weight,
                bias,
                inputs,
                outputs,
            } => write_gemm(&mut g, name, x, &y, weight, bias, *inputs, *outputs),
        }
    }
    let [c, h, w] = net.input_shape;
    g.input
        .push(value_info(INPUT, &[Err("N"), Ok(c), Ok(h), Ok(w)]));
    g.output
        .push(value_info(OUTPUT, &[Err("N"), Ok(net.classes)]));
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "splitnas".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("DARTS evaluation network, genotype {}", meta.genotype),
        graph: MessageField::some(g),
        metadata_props: meta
            .entries()
            .into_iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.into(),
                value,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
