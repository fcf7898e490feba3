//! Loading: the ONNX bytes checked and decoded, the opset, initializers and the one image
//! input read, every node handed to its builder in the registry ([`crate::ops`]), the
//! output checked to be logits, then the plan finished ([`crate::plan`]) and the
//! metadata kept.

use crate::error::RuntimeError;
use crate::exec::workers;
use crate::ops::{self, Ctx, Known, Node};
use crate::value::{from_proto, show, Dim};
use crate::{host, plan, Model, OPSETS};
use burn::tensor::backend::Backend;
use onnx_protobuf::{GraphProto, Message, ModelProto, ValueInfoProto};
use std::collections::HashMap;

fn opset_of(model: &ModelProto) -> Result<i64, RuntimeError> {
    let default = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| RuntimeError::Model("no default-domain opset_import".into()))?;
    if !OPSETS.contains(&default) {
        return Err(RuntimeError::Opset(default));
    }
    Ok(default)
}

/// Walks the top-level protobuf fields and checks that the last one ends exactly at the end
/// of the bytes. rust-protobuf 3.4 accepts a message whose last length-delimited field is
/// cut short (a truncated file), so truncation is caught here.
fn check_wire(bytes: &[u8]) -> Result<(), RuntimeError> {
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*i)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    let cut = || RuntimeError::Decode("the file ends inside a field (truncated)".into());
    let mut i = 0usize;
    while i < bytes.len() {
        let key = varint(&mut i).ok_or_else(cut)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut i).ok_or_else(cut)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut i).ok_or_else(cut)?).map_err(|_| cut())?,
            5 => 4,
            w => return Err(RuntimeError::Decode(format!("wire type {w} at byte {i}"))),
        };
        i = i.checked_add(skip).ok_or_else(cut)?;
    }
    if i != bytes.len() {
        return Err(cut());
    }
    Ok(())
}

/// Builds a [`Model`] from the bytes of an ONNX file (see [`Model::from_bytes`]).
pub(crate) fn from_bytes<B: Backend>(
    bytes: &[u8],
    device: &B::Device,
) -> Result<Model<B>, RuntimeError> {
    load(bytes, device, true).map(|(model, _)| model)
}

/// `(name, value id)` of every run-time value.
pub(crate) type Names = Vec<(String, usize)>;

/// Builds a [`Model`] and names every run-time value: `(name, value id)` for the graph
/// input and each node output that is a run-time value (aliases included), sorted by id
/// then name. `fuse`: fold ReLU -> Conv pairs (off for [`crate::observe`], which reports
/// every ReLU output).
pub(crate) fn load<B: Backend>(
    bytes: &[u8],
    device: &B::Device,
    fuse: bool,
) -> Result<(Model<B>, Names), RuntimeError> {
    check_wire(bytes)?;
    let model =
        ModelProto::parse_from_bytes(bytes).map_err(|e| RuntimeError::Decode(e.to_string()))?;
    let opset = opset_of(&model)?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| RuntimeError::Model("no graph".into()))?;
    let on_host = host::is_host::<B>();
    let mut cx = Ctx::<B> {
        device,
        opset,
        known: HashMap::new(),
        plan: vec![],
        next_id: 1,
        on_host,
        int_values: HashMap::new(),
    };
    for t in &graph.initializer {
        let c = from_proto(t)
            .map_err(|e| RuntimeError::Model(format!("initializer '{}': {e}", t.name)))?;
        cx.known.insert(t.name.clone(), Known::Const(c));
    }
    let (input, chw) = image_input(graph, &cx.known)?;
    let shape = vec![
        Dim::Batch,
        Dim::Fixed(chw[0]),
        Dim::Fixed(chw[1]),
        Dim::Fixed(chw[2]),
    ];
    cx.known.insert(input.name.clone(), Known::Value(0, shape));
    build_nodes(&mut cx, graph)?;
    let (output, classes_count) = logits_output(graph, &cx.known)?;
    if let Some(ty) = cx.int_values.get(&output) {
        return Err(RuntimeError::Model(format!(
            "output '{}' is {} (a QuantizeLinear output): logits must be float32 (end with a DequantizeLinear)",
            graph.output[0].name,
            ty.name()
        )));
    }
    let (int8, int8_note) = crate::int8::choose(&cx, graph, &input.name);
    if fuse {
        plan::fuse_relus(&mut cx.plan, output);
    }
    let mut names: Names = cx
        .known
        .iter()
        .filter_map(|(name, k)| match k {
            Known::Value(id, _) => Some((name.clone(), *id)),
            Known::Const(_) => None,
        })
        .collect();
    names.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    // Free each value after its last reader.
    plan::mark_last_uses(&mut cx.plan);
    let metadata = model
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let graph = workers::Graph::new(&cx.plan, cx.next_id);
    let model = Model {
        graph,
        values: cx.next_id,
        plan: cx.plan,
        output,
        input_name: input.name.clone(),
        input_shape: chw,
        classes_count,
        metadata,
        opset,
        device: device.clone(),
        on_host,
        int8,
        int8_note,
        pools: if on_host {
            workers::one_thread_pools()
        } else {
            None
        },
    };
    Ok((model, names))
}

