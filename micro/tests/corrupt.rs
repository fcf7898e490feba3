//! Corrupt plans: truncated at every length, thousands of seeded random mutations (with
//! the checksum left stale, and recomputed so that the later checks see them), plans
//! whose tensors overlap or leave the arena, a short arena. `parse` and `run` must
//! return `Ok` or an error, never panic; the specific cases must name the error.

mod common;

use common::{every_op, q, Rng};
use splitnas_kernels::int8::Requant;
use splitnas_kernels::Geom;
use splitnas_micro::writer::{seal, DenseSpec, PlanWriter};
use splitnas_micro::{Plan, PlanError, RunError};

/// Parses `bytes` and, when that succeeds, runs the plan: the outcome as text (only
/// that nothing panicked matters to the callers, and that Ok plans run).
fn parse_and_run(bytes: &[u8], input: &[i8]) -> Result<(), String> {
    let plan = Plan::parse(bytes).map_err(|e| e.to_string())?;
    let mut arena = vec![0i8; plan.arena_len()];
    let mut out = vec![0i8; plan.output_len()];
    let mut x = input.to_vec();
    x.resize(plan.input_len(), 3);
    plan.run(&mut arena, &x, &mut out)
        .map_err(|e| e.to_string())
}

#[test]
fn the_every_op_plan_runs() {
    let (bytes, input) = every_op();
    let plan = Plan::parse(&bytes).expect("every-op plan parses");
    assert_eq!((plan.ops_len(), plan.arena_len()), (12, 252));
    parse_and_run(&bytes, &input).unwrap();
}

#[test]
fn truncation_at_every_length_is_an_error() {
    let (bytes, input) = every_op();
    for len in 0..bytes.len() {
        let got = Plan::parse(&bytes[..len]);
        assert!(
            matches!(got, Err(PlanError::Truncated { .. })),
            "{len}: {got:?}"
        );
        // the checksum recomputed and the length field rewritten: the sections no longer
        // add up (or, below the header, still truncated)
        let mut cut = bytes[..len].to_vec();
        if len >= 16 {
            cut[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            seal(&mut cut);
        }
        assert!(Plan::parse(&cut).is_err(), "{len} sealed");
        let _ = parse_and_run(&cut, &input);
    }
}

/// 1 to 4 bytes changed (random values, bit flips, small integers likely to pass the
/// first checks), 10,000 times with a stale checksum and 10,000 times resealed.
#[test]
fn random_mutations_never_panic() {
    let (bytes, input) = every_op();
    let mut rng = Rng(2024);
    let (mut checksum, mut ok, mut other) = (0, 0, 0);
    for round in 0..20_000 {
        let mut m = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len());
            m[at] = match rng.below(4) {
                0 => rng.next() as u8,
                1 => m[at] ^ (1 << rng.below(8)),
                2 => rng.below(5) as u8,
                _ => m[at].wrapping_add(1),
            };
        }
        let sealed = round % 2 == 1;
        if sealed {
            seal(&mut m);
        }
        match parse_and_run(&m, &input) {
            Ok(()) => ok += 1,
            Err(e) if e.contains("checksum") => checksum += 1,
            Err(_) => other += 1,
        }
    }
    println!("{ok} ran, {checksum} checksum errors, {other} other errors");
    // the stale-checksum half fails at the checksum (but for changes to the first 16
    // bytes, which it does not cover and which fail earlier, or undone changes)
    assert!(checksum > 9_000, "{checksum} checksum errors");
    // resealed, the later checks see the mutations: most are caught, some run
    assert!(other > 1_000 && ok > 100, "{ok} ran, {other} other errors");
}

