//! Bad files and bad inputs give typed errors, never a panic: truncations, random bytes,
//! thousands of mutated files, unknown operators and opsets, wrong input shapes.

mod common;
use common::{input, A, G};
use splitnas_runtime::{Model, RuntimeError};
use std::panic::{catch_unwind, AssertUnwindSafe};

type Flex = burn::backend::Flex;

fn load(bytes: &[u8]) -> Result<Model<Flex>, RuntimeError> {
    Model::from_bytes(bytes, &Default::default())
}

/// A small valid model: conv, BN, relu, pooling, slice, concat, head.
fn small(opset: i64) -> Vec<u8> {
    let mut g = G::new(2, 8, 8);
    let w = g.weight("w", &[4, 2, 3, 3], 0.5, 0.0);
    let x = g.node(
        "Conv",
        &["input", &w],
        "c",
        vec![("pads", A::Is(vec![1, 1, 1, 1]))],
    );
    let sc = g.weight("s", &[4], 0.2, 1.0);
    let b = g.weight("b", &[4], 0.2, 0.0);
    let m = g.weight("m", &[4], 0.2, 0.0);
    let v = g.weight("v", &[4], 0.2, 1.0);
    let x = g.node("BatchNormalization", &[&x, &sc, &b, &m, &v], "bn", vec![]);
    let x = g.node("Relu", &[&x], "r", vec![]);
    let p = g.node(
        "MaxPool",
        &[&x],
        "p",
        vec![
            ("kernel_shape", A::Is(vec![3, 3])),
            ("strides", A::Is(vec![2, 2])),
            ("pads", A::Is(vec![1, 1, 1, 1])),
        ],
    );
    let st = g.ints("st", &[1, 1]);
    let en = g.ints("en", &[100, 100]);
    let ax = g.ints("ax", &[2, 3]);
    let s = g.node("Slice", &[&x, &st, &en, &ax], "s", vec![]);
    let q = g.node(
        "AveragePool",
        &[&s],
        "q",
        vec![
            ("kernel_shape", A::Is(vec![3, 3])),
            ("strides", A::Is(vec![2, 2])),
            ("pads", A::Is(vec![1, 1, 1, 1])),
        ],
    );
    let c = g.node("Concat", &[&p, &q], "cat", vec![("axis", A::I(1))]);
    let gp = g.node("GlobalAveragePool", &[&c], "gap", vec![]);
    let f = g.node("Flatten", &[&gp], "flat", vec![]);
    let fw = g.weight("fw", &[3, 8], 0.5, 0.0);
    let fb = g.weight("fb", &[3], 0.5, 0.0);
    let y = g.node("Gemm", &[&f, &fw, &fb], "logits", vec![("transB", A::I(1))]);
    g.finish(&y, 3, opset)
}

#[test]
fn the_small_model_is_valid() {
    let m = load(&small(17)).unwrap();
    assert_eq!(m.input_shape(), [2, 8, 8]);
    let y = m.run_host(&input(2, 2, 8, 8), 2).unwrap();
    assert_eq!(y.len(), 6);
}

#[test]
fn truncated_files_and_random_bytes_are_errors() {
    let bytes = small(17);
    for len in (0..bytes.len()).step_by(7) {
        let r = catch_unwind(|| load(&bytes[..len]).map(|_| ()));
        let r = r.unwrap_or_else(|_| panic!("panic on a file truncated to {len} bytes"));
        assert!(
            r.is_err(),
            "a file truncated to {len} of {} bytes loaded",
            bytes.len()
        );
    }
    let mut seed = 42u64;
    for len in [1, 10, 100, 1000, 10000] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        let r = catch_unwind(|| load(&junk).map(|_| ())).expect("no panic on random bytes");
        assert!(r.is_err());
    }
    let e =
        Model::<Flex>::load("/nonexistent/model.onnx".as_ref(), &Default::default()).unwrap_err();
    assert!(matches!(e, RuntimeError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/model.onnx"));
}

/// Several thousand files with random byte edits: each either loads (and then runs or
/// fails cleanly) or gives an error; none panics.
#[test]
fn mutated_files_never_panic() {
    let base = small(17);
    let x = input(1, 2, 8, 8);
    let mut seed = 7u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut loaded, mut rejected) = (0, 0);
    for i in 0..3000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let pos = (next() % b.len() as u64) as usize;
            match next() % 4 {
                0 => b[pos] ^= 1 << (next() % 8),
                1 => b[pos] = next() as u8,
                2 => b.insert(pos, next() as u8),
                _ => {
                    b.remove(pos);
                }
            }
        }
        let r = catch_unwind(AssertUnwindSafe(|| match load(&b) {
            Ok(m) => {
                let [c, h, w] = m.input_shape();
                let input: Vec<f32> = (0..c * h * w).map(|k| x[k % x.len()]).collect();
                let _ = m.run_host(&input, 1);
                true
            }
            Err(_) => false,
        }));
        match r {
            Ok(true) => loaded += 1,
            Ok(false) => rejected += 1,
            Err(_) => {
                std::fs::write("/tmp/splitnas-mutant.onnx", &b).ok();
                panic!("mutant {i} panicked (kept in /tmp/splitnas-mutant.onnx)");
            }
        }
    }
    eprintln!("mutants: {loaded} loaded, {rejected} rejected");
    assert!(
        rejected > 100 && loaded > 10,
        "{loaded} loaded, {rejected} rejected"
    );
}

