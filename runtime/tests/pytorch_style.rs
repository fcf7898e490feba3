//! Graphs in the style of PyTorch's ONNX exporters (unfused BatchNormalization, shape
//! subgraphs, Slice in the input form, ReduceMean with axes as attribute (opset <= 17) or
//! input (18), Gemm / MatMul heads, Dropout and Identity) load, run, and match tract
//! within 1e-4 (max abs, logits). `.ci/run` compares the same files with onnxruntime.

mod common;
#[cfg(target_arch = "x86_64")]
use common::tract_logits;
use common::{input, keep_for_ci, max_abs, A, G};
use splitnas_runtime::Model;

type Flex = burn::backend::Flex;
type NdArray = burn::backend::NdArray;

/// Conv + BatchNormalization as the TorchScript exporter writes them in training-mode
/// export (no folding).
fn conv_bn(
    g: &mut G,
    x: &str,
    name: &str,
    c_in: i64,
    c_out: i64,
    k: i64,
    attrs: Vec<(&str, A)>,
    group: i64,
) -> String {
    let w = g.weight(
        &format!("{name}.weight"),
        &[c_out, c_in / group, k, k],
        0.4,
        0.0,
    );
    let mut attrs = attrs;
    attrs.push(("group", A::I(group)));
    attrs.push(("kernel_shape", A::Is(vec![k, k])));
    let y = g.node("Conv", &[x, &w], &format!("{name}.conv"), attrs);
    let scale = g.weight(&format!("{name}.bn.scale"), &[c_out], 0.3, 1.0);
    let bias = g.weight(&format!("{name}.bn.bias"), &[c_out], 0.3, 0.0);
    let mean = g.weight(&format!("{name}.bn.mean"), &[c_out], 0.2, 0.0);
    let var = g.weight(&format!("{name}.bn.var"), &[c_out], 0.3, 1.0);
    g.node(
        "BatchNormalization",
        &[&y, &scale, &bias, &mean, &var],
        &format!("{name}.bn"),
        vec![("epsilon", A::F(1e-5))],
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Head {
    /// opset 17: ReduceMean(axes attribute, keepdims 1), x.view(x.size(0), -1), Gemm transB.
    ReduceMeanViewGemm,
    /// opset 18: ReduceMean(axes input, keepdims 0), MatMul + Add.
    ReduceMeanMatMul,
    /// opset 13: GlobalAveragePool, Reshape [0, -1], Gemm (transB 0, C [1, K]), Dropout, Identity.
    GlobalPoolReshapeGemm,
}

fn network(head: Head, opset: i64) -> Vec<u8> {
    let mut g = G::new(3, 16, 16);
    // stem with a bias, as exported after folding
    let sw = g.weight("stem.weight", &[12, 3, 3, 3], 0.4, 0.0);
    let sb = g.weight("stem.bias", &[12], 0.2, 0.0);
    let s = g.node(
        "Conv",
        &["input", &sw, &sb],
        "stem",
        vec![
            ("pads", A::Is(vec![1, 1, 1, 1])),
            ("kernel_shape", A::Is(vec![3, 3])),
        ],
    );
    let r = g.node("Relu", &[&s], "pre.relu", vec![]);
    let p1 = conv_bn(&mut g, &r, "pre", 12, 8, 1, vec![], 1);
    // sep-conv-like edge
    let a = g.node("Relu", &[&p1], "a.relu", vec![]);
    let a = conv_bn(
        &mut g,
        &a,
        "a.dw",
        8,
        8,
        3,
        vec![("pads", A::Is(vec![1, 1, 1, 1]))],
        8,
    );
    let a = conv_bn(&mut g, &a, "a.pw", 8, 8, 1, vec![], 1);
    // dilated edge
    let b = g.node("Relu", &[&p1], "b.relu", vec![]);
    let b = conv_bn(
        &mut g,
        &b,
        "b.dw",
        8,
        8,
        3,
        vec![
            ("pads", A::Is(vec![2, 2, 2, 2])),
            ("dilations", A::Is(vec![2, 2])),
        ],
        8,
    );
    let n0 = g.node("Add", &[&a, &b], "node0", vec![]);
    let c = g.node(
        "MaxPool",
        &[&p1],
        "c",
        vec![
            ("kernel_shape", A::Is(vec![3, 3])),
            ("strides", A::Is(vec![1, 1])),
            ("pads", A::Is(vec![1, 1, 1, 1])),
        ],
    );
    let d = g.node(
        "AveragePool",
        &[&n0],
        "d",
        vec![
            ("kernel_shape", A::Is(vec![3, 3])),
            ("pads", A::Is(vec![1, 1, 1, 1])),
            ("count_include_pad", A::I(0)),
        ],
    );
    let n1 = g.node("Add", &[&c, &d], "node1", vec![]);
    let e = g.node(
        "AveragePool",
        &[&p1],
        "e",
        vec![
            ("kernel_shape", A::Is(vec![3, 3])),
            ("pads", A::Is(vec![1, 1, 1, 1])),
            ("count_include_pad", A::I(1)),
        ],
    );
    let half = g.floats("half", &[], &[0.5]);
    let e = g.node("Mul", &[&e, &half], "e.scaled", vec![]);
    let n1 = g.node("Add", &[&n1, &e], "node1b", vec![]);
    // FactorizedReduce: x[:, :, 1:, 1:] as Slice (input form)
    let fr = g.node("Relu", &[&n1], "fr.relu", vec![]);
    let w1 = g.weight("fr.w1", &[4, 8, 1, 1], 0.4, 0.0);
    let f1 = g.node(
        "Conv",
        &[&fr, &w1],
        "fr.c1",
        vec![("strides", A::Is(vec![2, 2]))],
    );
    let st = g.ints("fr.starts", &[1, 1]);
    let en = g.ints("fr.ends", &[i64::MAX, i64::MAX]);
    let ax = g.ints("fr.axes", &[2, 3]);
    let sh = g.node("Slice", &[&fr, &st, &en, &ax], "fr.shift", vec![]);
    let w2 = g.weight("fr.w2", &[4, 8, 1, 1], 0.4, 0.0);
    let f2 = g.node(
        "Conv",
        &[&sh, &w2],
        "fr.c2",
        vec![("strides", A::Is(vec![2, 2]))],
    );
    let f = g.node("Concat", &[&f1, &f2], "fr.cat", vec![("axis", A::I(1))]);
    // Pad + unpadded stride-2 max pool
    let pads = g.ints("pad.pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
    let pd = g.node(
        "Pad",
        &[&n1, &pads],
        "pad",
        vec![("mode", A::S("constant"))],
    );
    let mp = g.node(
        "MaxPool",
        &[&pd],
        "pad.pool",
        vec![
            ("kernel_shape", A::Is(vec![3, 3])),
            ("strides", A::Is(vec![2, 2])),
        ],
    );
    let r8 = g.node("Add", &[&f, &mp], "red", vec![]);
    // asymmetric conv padding
    let wa = g.weight("asym.w", &[8, 8, 2, 2], 0.3, 0.0);
    let r8 = g.node(
        "Conv",
        &[&r8, &wa],
        "asym",
        vec![("pads", A::Is(vec![0, 0, 1, 1]))],
    );
    // Slice with a negative start, an end beyond the size and step 2 on channels
    let s1 = g.ints("sl.starts", &[-8]);
    let e1 = g.ints("sl.ends", &[1000]);
    let a1 = g.ints("sl.axes", &[1]);
    let p1s = g.ints("sl.steps", &[2]);
    let sl = g.node("Slice", &[&r8, &s1, &e1, &a1, &p1s], "sl", vec![]);
    let cat = g.node("Concat", &[&r8, &sl], "cat", vec![("axis", A::I(-3))]);
    let out = match head {
        Head::ReduceMeanViewGemm => {
            let m = g.node(
                "ReduceMean",
                &[&cat],
                "gap",
                vec![("axes", A::Is(vec![2, 3])), ("keepdims", A::I(1))],
            );
            let shp = g.node("Shape", &[&m], "shape", vec![]);
            let zero = g.constant_ints("zero", &[0]);
            // a scalar index, as `x.size(0)` exports it
            g.g.node.last_mut().unwrap().attribute[0]
                .t
                .as_mut()
                .unwrap()
                .dims
                .clear();
            let n = g.node("Gather", &[&shp, &zero], "n", vec![("axis", A::I(0))]);
            let ax0 = g.ints("unsq.axes", &[0]);
            let n = g.node("Unsqueeze", &[&n, &ax0], "n1", vec![]);
            let minus = g.constant_ints("minus1", &[-1]);
            let target = g.node("Concat", &[&n, &minus], "target", vec![("axis", A::I(0))]);
            let flat = g.node("Reshape", &[&m, &target], "flat", vec![]);
            let w = g.weight("fc.weight", &[10, 12], 0.5, 0.0);
            let b = g.weight("fc.bias", &[10], 0.5, 0.0);
            g.node(
                "Gemm",
                &[&flat, &w, &b],
                "logits",
                vec![
                    ("transB", A::I(1)),
                    ("alpha", A::F(0.5)),
                    ("beta", A::F(2.0)),
                ],
            )
        }
        Head::ReduceMeanMatMul => {
            let axes = g.ints("rm.axes", &[-2, -1]);
            let m = g.node(
                "ReduceMean",
                &[&cat, &axes],
                "gap",
                vec![("keepdims", A::I(0))],
            );
            let w = g.weight("fc.weight", &[12, 10], 0.5, 0.0);
            let b = g.weight("fc.bias", &[10], 0.5, 0.0);
            let y = g.node("MatMul", &[&m, &w], "mm", vec![]);
            let y = g.node("Add", &[&y, &b], "mm.bias", vec![]);
            g.node("Flatten", &[&y], "logits", vec![("axis", A::I(1))])
        }
        Head::GlobalPoolReshapeGemm => {
            let m = g.node("GlobalAveragePool", &[&cat], "gap", vec![]);
            let shape = g.ints("view", &[0, -1]);
            let flat = g.node("Reshape", &[&m, &shape], "flat", vec![]);
            let w = g.weight("fc.weight", &[12, 10], 0.5, 0.0);
            let b = g.weight("fc.bias", &[1, 10], 0.5, 0.0);
            let y = g.node("Gemm", &[&flat, &w, &b], "fc", vec![]);
            let y = g.node("Dropout", &[&y], "drop", vec![]);
            g.node("Identity", &[&y], "logits", vec![])
        }
    };
    g.finish(&out, 10, opset)
}

fn check(head: Head, opset: i64, stem: &str) {
    let bytes = network(head, opset);
    // batch 5 runs image by image on the CPU workers, batch 3 and 1 on the graph workers
    let shape = [5, 3, 16, 16];
    let x = input(5, 3, 16, 16);
    #[cfg(target_arch = "x86_64")]
    let reference = tract_logits(&bytes, &x, shape);
    // ARM test runs (qemu) have no tract: the reference is the ndarray backend, and
    // scripts/arm-check.sh holds these files' ARM logits to x86_64's within 1e-5
    #[cfg(not(target_arch = "x86_64"))]
    let reference = Model::<NdArray>::from_bytes(&bytes, &Default::default())
        .unwrap()
        .run_host(&x, 5)
        .unwrap();
    let model = Model::<Flex>::load_bytes_for_test(&bytes);
    let ours = model.run_host(&x, 5).unwrap();
    let d = max_abs(&ours, &reference);
    eprintln!("{stem}: runtime (flex) vs tract {d:.2e}");
    assert!(d < 1e-4, "{stem}: {d}");
    let nd = Model::<NdArray>::from_bytes(&bytes, &Default::default()).unwrap();
    let d2 = max_abs(&nd.run_host(&x, 5).unwrap(), &reference);
    assert!(d2 < 1e-4, "{stem} ndarray: {d2}");
    // batch 3 gives the first three rows, batch 1 the first
    let three = model.run_host(&x[..3 * 3 * 16 * 16], 3).unwrap();
    assert!(max_abs(&three, &reference[..30]) < 1e-4);
    let one = model.run_host(&x[..3 * 16 * 16], 1).unwrap();
    assert!(max_abs(&one, &reference[..10]) < 1e-4);
    // host kernels off: Burn's generic ops, what CUDA and wgpu run (rounding only differs)
    let generic = splitnas_runtime::with_host_kernels(false, || {
        let m = Model::<Flex>::load_bytes_for_test(&bytes);
        (
            m.run_host(&x, 5).unwrap(),
            m.run_host(&x[..3 * 16 * 16], 1).unwrap(),
        )
    });
    let d3 = max_abs(&generic.0, &ours).max(max_abs(&generic.1, &ours[..10]));
    eprintln!("{stem}: host kernels off vs on {d3:.2e}");
    assert!(d3 < 1e-4, "{stem} host kernels off: {d3}");
    let spread = reference.iter().copied().fold(f32::MIN, f32::max)
        - reference.iter().copied().fold(f32::MAX, f32::min);
    assert!(spread > 1e-2, "{stem}: logits nearly constant");
    keep_for_ci(stem, &bytes, &x, shape, &ours);
}

trait LoadBytes {
    fn load_bytes_for_test(bytes: &[u8]) -> Self;
}

impl LoadBytes for Model<Flex> {
    fn load_bytes_for_test(bytes: &[u8]) -> Self {
        Model::from_bytes(bytes, &Default::default()).unwrap()
    }
}

#[test]
fn torchscript_style_opset17_with_shape_subgraph_matches_tract() {
    check(Head::ReduceMeanViewGemm, 17, "pytorch_style_opset17_view");
    // the shape subgraph is folded at load time: no run-time step for Shape/Gather/...
    let bytes = network(Head::ReduceMeanViewGemm, 17);
    let model = Model::<Flex>::load_bytes_for_test(&bytes);
    let proto =
        <onnx_protobuf::ModelProto as onnx_protobuf::Message>::parse_from_bytes(&bytes).unwrap();
    let folded = ["Shape", "Gather", "Unsqueeze", "Constant"];
    let shape_nodes = proto
        .graph
        .node
        .iter()
        .filter(|n| folded.contains(&n.op_type.as_str()) || n.name == "Concat_target")
        .count();
    assert_eq!(shape_nodes, 6);
    // a Relu whose only reader is a Conv runs inside that Conv (fused at load time)
    let nodes = &proto.graph.node;
    let fused = nodes
        .iter()
        .filter(|n| n.op_type == "Relu")
        .filter(|r| {
            let readers: Vec<_> = nodes
                .iter()
                .filter(|m| m.input.contains(&r.output[0]))
                .collect();
            readers.len() == 1 && readers[0].op_type == "Conv"
        })
        .count();
    assert!(fused > 0, "the test network has ReLU -> Conv pairs");
    // every other node is one step; the shape nodes are none
    assert_eq!(model.steps(), nodes.len() - shape_nodes - fused);
}

#[test]
fn dynamo_style_opset18_reduce_mean_axes_input_matches_tract() {
    check(Head::ReduceMeanMatMul, 18, "pytorch_style_opset18_matmul");
}

#[test]
fn opset13_global_pool_reshape_gemm_dropout_identity_matches_tract() {
    check(
        Head::GlobalPoolReshapeGemm,
        13,
        "pytorch_style_opset13_gemm",
    );
}
