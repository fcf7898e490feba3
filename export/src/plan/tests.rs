//! The compiler on hand-built programs: plans against the kernels, and its errors.

use super::*;
use splitnas_host::kernels::int8::elementwise::requant;
use splitnas_host::kernels::int8::{conv, pool, quant, OutQ, Requant};
use splitnas_host::kernels::Geom;
use splitnas_runtime::int8::Dense;

fn dense(x: usize, y: usize, conv: Option<(Geom, usize)>, k: usize, m: usize) -> Op {
    let w: Vec<i8> = (0..m * k).map(|i| ((i * 37) % 19) as i8 - 9).collect();
    let out = Quant::new(0.05, 3);
    let acc = vec![0.02 * 0.01; m];
    Op::Dense(Box::new(Dense {
        x,
        y,
        zx: -2,
        conv,
        k,
        w,
        bias: Some((0..m as i32).map(|i| 40 * i - 50).collect()),
        requant: acc.iter().map(|&a| Requant::new(a / 0.05)).collect(),
        acc_scale: acc,
        out,
        relu: false,
    }))
}

/// Quantize -> 3x3 conv 2->4 -> ReLU -> global mean -> dense 4->3.
fn program() -> Program {
    let g = Geom::square(2, [8, 8], 3, 1, 1, 1);
    let (q0, q1) = (Quant::new(0.02, -2), Quant::new(0.05, 3));
    Program {
        ops: vec![
            Op::Quantize { y: 0, q: q0 },
            dense(0, 1, Some((g, 1)), 18, 4),
            Op::Requant {
                x: 1,
                y: 2,
                xq: q1,
                yq: q1,
                relu: true,
            },
            Op::GlobalAvg {
                x: 2,
                y: 3,
                hw: 64,
                q: [q1, Quant::new(0.02, -2)],
            },
            dense(3, 4, None, 4, 3),
        ],
        sizes: vec![128, 256, 256, 4, 3],
        input: 128,
        output: (4, q1),
        free: vec![vec![]; 5],
        names: ["x", "conv", "relu", "mean", "logits"]
            .map(String::from)
            .to_vec(),
    }
}

/// The plan's codes against the kernels called op after op as the int8 engine calls
/// them (its own buffers, the allocating packed paths).
#[test]
fn plan_runs_the_programs_ops() {
    let p = program();
    let c = compile(&p, [2, 8, 8], Budget::default()).unwrap();
    assert_eq!(c.macs, 256 * 18 + 3 * 4);
    assert_eq!((c.ops, c.flash_bytes), (4, c.bytes.len() as u64));
    assert!(c.lower_bound <= c.sram_peak && (c.sram_peak as u64) < c.activations_sum);
    let x: Vec<f32> = (0..128)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut v: Vec<Vec<i8>> = p.sizes.iter().map(|&s| vec![0; s]).collect();
    quant::quantize(&x, &[0.02], &[-2], 1, &mut v[0]);
    let run = |op: &Op, v: &mut Vec<Vec<i8>>| match op {
        Op::Dense(d) => {
            let f = conv::Filter {
                wt: &d.w,
                bias: d.bias.as_deref(),
                requant: &d.requant,
                groups: 1,
            };
            let mut y = vec![0; p.sizes[d.y]];
            match &d.conv {
                Some((g, _)) => conv::conv(&v[d.x], d.zx, 1, g, f, OutQ::new(3), &mut y),
                None => conv::gemm(&v[d.x], d.zx, [1, d.k], f, OutQ::new(3), &mut y),
            }
            v[d.y] = y;
        }
        _ => unreachable!(),
    };
    run(&p.ops[1], &mut v);
    let mut r = vec![0; 256];
    requant(
        &v[1],
        Quant::new(0.05, 3),
        Quant::new(0.05, 3),
        true,
        &mut r,
    );
    let mut m = vec![0; 4];
    pool::global_avg(
        &r,
        [1, 4, 64],
        [Quant::new(0.05, 3), Quant::new(0.02, -2)],
        &mut m,
    );
    v[3] = m;
    run(&p.ops[4], &mut v);
    let plan = Plan::parse(&c.bytes).unwrap();
    let mut arena = vec![0; plan.arena_len()];
    let mut y = [0i8; 3];
    plan.run(&mut arena, &v[0], &mut y).unwrap();
    assert_eq!(y[..], v[4][..]);
    assert_eq!(plan.tensor(plan.input_id()).unwrap().dims, [2, 8, 8]);
}

