//! The int8 engine on flex, one QDQ pattern per test: the engine's output equals a hand
//! computation (`common::hand`: the ONNX formulas on integer codes, with the kernel
//! crate's fixed-point `Requant` for the rounding of an accumulator), and
//! the float fake-quantization path (the engine off) within one quantization step of the
//! output (the two round the same real value differently only next to a tie).

mod common;
use common::hand::{self, codes, deq, q, requant, requant_acc, store, windows, Conv};
use common::{input, max_abs, A, G};
use splitnas_host::kernels::int8::Requant;
use splitnas_runtime::{with_int8, Model};

type Flex = burn::backend::Flex;

fn engine(bytes: &[u8]) -> Model<Flex> {
    let m = Model::from_bytes(bytes, &Default::default()).unwrap();
    assert_eq!(m.engine(), "int8", "{:?}", m.engine_note());
    m
}

fn float(bytes: &[u8]) -> Model<Flex> {
    let m = with_int8(false, || Model::from_bytes(bytes, &Default::default())).unwrap();
    assert_eq!(m.engine(), "float");
    m
}

/// Runs `n` images of `chw` through the engine: equal to `want`, and within one step of
/// the output scale `s` of the float path. Returns the engine's logits.
fn check(bytes: &[u8], chw: [usize; 3], n: usize, s: f32, want: &[f32]) -> Vec<f32> {
    let [c, h, w] = chw;
    let x = input(n, c, h, w);
    let y = engine(bytes).run_host(&x, n).unwrap();
    assert_eq!(y, want, "engine against the hand computation");
    let f = float(bytes).run_host(&x, n).unwrap();
    let d = max_abs(&y, &f);
    assert!(d <= s * 1.0001, "engine vs float path: {d} (step {s})");
    y
}

/// `t -> Flatten -> Q/DQ (same parameters)`: the graph output, `[N, K]`.
fn flatten_out(g: &mut G, t: &str, s: f32, z: i8) -> String {
    let f = g.node("Flatten", &[t], &format!("{t}f"), vec![]);
    g.qdq(&f, s, z)
}

const SX: (f32, i32) = (0.02, -5);
const SY: (f32, i32) = (0.05, 3);

/// Dense, strided, depthwise, grouped, pointwise and dilated convolutions with int32
/// biases, per-channel weights; the input saturates in places (|x| up to 1.5 / 0.01).
#[test]
fn convolutions_equal_hand_and_float() {
    let base = Conv {
        c: 4,
        h: 7,
        w: 6,
        m: 6,
        k: 3,
        s: 1,
        p: 1,
        d: 1,
        groups: 1,
    };
    let cases = [
        base,
        Conv { s: 2, ..base },
        Conv {
            m: 4,
            groups: 4,
            ..base
        },
        Conv { groups: 2, ..base },
        Conv { k: 1, p: 0, ..base },
        Conv { d: 2, p: 2, ..base },
    ];
    for (i, cv) in cases.into_iter().enumerate() {
        let (sx, zx) = (0.01, -5);
        let mut g = G::new(cv.c, cv.h, cv.w);
        let x = g.qdq("input", sx, zx as i8);
        let dims = [cv.m, cv.c / cv.groups, cv.k, cv.k].map(|d| d as i64);
        let wt = g.qweight("w", &dims, 0, 0.004);
        let (b, bq) = g.qbias("b", sx, &wt.scale, 3000.0);
        let attrs = vec![
            ("strides", A::Is(vec![cv.s as i64; 2])),
            ("pads", A::Is(vec![cv.p as i64; 4])),
            ("dilations", A::Is(vec![cv.d as i64; 2])),
            ("group", A::I(cv.groups as i64)),
        ];
        let y = g.node("Conv", &[&x, &wt.name, &b], "c", attrs);
        let y = g.qdq(&y, SY.0, SY.1 as i8);
        let y = flatten_out(&mut g, &y, SY.0, SY.1 as i8);
        let (oh, ow) = cv.out();
        let bytes = g.finish(&y, cv.m * oh * ow, 13);
        let xc = codes(&input(2, cv.c, cv.h, cv.w), sx, zx);
        let acc = cv.acc(&xc, zx, &wt.q, Some(&bq));
        let want = deq(&requant_acc(&acc, oh * ow, sx, &wt.scale, SY), SY.0, SY.1);
        eprintln!("case {i}: {cv:?}");
        check(&bytes, [cv.c, cv.h, cv.w], 2, SY.0, &want);
    }
}

