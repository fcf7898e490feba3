//! The int8 engine on whole graphs: a DARTS-like cell in QDQ form by hand (ReLU,
//! depthwise and pointwise convolutions, a residual Add, Concat, GlobalAveragePool, Gemm)
//! against the float fake-quantization path; the same logits on flex and ndarray, for
//! any batch split; an op the engine lacks falls back to the float path, correctly; the
//! CLI's engine line.

mod common;
use common::hand::{codes, q};
use common::{input, keep_for_ci_tol as keep_for_ci, max_abs, A, G};
use splitnas_runtime::{with_int8, AnyModel, DeviceKind, Model};

type Flex = burn::backend::Flex;
type NdArray = burn::backend::NdArray;

/// `stem 3x3 -> s0`; `ReLU -> depthwise 3x3 -> pointwise 1x1 -> + s0 -> a`;
/// `Concat(a, s0) -> GlobalAveragePool -> Flatten -> Gemm -> logits`, every activation
/// behind a Q/DQ pair of its own scale (int8, asymmetric), weights per channel, biases
/// int32.
fn cell() -> Vec<u8> {
    let mut g = G::new(3, 8, 8);
    let x = g.qdq("input", 0.0123, 2);
    let w = g.qweight("w0", &[8, 3, 3, 3], 0, 0.004);
    let (b, _) = g.qbias("b0", 0.0123, &w.scale, 2000.0);
    let pad1 = || vec![("pads", A::Is(vec![1; 4]))];
    let s0 = g.node("Conv", &[&x, &w.name, &b], "s0", pad1());
    let s0 = g.qdq(&s0, 0.0417, -7);
    let r = g.node("Relu", &[&s0], "r", vec![]);
    let r = g.qdq(&r, 0.0219, -128);
    let w = g.qweight("w1", &[8, 1, 3, 3], 0, 0.006);
    let (b, _) = g.qbias("b1", 0.0219, &w.scale, 500.0);
    let mut dw = pad1();
    dw.push(("group", A::I(8)));
    let d = g.node("Conv", &[&r, &w.name, &b], "dw", dw);
    let d = g.qdq(&d, 0.0311, 4);
    let w = g.qweight("w2", &[8, 8, 1, 1], 0, 0.005);
    let (b, _) = g.qbias("b2", 0.0311, &w.scale, 500.0);
    let p = g.node("Conv", &[&d, &w.name, &b], "pw", vec![]);
    let p = g.qdq(&p, 0.0257, -3);
    let a = g.node("Add", &[&p, &s0], "a", vec![]);
    let a = g.qdq(&a, 0.0493, 1);
    let c = g.node("Concat", &[&a, &s0], "cat", vec![("axis", A::I(1))]);
    let c = g.qdq(&c, 0.0531, 0);
    let gp = g.node("GlobalAveragePool", &[&c], "gap", vec![]);
    let gp = g.qdq(&gp, 0.0107, -20);
    let f = g.node("Flatten", &[&gp], "flat", vec![]);
    let f = g.qdq(&f, 0.0107, -20);
    let w = g.qweight("fc", &[10, 16], 0, 0.01);
    let (b, _) = g.qbias("fcb", 0.0107, &w.scale, 3000.0);
    let y = g.node(
        "Gemm",
        &[&f, &w.name, &b],
        "fc_out",
        vec![("transB", A::I(1))],
    );
    let y = g.qdq(&y, 0.0203, 0);
    // named `logits` for .ci/run's onnxruntime check
    let y = g.node("Identity", &[&y], "logits", vec![]);
    g.finish(&y, 10, 13)
}

fn argmax(r: &[f32]) -> usize {
    (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap()
}

/// Output step of the cell's logits.
const STEP: f32 = 0.0203;

/// The cell on the engine against the float path over 64 images: every requantization
/// of the engine (one rounding of a 64-bit product, `Requant`) gives the float path's
/// code but next to an exact tie or within `|x M| 2^-30` of one, so the logits agree
/// within one step (measured: all equal) and the classes too. The file and the engine's
/// logits are kept for `.ci/run`, which compares onnxruntime's within one step
/// (measured here: equal).
#[test]
fn darts_like_cell_runs_on_the_engine() {
    let bytes = cell();
    let n = 64;
    let x: Vec<f32> = input(n, 3, 8, 8)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i % 7) as f32 * 0.1))
        .collect();
    let m = Model::<Flex>::from_bytes(&bytes, &Default::default()).unwrap();
    assert_eq!(m.engine(), "int8", "{:?}", m.engine_note());
    let e = m.run_host(&x, n).unwrap();
    let f = with_int8(false, || {
        Model::<Flex>::from_bytes(&bytes, &Default::default())
    })
    .unwrap()
    .run_host(&x, n)
    .unwrap();
    let steps = max_abs(&e, &f) / STEP;
    let same = (0..n)
        .filter(|&i| argmax(&e[i * 10..][..10]) == argmax(&f[i * 10..][..10]))
        .count();
    eprintln!("max {steps} steps apart, {same}/{n} same class");
    assert!(steps <= 1.0001, "{steps} steps");
    assert!(same + 1 >= n, "{same}/{n} images of the same class");
    keep_for_ci(
        "int8_darts_like_cell",
        &bytes,
        &x,
        [n, 3, 8, 8],
        &e,
        STEP * 1.0001,
    );
}

