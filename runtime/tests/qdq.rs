//! QuantizeLinear / DequantizeLinear on the float path (every device): rounding and
//! saturation against hand values, constant folding of quantized weights, per-axis
//! quantization, and every bad-input case as an error naming the node and tensor.

mod common;
use common::{input, A, G};
use splitnas_runtime::{Model, RuntimeError};

type Flex = burn::backend::Flex;
type NdArray = burn::backend::NdArray;

/// The model on the float (fake-quantization) path: the int8 engine off.
fn float<B: burn::tensor::backend::Backend>(bytes: &[u8]) -> Result<Model<B>, RuntimeError> {
    splitnas_runtime::with_int8(false, || Model::from_bytes(bytes, &Default::default()))
}

/// `input [N, 1, 1, 8] -> Q(s, z) -> DQ -> Flatten -> [N, 8]`, the zero point int8,
/// uint8 or omitted.
fn q_dq(scale: f32, zero: Option<(i32, bool)>) -> Vec<u8> {
    let mut g = G::new(1, 1, 8);
    let s = g.scalar("s", scale);
    let mut ins = vec!["input".to_string(), s];
    match zero {
        Some((z, true)) => ins.push(g.int8s("z", &[], &[z as i8])),
        Some((z, false)) => ins.push(g.uint8s("z", &[], &[z as u8])),
        None => {}
    }
    let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
    let q = g.node("QuantizeLinear", &refs, "xq", vec![]);
    let mut dq_in = refs.clone();
    dq_in[0] = &q;
    let d = g.node("DequantizeLinear", &dq_in, "xd", vec![]);
    let y = g.node("Flatten", &[&d], "y", vec![]);
    g.finish(&y, 8, 13)
}

/// Q's rounding (half to even) and saturation, int8 and uint8, on flex and ndarray and
/// on both engines; golden codes by hand from the ONNX formula.
#[test]
fn quantize_rounds_half_to_even_and_saturates() {
    let x = [0.25f32, 0.75, -0.25, -0.75, 1.25, 100.0, -100.0, 0.74];
    // x / 0.5 = 0.5, 1.5, -0.5, -1.5, 2.5, 200, -200, 1.48
    let cases: [(Option<(i32, bool)>, [i32; 8]); 3] = [
        (Some((3, true)), [3, 5, 3, 1, 5, 127, -128, 4]),
        (Some((128, false)), [128, 130, 128, 126, 130, 255, 0, 129]),
        (None, [0, 2, 0, 0, 2, 200, 0, 1]),
    ];
    for (zero, codes) in cases {
        let bytes = q_dq(0.5, zero);
        let z = zero.map_or(0, |z| z.0);
        let want: Vec<f32> = codes.iter().map(|&q| (q - z) as f32 * 0.5).collect();
        for (engine, y) in [
            ("flex float", float::<Flex>(&bytes).unwrap().run_host(&x, 1)),
            ("ndarray", float::<NdArray>(&bytes).unwrap().run_host(&x, 1)),
            (
                "default",
                Model::<Flex>::from_bytes(&bytes, &Default::default())
                    .unwrap()
                    .run_host(&x, 1),
            ),
        ] {
            assert_eq!(y.unwrap(), want, "{engine}, zero point {zero:?}");
        }
    }
}

/// Per-axis QuantizeLinear on a run-time tensor (axis 1, two channels) against the
/// formula by hand.
#[test]
fn per_axis_quantize_of_a_run_time_tensor() {
    let mut g = G::new(2, 1, 2);
    let s = g.floats("s", &[2], &[0.5, 0.25]);
    let z = g.int8s("z", &[2], &[-1, 4]);
    let q = g.node(
        "QuantizeLinear",
        &["input", &s, &z],
        "xq",
        vec![("axis", A::I(1))],
    );
    let d = g.node(
        "DequantizeLinear",
        &[&q, &s, &z],
        "xd",
        vec![("axis", A::I(-3))],
    );
    let y = g.node("Flatten", &[&d], "y", vec![]);
    let bytes = g.finish(&y, 4, 17);
    let x = [0.3f32, -0.8, 0.3, 40.0];
    // channel 0 (s 0.5, z -1): 0.6 -> 1 - 1 = 0 -> 0.5, -1.6 -> -2 - 1 = -3 -> -1.0;
    // channel 1 (s 0.25, z 4): 1.2 -> 1 + 4 = 5 -> 0.25, 160 -> 164 saturates to 127 -> 30.75
    let want = [0.5, -1.0, 0.25, 30.75];
    assert_eq!(
        float::<Flex>(&bytes).unwrap().run_host(&x, 1).unwrap(),
        want
    );
}