/// uint8 activations (zero points 128 and 20) run as int8 codes moved by 128.
#[test]
fn uint8_activations() {
    let cv = Conv {
        c: 3,
        h: 5,
        w: 5,
        m: 4,
        k: 3,
        s: 1,
        p: 1,
        d: 1,
        groups: 1,
    };
    let mut g = G::new(3, 5, 5);
    let u8_qdq = |g: &mut G, t: &str, s: f32, z: u8| {
        let sn = g.scalar(&format!("{t}s"), s);
        let zn = g.uint8s(&format!("{t}z"), &[], &[z]);
        let q = g.node("QuantizeLinear", &[t, &sn, &zn], &format!("{t}q"), vec![]);
        g.node(
            "DequantizeLinear",
            &[&q, &sn, &zn],
            &format!("{t}d"),
            vec![],
        )
    };
    let x = u8_qdq(&mut g, "input", 0.02, 128);
    let wt = g.qweight("w", &[4, 3, 3, 3], 0, 0.004);
    let y = g.node(
        "Conv",
        &[&x, &wt.name],
        "c",
        vec![("pads", A::Is(vec![1; 4]))],
    );
    let y = u8_qdq(&mut g, &y, 0.03, 20);
    let f = g.node("Flatten", &[&y], "f", vec![]);
    let y = u8_qdq(&mut g, &f, 0.03, 20);
    let bytes = g.finish(&y, 100, 13);
    // the uint8 formulas: codes in [0, 255]
    let xc: Vec<i32> = input(2, 3, 5, 5)
        .iter()
        .map(|&v| ((v / 0.02).round_ties_even() as i32 + 128).clamp(0, 255))
        .collect();
    let acc = cv.acc(&xc, 128, &wt.q, None);
    let want: Vec<f32> = acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let r = Requant::from_scales(0.02, wt.scale[i / 25 % 4], 0.03).apply(a);
            ((r + 20).clamp(0, 255) - 20) as f32 * 0.03
        })
        .collect();
    check(&bytes, [3, 5, 5], 2, 0.03, &want);
}

/// A ReLU of its own scale is a requantization clamped at its zero point; one of the
/// convolution's own parameters fuses into the convolution (one op fewer, same codes).
#[test]
fn relu_requantizes_or_fuses() {
    let (sr, zr) = (0.01, -128);
    let mut g = G::new(2, 4, 4);
    let x = g.qdq("input", SX.0, SX.1 as i8);
    let r = g.node("Relu", &[&x], "r", vec![]);
    let r = g.qdq(&r, sr, zr as i8);
    let y = flatten_out(&mut g, &r, sr, zr as i8);
    let bytes = g.finish(&y, 32, 17);
    let xc = codes(&input(2, 2, 4, 4), SX.0, SX.1);
    let want = deq(&requant(&xc, SX, (sr, zr), true), sr, zr);
    check(&bytes, [2, 4, 4], 2, sr, &want);

    let cv = Conv {
        c: 2,
        h: 4,
        w: 4,
        m: 3,
        k: 3,
        s: 1,
        p: 1,
        d: 1,
        groups: 1,
    };
    let mut g = G::new(2, 4, 4);
    let x = g.qdq("input", SX.0, SX.1 as i8);
    let wt = g.qweight("w", &[3, 2, 3, 3], 0, 0.004);
    let c = g.node(
        "Conv",
        &[&x, &wt.name],
        "c",
        vec![("pads", A::Is(vec![1; 4]))],
    );
    let c = g.qdq(&c, SY.0, SY.1 as i8);
    let r = g.node("Relu", &[&c], "r", vec![]);
    let r = g.qdq(&r, SY.0, SY.1 as i8);
    let y = flatten_out(&mut g, &r, SY.0, SY.1 as i8);
    let bytes = g.finish(&y, 48, 17);
    let acc = cv.acc(&xc, SX.1, &wt.q, None);
    let relu: Vec<i32> = requant_acc(&acc, 16, SX.0, &wt.scale, SY)
        .iter()
        .map(|&v| v.max(SY.1))
        .collect();
    check(&bytes, [2, 4, 4], 2, SY.0, &deq(&relu, SY.0, SY.1));
    // Quantize, Conv with the ReLU (Flatten and its Q/DQ alias the buffer)
    assert_eq!(engine(&bytes).steps(), 2);
}

