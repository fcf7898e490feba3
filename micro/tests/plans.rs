//! Hand-built plans run by `micro` against the host kernels called directly (the
//! allocating, packed SIMD paths the int8 engine runs: equal with `==`), and one small
//! case against a hand integer computation.

mod common;

use common::{codes, every_op_writer, q, Rng};
use splitnas_kernels::int8::{conv, elementwise, pool, OutQ, Requant};
use splitnas_kernels::Geom;
use splitnas_micro::writer::{DenseSpec, PlanWriter};
use splitnas_micro::Plan;

fn run(bytes: &[u8], input: &[i8]) -> Vec<i8> {
    let plan = Plan::parse(bytes).expect("plan parses");
    let mut arena = vec![0x55i8; plan.arena_len()];
    let mut out = vec![0i8; plan.output_len()];
    plan.run(&mut arena, input, &mut out).expect("plan runs");
    out
}

/// conv 3x3 (ReLU fused) -> max pool 2x2 -> requant with ReLU -> global average -> gemm,
/// tensors reusing the arena (the input's bytes hold the pool's output).
#[test]
fn conv_relu_pool_gemm_equals_kernels() {
    let mut rng = Rng(7);
    let (c, m, classes) = (3usize, 4usize, 5usize);
    let g1 = Geom::square(c, [8, 8], 3, 1, 1, 1);
    let g2 = Geom::square(m, [8, 8], 2, 2, 0, 1);
    let x = codes(&mut rng, c * 64);
    let wt = codes(&mut rng, m * c * 9);
    let bias: Vec<i32> = (0..m as i32).map(|i| 100 * i - 150).collect();
    let rq: Vec<Requant> = (0..m)
        .map(|i| Requant::new(0.004 + 0.001 * i as f64))
        .collect();
    let (zx, z1) = (-3i8, -20i8);
    let (q1, q2, q3) = (q(0.05, z1), q(0.03, -128), q(0.02, 4));
    let fw = codes(&mut rng, classes * m);
    let frq = [Requant::new(0.013)];

    // the host kernels, one after the other
    let f = conv::Filter {
        wt: &wt,
        bias: Some(&bias),
        requant: &rq,
        groups: 1,
    };
    let mut a = vec![0i8; m * 64];
    conv::conv(&x, zx, 1, &g1, f, OutQ::relu(z1), &mut a);
    let mut p = vec![0i8; m * 16];
    pool::max(&a, 1, &g2, &mut p);
    let mut r = vec![0i8; m * 16];
    elementwise::requant(&p, q1, q2, true, &mut r);
    let mut gap = vec![0i8; m];
    pool::global_avg(&r, [1, m, 16], [q2, q3], &mut gap);
    let ff = conv::Filter {
        wt: &fw,
        bias: None,
        requant: &frq,
        groups: 1,
    };
    let mut want = vec![0i8; classes];
    conv::gemm(&gap, q3.zero, [1, m], ff, OutQ::new(9), &mut want);

    let mut w = PlanWriter::new();
    let tx = w.tensor(0, [3, 8, 8]); // 0..192
    let ta = w.tensor(192, [4, 8, 8]); // 192..448
    let tp = w.tensor(0, [4, 4, 4]); // 0..64: x is dead
    let tr = w.tensor(64, [4, 4, 4]); // 64..128
    let tg = w.tensor(192, [4, 1, 1]); // a is dead
    let ty = w.tensor(0, [5, 1, 1]); // p is dead
    let spec = DenseSpec {
        wt: &wt,
        bias: Some(&bias),
        requant: &rq,
        zx,
        out_zero: z1,
        relu: true,
        groups: 1,
    };
    w.conv(tx, ta, &g1, spec);
    w.max_pool(ta, tp, &g2);
    w.requant(tp, tr, [q1, q2], true);
    w.global_avg(tr, tg, 16, [q2, q3]);
    let spec = DenseSpec {
        wt: &fw,
        bias: None,
        requant: &frq,
        zx: q3.zero,
        out_zero: 9,
        relu: false,
        groups: 1,
    };
    w.gemm(tg, ty, m as u32, spec);
    w.io(tx, q(0.1, zx), ty, q(0.2, 9));
    let bytes = w.finish();
    assert_eq!(Plan::parse(&bytes).unwrap().arena_len(), 448);
    assert_eq!(run(&bytes, &x), want);
}

