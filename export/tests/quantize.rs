//! The quantizer on small float graphs built here: BatchNorm folding against tract on the
//! unfolded graph, the QDQ file's structure (the format the runtime reads), and its logits
//! in tract (an independent ONNX implementation with per-axis QuantizeLinear /
//! DequantizeLinear) against the float graph's logits in tract. Bad input: typed errors.

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    Message, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};
use splitnas_export::quantize::{
    fold_batch_norms, quantize, Method, QuantizeError, QuantizeOptions, Report,
};
use std::collections::{HashMap, HashSet};
use tract_onnx::prelude::*;

const C: usize = 2;
const SIDE: usize = 8;
const CLASSES: usize = 5;
const IMAGE: usize = C * SIDE * SIDE;

/// A small graph writer: xorshift weights, nodes named after their output.
struct G {
    g: GraphProto,
    seed: u64,
}

impl G {
    fn new() -> Self {
        let mut g = GraphProto {
            name: "test".into(),
            ..Default::default()
        };
        g.input.push(info(
            "input",
            &[None, Some(C as i64), Some(SIDE as i64), Some(SIDE as i64)],
        ));
        Self { g, seed: 7 }
    }

    fn rand(&mut self) -> f32 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn weight(&mut self, name: &str, dims: &[i64], scale: f32, offset: f32) -> String {
        let n: i64 = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rand() * scale + offset).collect();
        self.g.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn ints(&mut self, name: &str, v: &[i64]) -> String {
        self.g.initializer.push(TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: 7,
            int64_data: v.to_vec(),
            ..Default::default()
        });
        name.into()
    }

    fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: &[(&str, Vec<i64>)]) -> String {
        let attribute = attrs
            .iter()
            .map(|(k, v)| {
                let mut a = AttributeProto {
                    name: k.to_string(),
                    ..Default::default()
                };
                if *k == "pads" || k.ends_with("shape") || *k == "strides" {
                    a.type_ = EnumOrUnknown::new(AttributeType::INTS);
                    a.ints = v.clone();
                } else {
                    a.type_ = EnumOrUnknown::new(AttributeType::INT);
                    a.i = v[0];
                }
                a
            })
            .collect();
        self.g.node.push(NodeProto {
            op_type: op.into(),
            name: format!("{op}_{out}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute,
            ..Default::default()
        });
        out.into()
    }

    fn finish(mut self, opset: i64, metadata: &[(&str, &str)]) -> Vec<u8> {
        self.g
            .output
            .push(info("logits", &[None, Some(CLASSES as i64)]));
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                version: opset,
                ..Default::default()
            }],
            producer_name: "test".into(),
            graph: MessageField::some(self.g),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.to_string(),
                    value: v.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }
}