/// Words of the op section replaced by random small or large values, resealed: the
/// op decoder and the shape checks see every kind of bad argument.
#[test]
fn random_op_words_never_panic() {
    let (bytes, input) = every_op();
    let plan = Plan::parse(&bytes).unwrap();
    let ops_at = 56 + 20 * plan.tensors_len();
    let ops_words = u32::from_le_bytes(bytes[44..48].try_into().unwrap()) as usize;
    let mut rng = Rng(7);
    for _ in 0..10_000 {
        let mut m = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let at = ops_at + 4 * rng.below(ops_words);
            let v: u32 = match rng.below(4) {
                0 => rng.next() as u32,
                1 => rng.below(40) as u32,
                2 => u32::MAX - rng.below(3) as u32,
                _ => 1 << rng.below(32),
            };
            m[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        seal(&mut m);
        let _ = parse_and_run(&m, &input);
    }
}

fn parse_err(bytes: &[u8]) -> Option<PlanError> {
    Plan::parse(bytes).err()
}

fn one_requant(offsets: [u32; 2], arena: Option<u32>) -> Vec<u8> {
    let mut w = PlanWriter::new();
    let x = w.tensor(offsets[0], [1, 4, 4]);
    let y = w.tensor(offsets[1], [1, 4, 4]);
    w.requant(x, y, [q(0.1, 0), q(0.2, 0)], false);
    w.io(x, q(0.1, 0), y, q(0.2, 0));
    if let Some(a) = arena {
        w.arena_len(a);
    }
    w.finish()
}

#[test]
fn tensors_outside_the_arena_or_overlapping_are_errors() {
    assert!(Plan::parse(&one_requant([0, 16], None)).is_ok());
    let got = parse_err(&one_requant([0, 16], Some(31)));
    assert_eq!(
        got.unwrap(),
        PlanError::OutsideArena {
            tensor: 1,
            offset: 16,
            len: 16,
            arena: 31
        }
    );
    let got = parse_err(&one_requant([0, u32::MAX - 3], Some(64)));
    assert!(matches!(
        got,
        Some(PlanError::OutsideArena { tensor: 1, .. })
    ));
    // the output over its input: not in place for this op
    let got = parse_err(&one_requant([0, 8], None));
    assert_eq!(
        got.unwrap(),
        PlanError::InPlace {
            op: 0,
            output: 1,
            input: 0
        }
    );
    // d written over a, which its op reads
    let mut w = PlanWriter::new();
    let a = w.tensor(0, [1, 1, 8]);
    let b = w.tensor(8, [1, 1, 8]);
    let c = w.tensor(16, [1, 1, 8]);
    let d = w.tensor(4, [1, 1, 8]); // over a and b while both are alive
    w.requant(a, b, [q(0.1, 0), q(0.1, 0)], false);
    w.requant(a, d, [q(0.1, 0), q(0.1, 0)], true);
    w.add(b, d, c, [q(0.1, 0); 3], false);
    w.io(a, q(0.1, 0), c, q(0.1, 0));
    let got = parse_err(&w.finish());
    assert!(
        matches!(
            got,
            Some(PlanError::InPlace {
                op: 1,
                output: 3,
                input: 0
            })
        ),
        "{got:?}"
    );
    let mut w = PlanWriter::new();
    let a = w.tensor(0, [1, 1, 8]);
    let b = w.tensor(8, [1, 1, 8]);
    let c = w.tensor(24, [1, 1, 8]);
    let d = w.tensor(12, [1, 1, 8]); // over b (alive until the add), not a
    let e = w.tensor(32, [1, 1, 8]);
    w.requant(a, b, [q(0.1, 0), q(0.1, 0)], false);
    w.requant(a, d, [q(0.1, 0), q(0.1, 0)], true);
    w.add(b, d, c, [q(0.1, 0); 3], false);
    w.requant(c, e, [q(0.1, 0), q(0.1, 0)], false);
    w.io(a, q(0.1, 0), e, q(0.1, 0));
    let got = parse_err(&w.finish());
    assert_eq!(got.unwrap(), PlanError::Overlap { a: 1, b: 3 });
}

#[test]
fn bad_ops_name_the_op() {
    // unknown code
    let mut w = PlanWriter::new();
    let x = w.tensor(0, [1, 1, 4]);
    w.op(77, &[0, 1]);
    w.io(x, q(0.1, 0), x, q(0.1, 0));
    assert_eq!(
        Plan::parse(&w.finish()).unwrap_err(),
        PlanError::UnknownOp { op: 0, code: 77 }
    );
    // a read before the write
    let mut w = PlanWriter::new();
    let (x, y, z) = (
        w.tensor(0, [1, 1, 4]),
        w.tensor(4, [1, 1, 4]),
        w.tensor(8, [1, 1, 4]),
    );
    w.requant(y, z, [q(0.1, 0), q(0.1, 0)], false);
    w.io(x, q(0.1, 0), z, q(0.1, 0));
    assert_eq!(
        Plan::parse(&w.finish()).unwrap_err(),
        PlanError::Unwritten { op: 0, tensor: 1 }
    );
    // a requantization shift out of range, a convolution too wide for the stack rows
    let g = Geom::square(1, [2, 600], 1, 1, 0, 1);
    for (rq, g, want) in [
        (
            Requant {
                multiplier: 1 << 30,
                shift: 31,
            },
            Geom::square(1, [2, 2], 1, 1, 0, 1),
            "Requant",
        ),
        (Requant::new(0.5), g, "Limit"),
    ] {
        let mut w = PlanWriter::new();
        let x = w.tensor(0, [1, g.h as u32, g.w as u32]);
        let y = w.tensor(4096, [1, g.oh as u32, g.ow as u32]);
        let spec = DenseSpec {
            wt: &[1],
            bias: None,
            requant: &[rq],
            zx: 0,
            out_zero: 0,
            relu: false,
            groups: 1,
        };
        w.conv(x, y, &g, spec);
        w.io(x, q(0.1, 0), y, q(0.1, 0));
        let got = format!("{:?}", Plan::parse(&w.finish()).unwrap_err());
        assert!(got.starts_with(want), "{got}");
    }
}

#[test]
fn short_arena_and_wrong_lengths_are_run_errors() {
    let (bytes, input) = every_op();
    let plan = Plan::parse(&bytes).unwrap();
    let mut out = vec![0i8; plan.output_len()];
    let mut arena = vec![0i8; plan.arena_len() - 1];
    assert_eq!(
        plan.run(&mut arena, &input, &mut out),
        Err(RunError::Arena {
            need: 252,
            len: 251
        })
    );
    let mut arena = vec![0i8; plan.arena_len() + 10];
    assert_eq!(
        plan.run(&mut arena, &input[1..], &mut out),
        Err(RunError::Input { need: 72, len: 71 })
    );
    assert_eq!(
        plan.run(&mut arena, &input, &mut out[1..]),
        Err(RunError::Output { need: 3, len: 2 })
    );
    // a larger arena gives the same output as an exact one
    let mut exact = vec![0i8; plan.arena_len()];
    let mut want = vec![0i8; 3];
    plan.run(&mut exact, &input, &mut want).unwrap();
    plan.run(&mut arena, &input, &mut out).unwrap();
    assert_eq!(out, want);
}

/// In place is allowed only where the input dies: an Add reading `a` after a Requant
/// wrote `b` over it is an overlap; the same with the Add reading `b` alone parses, and
/// resealed mutations of it never panic.
#[test]
fn in_place_only_over_dead_inputs() {
    let qs = [q(0.1, 0), q(0.2, 3)];
    let build = |read_a_again: bool| {
        let mut w = PlanWriter::new();
        let a = w.tensor(0, [1, 1, 8]);
        let b = w.tensor(0, [1, 1, 8]);
        let c = w.tensor(8, [1, 1, 8]);
        let d = w.tensor(16, [1, 1, 8]);
        w.requant(a, b, qs, true);
        w.requant(b, c, [qs[1], qs[0]], false);
        let x = if read_a_again { a } else { c };
        w.add(x, c, d, [qs[0]; 3], false);
        w.io(a, qs[0], d, qs[0]);
        w.finish()
    };
    assert_eq!(
        parse_err(&build(true)),
        Some(PlanError::Overlap { a: 0, b: 1 })
    );
    // b over a, a dead after the Requant: a hand-over
    assert!(Plan::parse(&build(false)).is_ok());
    let mut w = PlanWriter::new();
    let a = w.tensor(0, [1, 1, 8]);
    let b = w.tensor(0, [1, 1, 8]);
    let c = w.tensor(8, [1, 1, 8]);
    w.requant(a, b, qs, true);
    w.add(b, a, c, [qs[1], qs[0], qs[0]], false); // reads a after b replaced it
    w.io(a, qs[0], c, qs[0]);
    assert!(matches!(
        parse_err(&w.finish()),
        Some(PlanError::Overlap { a: 0, b: 1 })
    ));
    let mut w = PlanWriter::new();
    let a = w.tensor(0, [1, 1, 8]);
    let b = w.tensor(0, [1, 1, 8]);
    let c = w.tensor(8, [1, 1, 8]);
    let d = w.tensor(8, [1, 1, 8]);
    w.requant(a, b, qs, true);
    w.requant(b, c, [qs[1], qs[0]], false);
    w.add(c, b, d, [qs[0], qs[1], qs[0]], true); // d over c, in place
    w.io(a, qs[0], d, qs[0]);
    let bytes = w.finish();
    let input: Vec<i8> = (0..8i32).map(|v| (v * 30 - 100) as i8).collect();
    parse_and_run(&bytes, &input).unwrap();
    let mut rng = Rng(5);
    for _ in 0..5_000 {
        let mut m = bytes.clone();
        let at = 56 + rng.below(m.len() - 56);
        m[at] = rng.next() as u8;
        seal(&mut m);
        let _ = parse_and_run(&m, &input);
    }
}