/// MaxPool keeps the codes; AveragePool (count_include_pad 0 and 1, same and other
/// output scale) and GlobalAveragePool divide the sum of `q - zx` as the kernels'
/// references do.
#[test]
fn pools() {
    let (c, h, w) = (3, 7, 6);
    let xc = codes(&input(2, c, h, w), SX.0, SX.1);
    let sum = |t: &[i32]| t.iter().map(|v| v - SX.1).sum::<i32>();
    let pool = |op: &str, attrs: Vec<(&str, A)>, yq: (f32, i32), k: usize| {
        let mut g = G::new(c, h, w);
        let x = g.qdq("input", SX.0, SX.1 as i8);
        let y = g.node(op, &[&x], "p", attrs);
        let y = g.qdq(&y, yq.0, yq.1 as i8);
        let y = flatten_out(&mut g, &y, yq.0, yq.1 as i8);
        g.finish(&y, k, 13)
    };
    let win = |k: i64, s: i64, p: i64| {
        vec![
            ("kernel_shape", A::Is(vec![k, k])),
            ("strides", A::Is(vec![s, s])),
            ("pads", A::Is(vec![p; 4])),
        ]
    };
    let want = windows(&xc, [h, w], [3, 2, 1], |t, _| *t.iter().max().unwrap());
    check(
        &pool("MaxPool", win(3, 2, 1), SX, want.len() / 2),
        [c, h, w],
        2,
        SX.0,
        &deq(&want, SX.0, SX.1),
    );
    for (count_pad, yq) in [(0, SX), (1, SX), (0, SY), (1, SY)] {
        let mut attrs = win(3, 1, 1);
        attrs.push(("count_include_pad", A::I(count_pad)));
        let want = windows(&xc, [h, w], [3, 1, 1], |t, all| {
            let cnt = if count_pad == 1 { all } else { t.len() } as i32;
            let v = if yq == SX {
                hand::div_away(sum(t), cnt)
            } else {
                Requant::new(SX.0 as f64 / yq.0 as f64 / cnt as f64).apply(sum(t))
            };
            store(v, yq.1, false)
        });
        let bytes = pool("AveragePool", attrs, yq, want.len() / 2);
        check(&bytes, [c, h, w], 2, yq.0, &deq(&want, yq.0, yq.1));
    }
    let want: Vec<i32> = xc
        .chunks(h * w)
        .map(|p| {
            store(
                Requant::new(SX.0 as f64 / SY.0 as f64 / (h * w) as f64).apply(sum(p)),
                SY.1,
                false,
            )
        })
        .collect();
    check(
        &pool("GlobalAveragePool", vec![], SY, c),
        [c, h, w],
        2,
        SY.0,
        &deq(&want, SY.0, SY.1),
    );
}

/// `input -> Q/DQ -> Relu -> Q(sa)/DQ` and `input -> Q/DQ` (scale SX): two tensors of
/// one shape and different scales, and their codes.
fn two_branches(
    g: &mut G,
    chw: [usize; 3],
    sa: (f32, i32),
) -> (String, String, Vec<i32>, Vec<i32>) {
    let x = g.qdq("input", SX.0, SX.1 as i8);
    let r = g.node("Relu", &[&x], "r", vec![]);
    let r = g.qdq(&r, sa.0, sa.1 as i8);
    let [c, h, w] = chw;
    let xc = codes(&input(2, c, h, w), SX.0, SX.1);
    let rc = requant(&xc, SX, sa, true);
    (r, x, rc, xc)
}