/// `DequantizeLinear(int8 weights)` and `(int32 bias)` fold into float constants: the
/// QDQ-weight model equals the float model holding `q s` and `b s_b` exactly.
#[test]
fn dequantized_weights_fold_to_the_float_model() {
    let build = |quantized: bool| {
        let mut g = G::new(3, 6, 6);
        let (w, b) = if quantized {
            let w = g.qweight("w", &[4, 3, 3, 3], 0, 0.01);
            let (b, _) = g.qbias("b", 0.1, &w.scale, 500.0);
            (w.name, b)
        } else {
            let mut q = G::new(3, 6, 6);
            let w = q.qweight("w", &[4, 3, 3, 3], 0, 0.01);
            let (_, bq) = q.qbias("b", 0.1, &w.scale, 500.0);
            let wf: Vec<f32> =
                w.q.iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 * w.scale[i / 27])
                    .collect();
            let bf: Vec<f32> = bq
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f32 * (0.1 * w.scale[i]))
                .collect();
            (g.floats("w", &[4, 3, 3, 3], &wf), g.floats("b", &[4], &bf))
        };
        let c = g.node("Conv", &["input", &w, &b], "c", vec![]);
        let y = g.node("Flatten", &[&c], "y", vec![]);
        g.finish(&y, 64, 13)
    };
    let x = input(2, 3, 6, 6);
    let a = float::<Flex>(&build(true))
        .unwrap()
        .run_host(&x, 2)
        .unwrap();
    let b = float::<Flex>(&build(false))
        .unwrap()
        .run_host(&x, 2)
        .unwrap();
    assert_eq!(a, b);
}

/// int8 / uint8 initializers in `int32_data` load like `raw_data` ones.
#[test]
fn int32_data_form_loads() {
    let mut g = G::new(1, 1, 8);
    let s = g.scalar("s", 0.5);
    let z = g.int32_data("z", &[], 2, &[130]);
    let q = g.node("QuantizeLinear", &["input", &s, &z], "xq", vec![]);
    let d = g.node("DequantizeLinear", &[&q, &s, &z], "xd", vec![]);
    let y = g.node("Flatten", &[&d], "y", vec![]);
    let bytes = g.finish(&y, 8, 13);
    let y = float::<Flex>(&bytes)
        .unwrap()
        .run_host(&[1.0; 8], 1)
        .unwrap();
    assert_eq!(y, [1.0; 8]);
}

/// A QDQ graph `input -> Q -> DQ -> Conv(DQ(W), DQ(b)) -> Q -> DQ -> Flatten` whose
/// pieces `edit` may break.
fn conv_graph(edit: impl FnOnce(&mut G)) -> Result<Model<Flex>, RuntimeError> {
    let mut g = G::new(2, 4, 4);
    let x = g.qdq("input", 0.05, -3);
    let w = g.qweight("w", &[3, 2, 3, 3], 0, 0.02);
    let (b, _) = g.qbias("b", 0.05, &w.scale, 100.0);
    let c = g.node(
        "Conv",
        &[&x, &w.name, &b],
        "c",
        vec![("pads", A::Is(vec![1; 4]))],
    );
    let c = g.qdq(&c, 0.1, 5);
    let y = g.node("Flatten", &[&c], "y", vec![]);
    edit(&mut g);
    float::<Flex>(&g.finish(&y, 48, 13))
}

/// Replaces initializer `name` (its values and type) in `g`.
fn set_init(g: &mut G, name: &str, f: impl FnOnce(&mut onnx_protobuf::TensorProto)) {
    let t = g.g.initializer.iter_mut().find(|t| t.name == name).unwrap();
    f(t)
}

fn err(r: Result<Model<Flex>, RuntimeError>) -> String {
    r.map(|_| ()).expect_err("the file loaded").to_string()
}