#[test]
fn budgets_and_limits_name_the_tensor() {
    let p = program();
    let e = compile(
        &p,
        [2, 8, 8],
        Budget {
            sram: Some(100),
            flash: None,
        },
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("over the budget of 100 bytes"), "{msg}");
    // the busiest step: the convolution writing 256 bytes while reading 128
    assert!(msg.contains("'conv' [4, 8, 8] with 256 bytes"), "{msg}");
    let e = compile(
        &p,
        [2, 8, 8],
        Budget {
            sram: None,
            flash: Some(64),
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("op 1's (int8 conv k3 s1 g1, writing 'conv'), 88 bytes"),
        "{e}"
    );
    // 600 channels of 3x3: 5400 products per output channel, over MAX_K
    let mut p = program();
    let g = Geom::square(600, [2, 2], 3, 1, 1, 1);
    p.sizes[0] = 2400;
    p.ops[1] = dense(0, 1, Some((g, 1)), 5400, 4);
    p.sizes[1] = 16;
    let e = compile(&p, [600, 2, 2], Budget::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "op 1 (int8 conv k3 s1 g1, writing 'conv'): products per output channel is 5400"
        ),
        "{msg}"
    );
}

/// Two branches from the input, each a big value then a small one, added: the program
/// runs both big ops first (both big values alive together); the greedy orders finish
/// one branch before starting the other. Golden orders worked by hand from the module
/// doc's rules.
#[test]
fn greedy_orders_finish_a_branch_before_the_next() {
    let q = Quant::new(0.05, 3);
    let rq = |x, y| Op::Requant {
        x,
        y,
        xq: q,
        yq: q,
        relu: false,
    };
    let p = Program {
        ops: vec![
            Op::Quantize { y: 0, q },
            rq(0, 1), // a1: 1000 bytes
            rq(0, 2), // b1: 1000 bytes
            rq(1, 3), // a2: 10 bytes
            rq(2, 4), // b2: 10 bytes
            Op::Add {
                a: 3,
                b: 4,
                y: 5,
                q: [q; 3],
                relu: false,
            },
        ],
        sizes: vec![10, 1000, 1000, 10, 10, 10],
        input: 10,
        output: (5, q),
        free: vec![vec![]; 6],
        names: vec![String::new(); 6],
    };
    let c = order::candidates(&p);
    let names: Vec<_> = c.iter().map(|o| o.name).collect();
    assert_eq!(names, ["program", "min-growth", "min-alive"]);
    assert_eq!(c[0].ops, [0, 1, 2, 3, 4, 5]);
    // min-growth after the input: a1 and b1 both +1000, a1 first; then a2 (+10 - 1000)
    // beats b1 (+1000); then b1 (+1000 - 10, the input's last read), b2, the add
    assert_eq!(c[1].ops, [0, 1, 3, 2, 4, 5]);
    // min-alive: a1 (1010 alive), a2 (1020 beats b1's 2010), b1 (1020), b2, add
    assert_eq!(c[2].ops, [0, 1, 3, 2, 4, 5]);

    // a value written twice: only the program's order
    let mut p = p;
    p.ops[4] = rq(2, 3);
    assert_eq!(order::candidates(&p).len(), 1);
    // a value read before it is written: the same
    let mut p = program();
    p.ops.swap(2, 3);
    assert_eq!(order::candidates(&p).len(), 1);
    // a chain has one order: the program's is kept
    assert_eq!(
        compile(&program(), [2, 8, 8], Budget::default())
            .unwrap()
            .order,
        "program"
    );
}