fn info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| {
            let mut x = tensor_shape_proto::Dimension::new();
            match d {
                Some(v) => x.set_dim_value(*v),
                None => x.set_dim_param("N".into()),
            }
            x
        })
        .collect();
    let mut t = TypeProto::new();
    t.set_tensor_type(type_proto::Tensor {
        elem_type: 1,
        shape: MessageField::some(TensorShapeProto {
            dim,
            ..Default::default()
        }),
        ..Default::default()
    });
    ValueInfoProto {
        name: name.into(),
        type_: MessageField::some(t),
        ..Default::default()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Head {
    /// GlobalAveragePool -> Flatten -> Gemm (transB = 1)
    Gemm,
    /// ReduceMean (keepdims 0) -> MatMul -> Add(bias)
    MatMul,
}

/// Conv -> BatchNormalization -> Relu, then a depthwise Conv (bias) beside a MaxPool,
/// Add, AveragePool beside Slice -> 1x1 Conv (stride 2), Concat, Identity, then the head.
fn float_model(head: Head) -> Vec<u8> {
    let mut g = G::new();
    let w = g.weight("stem.w", &[6, C as i64, 3, 3], 0.4, 0.0);
    let x = g.node("Conv", &["input", &w], "stem", &[("pads", vec![1; 4])]);
    let sc = g.weight("bn.scale", &[6], 0.3, 1.0);
    let b = g.weight("bn.b", &[6], 0.3, 0.1);
    let m = g.weight("bn.mean", &[6], 0.2, 0.0);
    let v = g.weight("bn.var", &[6], 0.3, 1.0);
    let x = g.node("BatchNormalization", &[&x, &sc, &b, &m, &v], "bn", &[]);
    let r = g.node("Relu", &[&x], "relu", &[]);
    let dw = g.weight("dw.w", &[6, 1, 3, 3], 0.5, 0.0);
    let db = g.weight("dw.b", &[6], 0.2, 0.0);
    let d = g.node(
        "Conv",
        &[&r, &dw, &db],
        "dw",
        &[("pads", vec![1; 4]), ("group", vec![6])],
    );
    let mp = g.node(
        "MaxPool",
        &[&r],
        "mp",
        &[("kernel_shape", vec![3, 3]), ("pads", vec![1; 4])],
    );
    let add = g.node("Add", &[&d, &mp], "add", &[]);
    let ap = g.node(
        "AveragePool",
        &[&add],
        "ap",
        &[
            ("kernel_shape", vec![3, 3]),
            ("strides", vec![2, 2]),
            ("pads", vec![1; 4]),
            ("count_include_pad", vec![0]),
        ],
    );
    let st = g.ints("st", &[1, 1]);
    let en = g.ints("en", &[i64::MAX, i64::MAX]);
    let ax = g.ints("ax", &[2, 3]);
    let sl = g.node("Slice", &[&add, &st, &en, &ax], "sl", &[]);
    let pw = g.weight("pw.w", &[4, 6, 1, 1], 0.5, 0.0);
    let pb = g.weight("pw.b", &[4], 0.2, 0.0);
    let p = g.node("Conv", &[&sl, &pw, &pb], "pw", &[("strides", vec![2, 2])]);
    let cat = g.node("Concat", &[&ap, &p], "cat", &[("axis", vec![1])]);
    let id = g.node("Identity", &[&cat], "id", &[]);
    match head {
        Head::Gemm => {
            let gap = g.node("GlobalAveragePool", &[&id], "gap", &[]);
            let f = g.node("Flatten", &[&gap], "flat", &[("axis", vec![1])]);
            let fw = g.weight("fc.w", &[CLASSES as i64, 10], 0.5, 0.0);
            let fb = g.weight("fc.b", &[CLASSES as i64], 0.3, 0.0);
            g.node("Gemm", &[&f, &fw, &fb], "logits", &[("transB", vec![1])]);
        }
        Head::MatMul => {
            let axes = g.ints("rm.axes", &[2, 3]);
            let gap = g.node("ReduceMean", &[&id, &axes], "gap", &[("keepdims", vec![0])]);
            let fw = g.weight("fc.w", &[10, CLASSES as i64], 0.5, 0.0);
            let fb = g.weight("fc.b", &[CLASSES as i64], 0.3, 0.0);
            let mm = g.node("MatMul", &[&gap, &fw], "mm", &[]);
            g.node("Add", &[&mm, &fb], "logits", &[]);
        }
    }
    let opset = if head == Head::Gemm { 17 } else { 18 };
    g.finish(
        opset,
        &[("dataset", "fashion-mnist"), ("mean", "[0.5, 0.5]")],
    )
}

/// `n` images with values in about [-1.5, 1.5] (a fixed pattern; `shift` varies it).
fn images(n: usize, shift: usize) -> Vec<f32> {
    (0..n * IMAGE)
        .map(|i| (((i + shift) * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
        .collect()
}

fn tract_logits(bytes: &[u8], x: &[f32], n: usize) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([n, C, SIDE, SIDE]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::Array4::from_shape_vec([n, C, SIDE, SIDE], x.to_vec())
        .unwrap()
        .into();
    let out = model.run(tvec!(input.into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn batch_norm_folding_matches_the_unfolded_graph_in_tract() {
    let bytes = float_model(Head::Gemm);
    let mut m = ModelProto::parse_from_bytes(&bytes).unwrap();
    let g = m.graph.as_mut().unwrap();
    let before = g.node.len();
    assert_eq!(fold_batch_norms(g), 1);
    assert_eq!(g.node.len(), before - 1);
    assert!(g.node.iter().all(|n| n.op_type != "BatchNormalization"));
    let folded = m.write_to_bytes().unwrap();
    let x = images(3, 0);
    let d = max_abs(&tract_logits(&bytes, &x, 3), &tract_logits(&folded, &x, 3));
    assert!(d < 1e-5, "{d}");
}

fn float_init(g: &GraphProto, name: &str) -> Vec<f32> {
    let t = g.initializer.iter().find(|t| t.name == name).unwrap();
    assert_eq!(t.data_type, 1, "{name} is float");
    t.raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Checks the QDQ file's structure against the format (see `rewrite`'s documentation);
/// returns the scale of the logits.
fn check_structure(bytes: &[u8], report: &Report, head: Head) -> f32 {
    let m = ModelProto::parse_from_bytes(bytes).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert!(m.opset_import[0].version >= 13);
    let meta: HashMap<_, _> = m
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(meta["dataset"], "fashion-mnist");
    assert_eq!(meta["mean"], "[0.5, 0.5]");
    let q: serde_json::Value = serde_json::from_str(meta["quantization"]).unwrap();
    assert_eq!(q["method"], report.method.name());
    assert_eq!(q["calibration_images"], report.calibration_images);
    assert_eq!(q["weights"], "int8 symmetric per-channel");
    assert_eq!(q["activations"], "int8 asymmetric per-tensor");
    assert!(g
        .node
        .iter()
        .all(|n| n.name.is_empty() && n.doc_string.is_empty()));
    assert!(g.value_info.is_empty());
    assert!(g.node.iter().all(|n| n.op_type != "BatchNormalization"));
    let inits: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let producer: HashMap<&str, &NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut readers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            readers.entry(i.as_str()).or_default().push(n);
        }
    }
    // the input: float, first node quantizes it
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, "input");
    assert_eq!(g.node[0].op_type, "QuantizeLinear");
    assert_eq!(g.node[0].input[0], "input");
    let scalar = |name: &str, data_type: i32| {
        let t = inits[name];
        assert!(t.dims.is_empty(), "{name} is a scalar");
        assert_eq!(t.data_type, data_type, "{name}");
    };
    let (mut pairs, mut sz) = (0, HashSet::new());
    for n in &g.node {
        match n.op_type.as_str() {
            "QuantizeLinear" => {
                // one pair: Q -> its DQ on the same initializers
                let r = &readers[n.output[0].as_str()];
                assert_eq!(r.len(), 1);
                assert_eq!(r[0].op_type, "DequantizeLinear");
                assert_eq!(r[0].input[1..], n.input[1..]);
                scalar(&n.input[1], 1);
                scalar(&n.input[2], 3);
                let s = float_init(g, &n.input[1])[0];
                assert!(s > 0.0 && s.is_finite());
                sz.insert(n.input[1].clone());
                pairs += 1;
                // what it quantizes is the graph input or a non-Q/DQ node's only use
                if n.input[0] != "input" {
                    let p = producer[n.input[0].as_str()];
                    assert!(!p.op_type.ends_with("QuantizeLinear"), "{}", p.op_type);
                    assert_eq!(readers[n.input[0].as_str()].len(), 1);
                }
            }
            "DequantizeLinear" => {}
            op => {
                // every input of a compute node: an initializer or a DQ output
                for i in n.input.iter().filter(|i| !i.is_empty()) {
                    assert!(
                        inits.contains_key(i.as_str())
                            || producer[i.as_str()].op_type == "DequantizeLinear",
                        "{op} reads {i}"
                    );
                }
                // its output goes to exactly one QuantizeLinear
                let r = &readers[n.output[0].as_str()];
                assert!(r.len() == 1 && r[0].op_type == "QuantizeLinear", "{op}");
                let shared = ["MaxPool", "Slice", "Flatten", "Identity", "Relu"];
                if shared.contains(&op) {
                    let x = producer[n.input[0].as_str()];
                    assert_eq!(r[0].input[1], x.input[1], "{op} shares its input's scale");
                }
            }
        }
    }
    assert_eq!(pairs, report.activations);
    assert_eq!(sz.len(), report.scales);
    // the output is the logits' DQ
    assert_eq!(g.output[0].name, "logits");
    assert_eq!(producer["logits"].op_type, "DequantizeLinear");
    // weights: int8 per output channel, each channel reaching +-127
    let weighted: Vec<&NodeProto> = g
        .node
        .iter()
        .filter(|n| ["Conv", "Gemm", "MatMul"].contains(&n.op_type.as_str()))
        .collect();
    assert_eq!(weighted.len(), 4);
    assert_eq!(report.weights, 4);
    for n in &weighted {
        let dq = producer[n.input[1].as_str()];
        assert_eq!(dq.op_type, "DequantizeLinear");
        assert_eq!(dq.input.len(), 2, "no zero point");
        let w = inits[dq.input[0].as_str()];
        assert_eq!(w.data_type, 3, "int8");
        let axis = dq
            .attribute
            .iter()
            .find(|a| a.name == "axis")
            .map_or(1, |a| a.i);
        let want_axis = if n.op_type == "MatMul" { 1 } else { 0 };
        assert_eq!(axis, want_axis, "{}", n.op_type);
        let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
        let scales = float_init(g, &dq.input[1]);
        assert_eq!(scales.len(), dims[axis as usize]);
        let inner: usize = dims[axis as usize + 1..].iter().product();
        let mut top = vec![0u8; scales.len()];
        for (i, &b) in w.raw_data.iter().enumerate() {
            let c = (i / inner) % scales.len();
            let v = (b as i8).unsigned_abs();
            assert!(v <= 127);
            top[c] = top[c].max(v);
        }
        assert!(top.iter().all(|&t| t == 127), "{top:?}");
        // bias: int32 on s_x * s_w
        if let Some(b) = n.input.get(2) {
            let dq_b = producer[b.as_str()];
            let bt = inits[dq_b.input[0].as_str()];
            assert_eq!(bt.data_type, 6, "int32");
            let x_dq = producer[n.input[0].as_str()];
            let s_x = float_init(g, &x_dq.input[1])[0];
            let s_b = float_init(g, &dq_b.input[1]);
            for (sb, sw) in s_b.iter().zip(&scales) {
                assert_eq!(*sb, s_x * sw);
            }
        }
    }
    // stem (from the folded BatchNorm), depthwise, pointwise, and Gemm's (MatMul's Add
    // keeps its float bias)
    let biases = if head == Head::Gemm { 4 } else { 3 };
    assert_eq!(report.biases, biases);
    let logits_q = producer["logits"];
    float_init(g, &logits_q.input[1])[0]
}

/// With `SPLITNAS_ONNX_CHECKS=DIR` the QDQ file is kept with its input and tract's logits
/// for `.ci/run` (onnx's full checker, onnxruntime within 2 steps of the logits' scale:
/// onnxruntime runs integer kernels where tract dequantizes, so a rounding may differ).
fn keep_for_ci(head: Head, method: Method, bytes: &[u8], x: &[f32], logits: &[f32], s: f32) {
    if let Ok(dir) = std::env::var("SPLITNAS_ONNX_CHECKS") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        let head = if head == Head::Gemm { "gemm" } else { "matmul" };
        let stem = format!("quantize_{head}_{}", method.name());
        std::fs::write(dir.join(format!("{stem}.onnx")), bytes).unwrap();
        let n = x.len() / IMAGE;
        let json = serde_json::json!({"input_shape": [n, C, SIDE, SIDE], "input": x,
            "logits": logits, "tolerance": 2.0 * s});
        std::fs::write(dir.join(format!("{stem}.json")), json.to_string()).unwrap();
    }
}

fn run(head: Head, method: Method) {
    let float = float_model(head);
    let cal = images(24, 0);
    let mut opts = QuantizeOptions::new(method);
    opts.batch = 10;
    opts.dataset = Some("fashion-mnist".into());
    opts.seed = Some(3);
    let (int8, report) = quantize(&float, &cal, 24, &opts).unwrap();
    assert_eq!(report.bytes, int8.len());
    assert_eq!(report.batchnorms_folded, 1);
    let s_logits = check_structure(&int8, &report, head);
    // the same input through the float graph and the QDQ graph in tract. Tolerance: 4
    // steps of the logits' scale (the logits' own rounding is half a step, the ~8
    // quantized tensors before them add their rounding and clipping; measured: 1.0 to
    // 1.7 steps for minmax and percentile, both heads)
    let x = images(6, 123);
    let (f, q) = (tract_logits(&float, &x, 6), tract_logits(&int8, &x, 6));
    keep_for_ci(head, method, &int8, &x, &q, s_logits);
    if method == Method::Entropy {
        // entropy cuts ranges by design: on 24 images the 240 pooled values of this
        // graph's 10 channels are too few for its histogram and it cuts them to a tenth
        // (docs/int8.md measures it on trained networks); only the file is checked here
        assert!(q.iter().all(|v| v.is_finite()));
        return;
    }
    let d = max_abs(&f, &q);
    eprintln!(
        "{}: max |int8 - float| = {d} (logits scale {s_logits})",
        method.name()
    );
    assert!(d <= 4.0 * s_logits, "{d} > 4 x {s_logits}");
    assert!(d > 0.0, "the QDQ graph quantizes something");
}

#[test]
fn qdq_file_is_well_formed_and_close_to_the_float_graph_in_tract() {
    for method in [Method::MinMax, Method::Percentile, Method::Entropy] {
        run(Head::Gemm, method);
    }
    run(Head::MatMul, Method::MinMax);
}

#[test]
fn the_same_inputs_give_the_same_file() {
    let float = float_model(Head::Gemm);
    let cal = images(8, 0);
    let opts = QuantizeOptions::new(Method::Entropy);
    let a = quantize(&float, &cal, 8, &opts).unwrap().0;
    let b = quantize(&float, &cal, 8, &opts).unwrap().0;
    assert_eq!(a, b);
    let c = quantize(&float, &images(8, 5), 8, &opts).unwrap().0;
    assert_ne!(a, c, "other images, other ranges");
}

#[test]
fn bad_input_is_a_typed_error() {
    let float = float_model(Head::Gemm);
    let opts = QuantizeOptions::new(Method::MinMax);
    let e = quantize(&float, &[], 0, &opts).unwrap_err();
    assert!(matches!(e, QuantizeError::NoCalibration), "{e}");
    let e = quantize(&float, &images(2, 0)[..IMAGE + 3], 2, &opts).unwrap_err();
    assert!(
        matches!(e, QuantizeError::CalibrationShape { images: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("2x8x8"), "{e}");
    let mut x = images(2, 0);
    x[IMAGE + 5] = f32::NAN;
    match quantize(&float, &x, 2, &opts).unwrap_err() {
        QuantizeError::NonFinite { tensor, value } => {
            assert_eq!(tensor, "input");
            assert!(value.is_nan());
        }
        e => panic!("{e}"),
    }
    let e = quantize(b"not onnx", &images(1, 0), 1, &opts).unwrap_err();
    assert!(matches!(e, QuantizeError::Load(_)), "{e}");
    // a file that is already QDQ
    let (int8, _) = quantize(&float, &images(2, 0), 2, &opts).unwrap();
    let e = quantize(&int8, &images(2, 0), 2, &opts).unwrap_err();
    assert!(matches!(e, QuantizeError::AlreadyQuantized { .. }), "{e}");
    // a weight that is not an initializer (a Constant node: the runtime takes it, the
    // quantizer does not)
    let mut m = ModelProto::parse_from_bytes(&float).unwrap();
    let g = m.graph.as_mut().unwrap();
    let i = g.initializer.iter().position(|t| t.name == "pw.w").unwrap();
    let t = g.initializer.remove(i);
    g.node.insert(
        0,
        NodeProto {
            op_type: "Constant".into(),
            output: vec!["pw.w".into()],
            attribute: vec![AttributeProto {
                name: "value".into(),
                type_: EnumOrUnknown::new(AttributeType::TENSOR),
                t: MessageField::some(t),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let e = quantize(&m.write_to_bytes().unwrap(), &images(2, 0), 2, &opts).unwrap_err();
    match &e {
        QuantizeError::Weight { node, problem } => {
            assert_eq!(node, "Conv_pw");
            assert!(
                problem.contains("'pw.w' is not an initializer"),
                "{problem}"
            );
        }
        e => panic!("{e}"),
    }
}