/// Images are independent: any batch split over the threads, and ndarray, give flex's
/// logits of one image at a time.
#[test]
fn batches_and_backends_agree() {
    let bytes = cell();
    let x = input(7, 3, 8, 8);
    let m = Model::<Flex>::from_bytes(&bytes, &Default::default()).unwrap();
    let all = m.run_host(&x, 7).unwrap();
    let one: Vec<f32> = x
        .chunks(192)
        .flat_map(|xi| m.run_host(xi, 1).unwrap())
        .collect();
    assert_eq!(all, one);
    let nd = Model::<NdArray>::from_bytes(&bytes, &Default::default()).unwrap();
    assert_eq!(nd.engine(), "int8");
    assert_eq!(nd.run_host(&x, 7).unwrap(), all);
}

/// `Mul` of two run-time tensors has no int8 form: the model runs on the float path
/// (the note names the node) and gives the QDQ formula's codes.
#[test]
fn an_op_without_int8_form_falls_back() {
    let (s, z, sy, zy) = (0.02, -5, 0.01, -100);
    let mut g = G::new(2, 3, 3);
    let x = g.qdq("input", s, z as i8);
    let y = g.node("Mul", &[&x, &x], "sq", vec![]);
    let y = g.qdq(&y, sy, zy as i8);
    let f = g.node("Flatten", &[&y], "f", vec![]);
    let f = g.qdq(&f, sy, zy as i8);
    let bytes = g.finish(&f, 18, 13);
    let m = Model::<Flex>::from_bytes(&bytes, &Default::default()).unwrap();
    assert_eq!(m.engine(), "float");
    let note = m.engine_note().unwrap();
    assert!(note.contains("Mul_sq") && note.contains("Mul"), "{note}");
    let x = input(2, 2, 3, 3);
    let want: Vec<f32> = codes(&x, s, z)
        .iter()
        .map(|&c| {
            let d = (c - z) as f32 * s;
            (q(d * d, sy, zy) - zy) as f32 * sy
        })
        .collect();
    assert_eq!(m.run_host(&x, 2).unwrap(), want);
    let any = AnyModel::from_bytes(&bytes, DeviceKind::Cpu).unwrap();
    let line = any.engine_line().unwrap();
    assert!(
        line.starts_with("engine: float (node 'Mul_sq' (Mul)"),
        "{line}"
    );
    // the ndarray backend is a host backend too (Model directly: `AnyModel` has it only
    // with the runtime's `ndarray` feature)
    let nd = Model::<burn::backend::NdArray>::from_bytes(&cell(), &Default::default()).unwrap();
    assert_eq!(nd.engine(), "int8");
}

/// A thousand files with random byte edits of the cell: each loads (on either engine)
/// and runs, or gives an error; none panics.
#[test]
fn mutated_qdq_files_never_panic() {
    let base = cell();
    let x = input(2, 3, 8, 8);
    let mut seed = 11u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut int8, mut float, mut rejected) = (0, 0, 0);
    for i in 0..1000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 3 {
            let pos = (next() % b.len() as u64) as usize;
            match next() % 3 {
                0 => b[pos] ^= 1 << (next() % 8),
                1 => b[pos] = next() as u8,
                _ => {
                    b.remove(pos);
                }
            }
        }
        let r =
            std::panic::catch_unwind(
                || match Model::<Flex>::from_bytes(&b, &Default::default()) {
                    Ok(m) => {
                        let [c, h, w] = m.input_shape();
                        let input: Vec<f32> = (0..2 * c * h * w).map(|k| x[k % x.len()]).collect();
                        let _ = m.run_host(&input, 2);
                        Some(m.engine())
                    }
                    Err(_) => None,
                },
            );
        match r {
            Ok(Some("int8")) => int8 += 1,
            Ok(Some(_)) => float += 1,
            Ok(None) => rejected += 1,
            Err(_) => {
                std::fs::write("/tmp/splitnas-int8-mutant.onnx", &b).ok();
                panic!("mutant {i} panicked (kept in /tmp/splitnas-int8-mutant.onnx)");
            }
        }
    }
    eprintln!("mutants: {int8} on the int8 engine, {float} on the float path, {rejected} rejected");
    assert!(
        int8 > 50 && rejected > 50,
        "{int8} int8, {float} float, {rejected} rejected"
    );
}
