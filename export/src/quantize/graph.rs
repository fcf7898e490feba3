//! ONNX graph helpers of the quantizer: reading initializers and attributes, building
//! tensors and nodes, and folding each BatchNormalization into the Conv before it (the
//! PyTorch exporters' `Conv -> BatchNormalization`), which `export::fold` computes.

use crate::fold::{fold_batch_norm, HostBatchNorm, HostConv};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto, NodeProto,
    TensorProto,
};
use protobuf::EnumOrUnknown;
use splitnas_runtime::value::{from_proto, Const};
use std::collections::{HashMap, HashSet};

/// Whether `node` is in the default ONNX domain.
pub(crate) fn default_domain(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

/// How errors name a node: its name, or `<Op -> first output>` when it has none.
pub(crate) fn display(node: &NodeProto) -> String {
    if node.name.is_empty() {
        format!(
            "<{} -> {}>",
            node.op_type,
            node.output.first().map_or("?", String::as_str)
        )
    } else {
        node.name.clone()
    }
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// An integer attribute, `default` when absent.
pub(crate) fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

/// A float attribute, `default` when absent.
pub(crate) fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

/// A float tensor's shape and values (None for other element types or bad data).
pub(crate) fn floats(t: &TensorProto) -> Option<(Vec<usize>, Vec<f32>)> {
    match from_proto(t).ok()? {
        Const::F32 { dims, data } => Some((dims, data)),
        _ => None,
    }
}

/// The graph's initializers by name.
pub(crate) fn initializers(g: &GraphProto) -> HashMap<&str, &TensorProto> {
    g.initializer.iter().map(|t| (t.name.as_str(), t)).collect()
}

fn tensor(name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

/// A float32 initializer (`dims` empty: a scalar).
pub(crate) fn f32_tensor(name: &str, dims: &[usize], v: &[f32]) -> TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, dims, DataType::FLOAT, raw)
}

/// An int8 initializer.
pub(crate) fn i8_tensor(name: &str, dims: &[usize], v: &[i8]) -> TensorProto {
    let raw = v.iter().map(|&x| x as u8).collect();
    tensor(name, dims, DataType::INT8, raw)
}

/// An int32 initializer.
pub(crate) fn i32_tensor(name: &str, dims: &[usize], v: &[i32]) -> TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, dims, DataType::INT32, raw)
}

/// A nameless node with one output and an optional `axis` attribute.
pub(crate) fn node(op: &str, inputs: &[&str], output: &str, axis: Option<i64>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: axis
            .map(|a| AttributeProto {
                name: "axis".into(),
                type_: EnumOrUnknown::new(AttributeType::INT),
                i: a,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A Conv and the BatchNormalization after it, with the folded weight and bias.
struct Fold {
    conv: usize,
    bn: usize,
    weight: TensorProto,
    bias: TensorProto,
}

/// The fold of BatchNormalization node `bn` into the Conv producing its input, when that
/// Conv's output has no other reader, and the weights and statistics are initializers of
/// consistent sizes; None otherwise (the BatchNormalization then stays a node).
fn plan_fold(
    g: &GraphProto,
    bn: usize,
    producer: &HashMap<&str, usize>,
    readers: &HashMap<&str, usize>,
    inits: &HashMap<&str, &TensorProto>,
) -> Option<Fold> {
    let b = &g.node[bn];
    if b.op_type != "BatchNormalization" || !default_domain(b) {
        return None;
    }
    if attr_int(b, "training_mode", 0) != 0 || b.output.iter().skip(1).any(|o| !o.is_empty()) {
        return None;
    }
    let x = b.input.first()?.as_str();
    let conv = *producer.get(x)?;
    let c = &g.node[conv];
    if c.op_type != "Conv" || !default_domain(c) || readers.get(x) != Some(&1) {
        return None;
    }
    let init = |i: usize| -> Option<(Vec<usize>, Vec<f32>)> {
        let name = c.input.get(i).filter(|n| !n.is_empty())?;
        floats(inits.get(name.as_str())?)
    };
    let (wd, weight) = init(1)?;
    let shape: [usize; 4] = wd.try_into().ok()?;
    let bias = match c.input.get(2).filter(|n| !n.is_empty()) {
        Some(_) => init(2)?.1,
        None => vec![0.0; shape[0]],
    };
    let mut p = vec![];
    for i in 1..=4 {
        let name = b.input.get(i)?;
        p.push(floats(inits.get(name.as_str())?)?.1);
    }
    let [gamma, beta, mean, var] = <[Vec<f32>; 4]>::try_from(p).ok()?;
    let epsilon = f64::from(attr_float(b, "epsilon", 1e-5));
    let folded = fold_batch_norm(
        &HostConv {
            weight,
            shape,
            bias,
        },
        &HostBatchNorm {
            gamma: Some(gamma),
            beta: Some(beta),
            mean,
            var,
            epsilon,
        },
    )
    .ok()?;
    let out = &b.output[0];
    Some(Fold {
        conv,
        bn,
        weight: f32_tensor(&format!("{out}/folded_weight"), &shape, &folded.weight),
        bias: f32_tensor(&format!("{out}/folded_bias"), &[shape[0]], &folded.bias),
    })
}

/// Folds every BatchNormalization that directly follows a Conv whose output it alone
/// reads into that Conv (new weight and bias initializers; the Conv takes the
/// BatchNormalization's output name); returns how many were folded.
pub fn fold_batch_norms(g: &mut GraphProto) -> usize {
    let folds: Vec<Fold> = {
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for x in &n.input {
                *readers.entry(x.as_str()).or_default() += 1;
            }
        }
        for o in &g.output {
            *readers.entry(o.name.as_str()).or_default() += 1;
        }
        let inits = initializers(g);
        (0..g.node.len())
            .filter_map(|i| plan_fold(g, i, &producer, &readers, &inits))
            .collect()
    };
    let taken: HashSet<String> = g
        .initializer
        .iter()
        .map(|t| t.name.clone())
        .chain(g.node.iter().flat_map(|n| n.output.iter().cloned()))
        .collect();
    let mut drop = vec![false; g.node.len()];
    for mut f in folds {
        // the generated names must not shadow a tensor of the file
        while taken.contains(&f.weight.name) || taken.contains(&f.bias.name) {
            f.weight.name.push('_');
            f.bias.name.push('_');
        }
        let out = g.node[f.bn].output[0].clone();
        let conv = &mut g.node[f.conv];
        conv.input.resize(3, String::new());
        conv.input[1] = f.weight.name.clone();
        conv.input[2] = f.bias.name.clone();
        conv.output[0] = out;
        drop[f.bn] = true;
        g.initializer.push(f.weight);
        g.initializer.push(f.bias);
    }
    let folded = drop.iter().filter(|d| **d).count();
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        !drop[i - 1]
    });
    folded
}