/// Depthwise (stride 2), grouped with channel multipliers (dilation 2), and average
/// pools with and without the padding counted, with and without a rescale.
#[test]
fn depthwise_grouped_avg_equal_kernels() {
    let mut rng = Rng(11);
    // (groups, m, k, s, p, d)
    for (groups, m, k, s, p, d) in [(6, 6, 3, 2, 1, 1), (3, 9, 3, 1, 2, 2), (2, 4, 5, 1, 2, 1)] {
        let c = 6;
        let g = Geom::square(c, [9, 11], k, s, p, d);
        let x = codes(&mut rng, c * g.plane_in());
        let wt = codes(&mut rng, m * c / groups * k * k);
        let bias: Vec<i32> = (0..m as i32).map(|i| 37 * i - 90).collect();
        let rq = [Requant::new(0.0031)];
        let with_bias = groups != 2;
        let f = conv::Filter {
            wt: &wt,
            bias: with_bias.then_some(&bias[..]),
            requant: &rq,
            groups,
        };
        let mut want = vec![0i8; m * g.plane_out()];
        conv::conv(&x, 5, 1, &g, f, OutQ::new(-7), &mut want);
        let mut w = PlanWriter::new();
        let tx = w.tensor(0, [c as u32, 9, 11]);
        let dims = [m as u32, g.oh as u32, g.ow as u32];
        let ty = w.tensor(c as u32 * 99, dims);
        let spec = DenseSpec {
            wt: &wt,
            bias: with_bias.then_some(&bias[..]),
            requant: &rq,
            zx: 5,
            out_zero: -7,
            relu: false,
            groups: groups as u32,
        };
        w.conv(tx, ty, &g, spec);
        w.io(tx, q(0.1, 5), ty, q(0.1, -7));
        assert_eq!(run(&w.finish(), &x), want, "groups {groups} m {m}");
    }
    for (k, s, p, count_pad, ys) in [
        (3, 1, 1, false, 0.02),
        (3, 2, 1, true, 0.031),
        (2, 2, 0, false, 0.02),
    ] {
        let g = Geom::square(4, [7, 6], k, s, p, 1);
        let x = codes(&mut rng, 4 * 42);
        let qs = [q(0.02, -4), q(ys, 3)];
        let mut want = vec![0i8; 4 * g.plane_out()];
        pool::avg(&x, 1, &g, count_pad, qs, &mut want);
        let mut w = PlanWriter::new();
        let tx = w.tensor(0, [4, 7, 6]);
        let ty = w.tensor(168, [4, g.oh as u32, g.ow as u32]);
        w.avg_pool(tx, ty, &g, count_pad, qs);
        w.io(tx, qs[0], ty, qs[1]);
        assert_eq!(run(&w.finish(), &x), want, "avg k {k} s {s} p {p}");
    }
}

/// Add, concat (three parts, one requantized), slice, pad and a per-channel affine.
#[test]
fn add_concat_slice_pad_affine_equal_kernels() {
    let mut rng = Rng(3);
    let x = codes(&mut rng, 2 * 12);
    let (qa, qb, qy) = (q(0.04, -2), q(0.05, 7), q(0.06, 0));
    // y1 = relu(x + x'), where x' = requant(x) to qb
    let mut xb = vec![0i8; 24];
    elementwise::requant(&x, qa, qb, false, &mut xb);
    let mut sum = vec![0i8; 24];
    elementwise::add(&x, &xb, [qa, qb, qy], true, &mut sum);
    // concat along channels of [2, 12] blocks: outer 1, parts x (qa), sum (qy), xb (qb)
    let mut cat = vec![0i8; 72];
    elementwise::concat(&[(&x, qa), (&sum, qy), (&xb, qb)], 1, qy, &mut cat);
    // as [6, 3, 4]: channels 1.. step 2, rows 0..3, columns 1..4
    let r = [(1, 2, 3), (0, 1, 3), (1, 1, 3)];
    let mut sl = vec![0i8; 27];
    elementwise::slice(&cat, [6, 3, 4], r, &mut sl);
    let mut pd = vec![0i8; 3 * 5 * 4];
    elementwise::pad(&sl, [3, 3, 3], [(0, 0), (1, 1), (0, 1)], -1, &mut pd);
    let (a, b) = ([0.5f32, -1.25, 2.0], [0.1f32, 0.0, -0.3]);
    let mut want = vec![0i8; 60];
    elementwise::affine(&pd, [qy, qa], 20, &a, &b, &mut want);

    let mut w = PlanWriter::new();
    let tx = w.tensor(0, [2, 12, 1]);
    let txb = w.tensor(24, [2, 12, 1]);
    let tsum = w.tensor(48, [2, 12, 1]);
    let tcat = w.tensor(72, [6, 3, 4]);
    let tsl = w.tensor(0, [3, 3, 3]);
    let tpd = w.tensor(144, [3, 5, 4]);
    let ty = w.tensor(0, [3, 5, 4]);
    w.requant(tx, txb, [qa, qb], false);
    w.add(tx, txb, tsum, [qa, qb, qy], true);
    w.concat(&[(tx, qa), (tsum, qy), (txb, qb)], tcat, 1, qy);
    w.slice(
        tcat,
        tsl,
        [6, 3, 4],
        r.map(|(s, t, c)| (s as u32, t as u32, c as u32)),
    );
    w.pad(tsl, tpd, [3, 3, 3], [(0, 0), (1, 1), (0, 1)], -1);
    w.affine(tpd, ty, [qy, qa], 20, &a, &b);
    w.io(tx, qa, ty, qa);
    assert_eq!(run(&w.finish(), &x), want);
}