#[test]
fn unknown_op_and_opset_are_typed_errors() {
    let mut g = G::new(1, 4, 4);
    let y = g.node("Relu", &["input"], "r", vec![]);
    let y = g.node("Softplus", &[&y], "sp", vec![]);
    let bytes = g.finish(&y, 4, 17);
    match load(&bytes).unwrap_err() {
        RuntimeError::UnknownOp {
            op, node, opset, ..
        } => {
            assert_eq!(
                (op.as_str(), node.as_str(), opset),
                ("Softplus", "Softplus_sp", 17)
            );
        }
        e => panic!("{e}"),
    }
    for opset in [12, 19] {
        match load(&small(opset)).unwrap_err() {
            RuntimeError::Opset(v) => assert_eq!(v, opset),
            e => panic!("{e}"),
        }
    }
    for opset in 13..=18 {
        load(&small(opset)).unwrap();
    }
}

#[test]
fn wrong_input_shapes_are_typed_errors() {
    let m = load(&small(17)).unwrap();
    for (shape, n) in [([3usize, 8, 8], 1), ([2, 8, 9], 1), ([2, 16, 16], 2)] {
        let [c, h, w] = shape;
        let x = burn::tensor::Tensor::<Flex, 4>::zeros([n, c, h, w], &Default::default());
        match m.run(x).unwrap_err() {
            RuntimeError::InputShape {
                expected, found, ..
            } => {
                assert_eq!(expected, "[N, 2, 8, 8]");
                assert_eq!(found, vec![n, c, h, w]);
            }
            e => panic!("{e}"),
        }
    }
    let e = m.run_host(&[0.0; 5], 1).unwrap_err();
    assert!(e.to_string().contains("5 values"), "{e}");
}

#[test]
fn bad_nodes_name_the_node() {
    // Conv weight whose channels do not fit the input.
    let mut g = G::new(3, 8, 8);
    let w = g.weight("w", &[4, 2, 3, 3], 0.5, 0.0);
    let y = g.node("Conv", &["input", &w], "c", vec![]);
    let gp = g.node("GlobalAveragePool", &[&y], "g", vec![]);
    let f = g.node("Flatten", &[&gp], "f", vec![]);
    let e = load(&g.finish(&f, 4, 17)).unwrap_err().to_string();
    assert!(
        e.contains("Conv_c") && e.contains("3 input channels"),
        "{e}"
    );
    // An input that no node defines.
    let mut g = G::new(3, 8, 8);
    let y = g.node("Add", &["input", "ghost"], "a", vec![]);
    let e = load(&g.finish(&y, 4, 17)).unwrap_err().to_string();
    assert!(e.contains("Add_a") && e.contains("'ghost'"), "{e}");
    // A kernel larger than the padded input.
    let mut g = G::new(1, 2, 2);
    let y = g.node(
        "MaxPool",
        &["input"],
        "p",
        vec![("kernel_shape", A::Is(vec![5, 5]))],
    );
    let e = load(&g.finish(&y, 4, 17)).unwrap_err().to_string();
    assert!(e.contains("MaxPool_p") && e.contains("does not fit"), "{e}");
    // Zero kernels, strides and dilations.
    for (attr, v) in [
        ("kernel_shape", vec![0, 3]),
        ("strides", vec![0, 1]),
        ("dilations", vec![1, 0]),
    ] {
        let mut g = G::new(1, 8, 8);
        let mut attrs = vec![(attr, A::Is(v))];
        if attr != "kernel_shape" {
            attrs.push(("kernel_shape", A::Is(vec![3, 3])));
        }
        let y = g.node("MaxPool", &["input"], "p", attrs);
        let e = load(&g.finish(&y, 4, 17)).unwrap_err().to_string();
        assert!(
            e.contains("MaxPool_p") && e.contains(attr) && e.contains("zero"),
            "{e}"
        );
    }
}