/// Every bad QDQ file is an error naming the node and tensor at fault.
#[test]
fn bad_qdq_files_are_errors_naming_node_and_tensor() {
    assert!(conv_graph(|_| {}).is_ok());
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let cases: Vec<(Box<dyn FnOnce(&mut G)>, &[&str])> = vec![
        (
            Box::new(|g| set_init(g, "inputs", |t| t.raw_data = f32s(&[0.0]))),
            &[
                "QuantizeLinear_inputq",
                "scale 'inputs' holds 0",
                "positive",
            ],
        ),
        (
            Box::new(|g| set_init(g, "cs", |t| t.raw_data = f32s(&[-0.1]))),
            &["QuantizeLinear_cq", "scale 'cs' holds -0.1"],
        ),
        (
            Box::new(|g| set_init(g, "ws", |t| t.raw_data = f32s(&[0.1, f32::NAN, 0.1]))),
            &["DequantizeLinear_w", "scale 'ws' holds NaN at index 1"],
        ),
        (
            Box::new(|g| {
                set_init(g, "ws", |t| {
                    t.dims = vec![2];
                    t.raw_data = f32s(&[0.1, 0.1]);
                })
            }),
            &[
                "DequantizeLinear_w",
                "scale 'ws' has 2 values, axis 0 of input 'wq' has 3",
            ],
        ),
        (
            Box::new(|g| {
                let n =
                    g.g.node
                        .iter_mut()
                        .find(|n| n.name == "DequantizeLinear_w")
                        .unwrap();
                n.attribute[0].i = 4;
            }),
            &[
                "DequantizeLinear_w",
                "axis 4 is out of range for input 'wq' of rank 4",
            ],
        ),
        (
            Box::new(|g| {
                set_init(g, "cz", |t| {
                    t.raw_data.clear();
                    t.int32_data = vec![200];
                })
            }),
            &["initializer 'cz'", "200 is out of the int8 range"],
        ),
        (
            Box::new(|g| {
                set_init(g, "cz", |t| {
                    t.data_type = 6;
                    t.raw_data = 5i32.to_le_bytes().to_vec();
                })
            }),
            &["QuantizeLinear_cq", "zero point 'cz' is int32"],
        ),
        (
            Box::new(|g| {
                set_init(g, "cz", |t| {
                    t.data_type = 1;
                    t.raw_data = f32s(&[5.0]);
                })
            }),
            &[
                "QuantizeLinear_cq",
                "zero point 'cz' must be an int8 or uint8",
            ],
        ),
        (
            Box::new(|g| {
                let z = g.int32s("bz", &[3], &[0, 1, 0]);
                let n =
                    g.g.node
                        .iter_mut()
                        .find(|n| n.name == "DequantizeLinear_b")
                        .unwrap();
                n.input.push(z);
            }),
            &[
                "DequantizeLinear_b",
                "zero point 'bz' of an int32 input must be 0",
            ],
        ),
        (
            Box::new(|g| {
                let z = g.uint8s("wz", &[3], &[0, 0, 0]);
                let n =
                    g.g.node
                        .iter_mut()
                        .find(|n| n.name == "DequantizeLinear_w")
                        .unwrap();
                n.input.push(z);
            }),
            &[
                "DequantizeLinear_w",
                "zero point 'wz' is uint8 but input 'wq' is int8",
            ],
        ),
        (
            Box::new(|g| {
                // the Conv reads the int8 codes instead of their DequantizeLinear
                let n = g.g.node.iter_mut().find(|n| n.op_type == "Conv").unwrap();
                n.input[0] = "inputq".into();
            }),
            &["Conv_c", "input 'inputq' is int8", "DequantizeLinear"],
        ),
        (
            Box::new(|g| {
                let n =
                    g.g.node
                        .iter_mut()
                        .find(|n| n.op_type == "Flatten")
                        .unwrap();
                n.input[0] = "cq".into();
            }),
            &["output 'y' is int8", "float32"],
        ),
        (
            Box::new(|g| {
                g.g.input[0]
                    .type_
                    .as_mut()
                    .unwrap()
                    .mut_tensor_type()
                    .elem_type = 3
            }),
            &[
                "input 'input' is int8",
                "must be float32",
                "inside the graph",
            ],
        ),
    ];
    for (i, (edit, want)) in cases.into_iter().enumerate() {
        let e = err(conv_graph(edit));
        for w in want {
            assert!(e.contains(w), "case {i}: '{e}' lacks '{w}'");
        }
    }
}