/// By hand: a 1x1 convolution of one 2x2 plane (zero point 1) with weights 2 and -1 (two
/// output channels), bias 3 and -4, multiplier 0.5 (`Requant::new(0.5)` is exact:
/// `2^30 2^(0 - 31)`), output zero point -1:
/// channel 0: `((x - 1) 2 + 3) 0.5` rounded half up, `- 1`;
/// x = [1, 2, 5, -3]: (3, 5, 11, -5) / 2 = (1.5, 2.5, 5.5, -2.5) -> (2, 3, 6, -2) -> (1, 2, 5, -3);
/// channel 1: `((x - 1) (-1) - 4) 0.5`: (-4, -5, -8, 0) / 2 = (-2, -2.5, -4, 0) ->
/// (-2, -2, -4, 0) -> (-3, -3, -5, -1).
#[test]
fn hand_computed_conv() {
    let g = Geom::square(1, [2, 2], 1, 1, 0, 1);
    let mut w = PlanWriter::new();
    let tx = w.tensor(0, [1, 2, 2]);
    let ty = w.tensor(4, [2, 2, 2]);
    let rq = [Requant::new(0.5)];
    let spec = DenseSpec {
        wt: &[2, -1],
        bias: Some(&[3, -4]),
        requant: &rq,
        zx: 1,
        out_zero: -1,
        relu: false,
        groups: 1,
    };
    w.conv(tx, ty, &g, spec);
    w.io(tx, q(1.0, 1), ty, q(1.0, -1));
    let got = run(&w.finish(), &[1, 2, 5, -3]);
    assert_eq!(got, [1, 2, 5, -3, -3, -3, -5, -1]);
}

/// The every-op plan with offsets from the memory planner instead of by hand: it parses
/// (no tensors alive together share bytes), gives the same output, and its arena is
/// within 1.1x the lower bound for the order.
#[test]
fn planned_memory_runs_the_same() {
    let (w, input) = every_op_writer();
    let want = run(&w.finish(), &input);
    let mut planned = w.clone();
    let layout = planned.plan_memory(4, false);
    println!(
        "sram_peak_bytes={} lower_bound={} sum={} (by hand: 252)",
        layout.peak, layout.lower_bound, layout.sum
    );
    assert!(
        layout.peak as f64 <= 1.1 * layout.lower_bound as f64,
        "{layout:?}"
    );
    assert!(layout.peak <= 252);
    let bytes = planned.finish();
    assert_eq!(
        Plan::parse(&bytes).unwrap().arena_len(),
        layout.peak as usize
    );
    assert_eq!(run(&bytes, &input), want);
}

/// In place: relu over the conv's output, an add over one of its inputs (both die at
/// it); the planner puts them on shared bytes, parse accepts the hand-overs, and the outputs equal
/// the plan without in-place ops (and the kernels').
#[test]
fn in_place_relu_and_add_run_the_same() {
    let mut rng = Rng(21);
    let g = Geom::square(2, [5, 5], 3, 1, 1, 1);
    let x = codes(&mut rng, 50);
    let wt = codes(&mut rng, 2 * 2 * 9);
    let rq = [Requant::new(0.004)];
    let (qc, qr, qy) = (q(0.05, 3), q(0.04, -10), q(0.06, 1));
    let build = |in_place: bool| {
        let mut w = PlanWriter::new();
        let tx = w.tensor(0, [2, 5, 5]);
        let tc = w.tensor(0, [2, 5, 5]);
        let tr = w.tensor(0, [2, 5, 5]);
        let ty = w.tensor(0, [2, 5, 5]);
        let spec = DenseSpec {
            wt: &wt,
            bias: None,
            requant: &rq,
            zx: 0,
            out_zero: qc.zero,
            relu: false,
            groups: 1,
        };
        w.conv(tx, tc, &g, spec);
        w.requant(tc, tr, [qc, qr], true);
        w.add(tx, tr, ty, [q(0.1, 0), qr, qy], false);
        w.io(tx, q(0.1, 0), ty, qy);
        let layout = w.plan_memory(1, in_place);
        (w.finish(), layout)
    };
    let (plain, lp) = build(false);
    let (shared, ls) = build(true);
    println!(
        "without in place: peak {} bound {}; with: peak {} bound {}",
        lp.peak, lp.lower_bound, ls.peak, ls.lower_bound
    );
    assert_eq!((lp.peak, ls.peak), (150, 100));
    // r over c (relu in place), y over x (the add is x's last reader, its first input)
    let o = &ls.offsets;
    assert_eq!((o[1], o[3]), (o[2], o[0]), "{o:?}");
    let want = run(&plain, &x);
    assert_eq!(run(&shared, &x), want);
    let f = conv::Filter {
        wt: &wt,
        bias: None,
        requant: &rq,
        groups: 1,
    };
    let mut c = vec![0i8; 50];
    conv::conv(&x, 0, 1, &g, f, OutQ::new(qc.zero), &mut c);
    let mut r = vec![0i8; 50];
    elementwise::requant(&c, qc, qr, true, &mut r);
    let mut y = vec![0i8; 50];
    elementwise::add(&x, &r, [q(0.1, 0), qr, qy], false, &mut y);
    assert_eq!(want, y);
}