/// Add of two scales into a third, and Concat of two scales (each part requantized, or
/// copied when its parameters are the output's): the ONNX formulas in f32.
#[test]
fn add_and_concat_of_different_scales() {
    let sa = (0.007, -128);
    let mut g = G::new(2, 3, 4);
    let (r, x, rc, xc) = two_branches(&mut g, [2, 3, 4], sa);
    let y = g.node("Add", &[&r, &x], "a", vec![]);
    let y = g.qdq(&y, SY.0, SY.1 as i8);
    let y = flatten_out(&mut g, &y, SY.0, SY.1 as i8);
    let bytes = g.finish(&y, 24, 13);
    // Q(DQ(a) + DQ(b)) in f32
    let want: Vec<i32> = rc
        .iter()
        .zip(&xc)
        .map(|(&a, &b)| {
            q(
                (a - sa.1) as f32 * sa.0 + (b - SX.1) as f32 * SX.0,
                SY.0,
                SY.1,
            )
        })
        .collect();
    check(&bytes, [2, 3, 4], 2, SY.0, &deq(&want, SY.0, SY.1));

    for yq in [SX, SY] {
        let mut g = G::new(2, 3, 4);
        let (r, x, rc, xc) = two_branches(&mut g, [2, 3, 4], sa);
        let y = g.node("Concat", &[&r, &x], "cat", vec![("axis", A::I(1))]);
        let y = g.qdq(&y, yq.0, yq.1 as i8);
        let y = flatten_out(&mut g, &y, yq.0, yq.1 as i8);
        let bytes = g.finish(&y, 48, 13);
        let (ra, xa) = (requant(&rc, sa, yq, false), requant(&xc, SX, yq, false));
        let want: Vec<i32> = (0..2)
            .flat_map(|i| [&ra[i * 24..][..24], &xa[i * 24..][..24]].concat())
            .collect();
        check(&bytes, [2, 3, 4], 2, yq.0, &deq(&want, yq.0, yq.1));
    }
}

/// Slice (steps, negative starts) and Pad (constant 0: the zero point) move codes.
#[test]
fn slice_and_pad_move_codes() {
    let (c, h, w) = (3, 5, 6);
    let xc = codes(&input(2, c, h, w), SX.0, SX.1);
    let mut g = G::new(c, h, w);
    let x = g.qdq("input", SX.0, SX.1 as i8);
    let st = g.ints("st", &[1, -4]);
    let en = g.ints("en", &[3, 100]);
    let ax = g.ints("ax", &[1, 3]);
    let sp = g.ints("sp", &[1, 2]);
    let y = g.node("Slice", &[&x, &st, &en, &ax, &sp], "s", vec![]);
    let y = g.qdq(&y, SX.0, SX.1 as i8);
    let y = flatten_out(&mut g, &y, SX.0, SX.1 as i8);
    let bytes = g.finish(&y, 2 * 5 * 2, 13);
    let mut want = vec![];
    for img in 0..2 {
        for ch in 1..3 {
            for r in 0..h {
                for col in [2, 4] {
                    want.push(xc[((img * c + ch) * h + r) * w + col]);
                }
            }
        }
    }
    check(&bytes, [c, h, w], 2, SX.0, &deq(&want, SX.0, SX.1));

    let mut g = G::new(c, h, w);
    let x = g.qdq("input", SX.0, SX.1 as i8);
    let pads = g.ints("pads", &[0, 0, 1, 2, 0, 0, 2, 1]);
    let y = g.node("Pad", &[&x, &pads], "p", vec![]);
    let y = g.qdq(&y, SX.0, SX.1 as i8);
    let y = flatten_out(&mut g, &y, SX.0, SX.1 as i8);
    let bytes = g.finish(&y, c * 8 * 9, 17);
    let mut want = vec![];
    for img in 0..2 {
        for ch in 0..c {
            for r in 0..8 {
                for col in 0..9 {
                    let (ir, ic) = (r as i64 - 1, col as i64 - 2);
                    let inside = ir >= 0 && ic >= 0 && ir < h as i64 && ic < w as i64;
                    want.push(if inside {
                        xc[((img * c + ch) * h + ir as usize) * w + ic as usize]
                    } else {
                        SX.1
                    });
                }
            }
        }
    }
    check(&bytes, [c, h, w], 2, SX.0, &deq(&want, SX.0, SX.1));
}