/// The one real input (a graph input that is not an initializer) and its `[C, H, W]`:
/// float32, NCHW, C, H and W fixed.
fn image_input<'g>(
    graph: &'g GraphProto,
    known: &HashMap<String, Known>,
) -> Result<(&'g ValueInfoProto, [usize; 3]), RuntimeError> {
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !known.contains_key(&i.name))
        .collect();
    let [input] = inputs[..] else {
        return Err(RuntimeError::Model(format!(
            "{} graph inputs besides the initializers; exactly one image input is supported",
            inputs.len()
        )));
    };
    let tensor = input.type_.tensor_type();
    if tensor.elem_type != 1 {
        let ty = match tensor.elem_type {
            2 => "uint8".to_string(),
            3 => "int8".to_string(),
            t => format!("element type {t}"),
        };
        return Err(RuntimeError::Model(format!(
            "input '{}' is {ty}: the input must be float32 (1); a quantized model takes float \
             images and quantizes them inside the graph (QuantizeLinear)",
            input.name
        )));
    }
    let dims = &tensor.shape.dim;
    if dims.len() != 4 {
        return Err(RuntimeError::Model(format!(
            "input '{}' has rank {}, an NCHW image batch (rank 4) is expected",
            input.name,
            dims.len()
        )));
    }
    let mut chw = [0usize; 3];
    for (i, d) in dims.iter().enumerate().skip(1) {
        chw[i - 1] = usize::try_from(d.dim_value())
            .ok()
            .filter(|&v| v > 0 && v <= 1 << 16)
            .ok_or_else(|| {
                RuntimeError::Model(format!(
                    "input '{}' dimension {i} is not a fixed size (C, H and W must be)",
                    input.name
                ))
            })?;
    }
    Ok((input, chw))
}

/// Hands every node, in file order, to the builder the registry holds for its `op_type`
/// (default domain only).
fn build_nodes<B: Backend>(cx: &mut Ctx<'_, B>, graph: &GraphProto) -> Result<(), RuntimeError> {
    let registry = ops::registry::<B>();
    for proto in &graph.node {
        let node = Node { proto };
        let domain = proto.domain.as_str();
        let builder = if domain.is_empty() || domain == "ai.onnx" {
            registry.get(proto.op_type.as_str())
        } else {
            None
        };
        let builder = builder.ok_or_else(|| RuntimeError::UnknownOp {
            op: proto.op_type.clone(),
            node: node.name(),
            domain: if domain.is_empty() {
                String::new()
            } else {
                format!("{domain}.")
            },
            opset: cx.opset,
        })?;
        builder(cx, &node)?;
    }
    Ok(())
}

/// The first graph output: its value id and the number of classes, when it is a run-time
/// value of shape `[N, classes]` (or `[N, classes, 1, 1]`).
fn logits_output(
    graph: &GraphProto,
    known: &HashMap<String, Known>,
) -> Result<(usize, usize), RuntimeError> {
    let out = graph
        .output
        .first()
        .ok_or_else(|| RuntimeError::Model("no graph output".into()))?;
    let (output, out_shape) = match known.get(&out.name) {
        Some(Known::Value(v, s)) => (*v, s.clone()),
        Some(Known::Const(_)) => {
            return Err(RuntimeError::Model(format!(
                "output '{}' does not depend on the input",
                out.name
            )))
        }
        None => {
            return Err(RuntimeError::Model(format!(
                "output '{}' is not produced by any node",
                out.name
            )))
        }
    };
    let classes_count = match out_shape[..] {
        [Dim::Batch, Dim::Fixed(k)] => k,
        [Dim::Batch, Dim::Fixed(k), Dim::Fixed(1), Dim::Fixed(1)] => k,
        _ => {
            return Err(RuntimeError::Model(format!(
                "output '{}' has shape {}, logits [N, classes] are expected",
                out.name,
                show(&out_shape)
            )))
        }
    };
    Ok((output, classes_count))
}