/// Gemm (transB 1, int32 bias) and MatMul (weights `[K, M]` per column) after Flatten.
#[test]
fn gemm_and_matmul() {
    let (c, h, w, m) = (2, 3, 3, 5);
    let k = c * h * w;
    let xc = codes(&input(2, c, h, w), SX.0, SX.1);
    for matmul in [false, true] {
        let mut g = G::new(c, h, w);
        let x = g.qdq("input", SX.0, SX.1 as i8);
        let f = flatten_out(&mut g, &x, SX.0, SX.1 as i8);
        let (y, wt, bias) = if matmul {
            let wt = g.qweight("w", &[k as i64, m as i64], 1, 0.01);
            (g.node("MatMul", &[&f, &wt.name], "y", vec![]), wt, None)
        } else {
            let wt = g.qweight("w", &[m as i64, k as i64], 0, 0.01);
            let (b, bq) = g.qbias("b", SX.0, &wt.scale, 2000.0);
            (
                g.node("Gemm", &[&f, &wt.name, &b], "y", vec![("transB", A::I(1))]),
                wt,
                Some(bq),
            )
        };
        let y = g.qdq(&y, SY.0, SY.1 as i8);
        let bytes = g.finish(&y, m, 13);
        // the weights as [M, K]
        let wmk: Vec<i8> = (0..m * k)
            .map(|i| {
                if matmul {
                    wt.q[(i % k) * m + i / k]
                } else {
                    wt.q[i]
                }
            })
            .collect();
        let fc = Conv {
            c: k,
            h: 1,
            w: 1,
            m,
            k: 1,
            s: 1,
            p: 0,
            d: 1,
            groups: 1,
        };
        let acc = fc.acc(&xc, SX.1, &wmk, bias.as_deref());
        let want = deq(&requant_acc(&acc, 1, SX.0, &wt.scale, SY), SY.0, SY.1);
        check(&bytes, [c, h, w], 2, SY.0, &want);
    }
}

/// BatchNormalization, Mul by a per-channel constant and Add of a scalar run between a
/// dequantization and a quantization in the float path's own f32 operations: the engine
/// equals the float path exactly, and the formula by hand.
#[test]
fn float_islands_equal_the_float_path() {
    let (c, h, w) = (3, 4, 4);
    let mut g = G::new(c, h, w);
    let x = g.qdq("input", SX.0, SX.1 as i8);
    let p: Vec<String> = ["g", "bb", "mu", "var"]
        .iter()
        .map(|n| g.weight(n, &[3], 0.4, 1.0))
        .collect();
    let y = g.node(
        "BatchNormalization",
        &[&x, &p[0], &p[1], &p[2], &p[3]],
        "bn",
        vec![],
    );
    let y = g.qdq(&y, SY.0, SY.1 as i8);
    let k = g.floats("k", &[3, 1, 1], &[0.5, -2.0, 1.5]);
    let y = g.node("Mul", &[&k, &y], "mul", vec![]);
    let y = g.qdq(&y, SY.0, SY.1 as i8);
    let one = g.scalar("one", 0.3);
    let y = g.node("Add", &[&y, &one], "add", vec![]);
    let y = g.qdq(&y, SY.0, SY.1 as i8);
    let y = flatten_out(&mut g, &y, SY.0, SY.1 as i8);
    let bytes = g.finish(&y, c * h * w, 13);
    let x = input(2, c, h, w);
    let e = engine(&bytes).run_host(&x, 2).unwrap();
    assert_eq!(e, float(&bytes).run_host(&x, 2).unwrap());
    assert_eq!(engine(&bytes).steps(), 4, "Quantize, BN, Mul, Add");
    // by hand: the unit-variance BN parameters are read back from the file's initializers
    let vals = |name: &str| -> Vec<f32> {
        let t = g_init(&bytes, name);
        t.chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (ga, be, mu, var) = (vals("g"), vals("bb"), vals("mu"), vals("var"));
    let xc = codes(&x, SX.0, SX.1);
    let want: Vec<f32> = xc
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / (h * w) % c;
            let sc = ga[ch] / (var[ch] + 1e-5).sqrt();
            let bn = q(
                (v - SX.1) as f32 * SX.0 * sc + (be[ch] - mu[ch] * sc),
                SY.0,
                SY.1,
            );
            let mul = q((bn - SY.1) as f32 * SY.0 * [0.5, -2.0, 1.5][ch], SY.0, SY.1);
            let add = q((mul - SY.1) as f32 * SY.0 + 0.3, SY.0, SY.1);
            (add - SY.1) as f32 * SY.0
        })
        .collect();
    assert_eq!(e, want);
}

/// An initializer's raw bytes from a model file.
fn g_init(bytes: &[u8], name: &str) -> Vec<u8> {
    use onnx_protobuf::Message;
    let m = onnx_protobuf::ModelProto::parse_from_bytes(bytes).unwrap();
    m.graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap()
        .raw_data
        .clone()
}
