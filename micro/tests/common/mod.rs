//! What the plan tests share: a seeded generator, codes, quantizations, and a plan of
//! every op kind for the corruption tests.
#![allow(dead_code)]

use splitnas_kernels::int8::{Quant, Requant};
use splitnas_kernels::Geom;
use splitnas_micro::writer::{DenseSpec, PlanWriter};

/// xorshift64: a fixed sequence per seed (no dependency that would not build for the
/// boards).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

pub fn codes(rng: &mut Rng, len: usize) -> Vec<i8> {
    (0..len).map(|_| rng.next() as i8).collect()
}

pub fn q(scale: f32, zero: i8) -> Quant {
    Quant::new(scale, zero)
}

/// A plan with every op kind (conv, depthwise, max and average pool, requant, add,
/// concat, slice, pad, affine, global average, gemm), its input length and a valid
/// input.
pub fn every_op() -> (Vec<u8>, Vec<i8>) {
    let (w, input) = every_op_writer();
    (w.finish(), input)
}

/// [`every_op`]'s writer (offsets placed by hand), before `finish`.
pub fn every_op_writer() -> (PlanWriter, Vec<i8>) {
    let mut rng = Rng(99);
    let mut w = PlanWriter::new();
    let qa = q(0.05, -3);
    let tx = w.tensor(0, [2, 6, 6]); // 72
    let g = Geom::square(2, [6, 6], 3, 1, 1, 1);
    let wt = codes(&mut rng, 4 * 2 * 9);
    let rq: Vec<Requant> = (0..4)
        .map(|i| Requant::new(0.003 * (i + 1) as f64))
        .collect();
    let spec = DenseSpec {
        wt: &wt,
        bias: Some(&[10, -20, 30, -40]),
        requant: &rq,
        zx: -3,
        out_zero: 1,
        relu: true,
        groups: 1,
    };
    let ta = w.tensor(72, [4, 6, 6]); // 72..216
    w.conv(tx, ta, &g, spec);
    let gd = Geom::square(4, [6, 6], 3, 2, 1, 1);
    let dw = codes(&mut rng, 4 * 9);
    let spec = DenseSpec {
        wt: &dw,
        bias: None,
        requant: &rq[..1],
        zx: 1,
        out_zero: 0,
        relu: false,
        groups: 4,
    };
    let tb = w.tensor(0, [4, 3, 3]); // 0..36
    w.conv(ta, tb, &gd, spec);
    let gm = Geom::square(4, [6, 6], 2, 2, 0, 1);
    let tm = w.tensor(216, [4, 3, 3]); // 216..252
    w.max_pool(ta, tm, &gm);
    let tr = w.tensor(36, [4, 3, 3]); // 36..72
    w.requant(tm, tr, [q(0.04, 1), q(0.03, 0)], true);
    let ts = w.tensor(72, [4, 3, 3]); // 72..108 (ta is dead)
    w.add(tb, tr, ts, [q(0.02, 0), q(0.03, 0), q(0.05, 2)], false);
    let tc = w.tensor(108, [8, 3, 3]); // 108..180
    w.concat(&[(ts, q(0.05, 2)), (tb, q(0.02, 0))], tc, 1, q(0.05, 2));
    let ga = Geom::square(8, [3, 3], 3, 1, 1, 1);
    let tv = w.tensor(0, [8, 3, 3]); // 0..72 (tb, tr dead)
    w.avg_pool(tc, tv, &ga, false, [q(0.05, 2), q(0.04, -1)]);
    let tl = w.tensor(180, [4, 2, 3]); // 180..204
    w.slice(tv, tl, [8, 3, 3], [(0, 2, 4), (1, 1, 2), (0, 1, 3)]);
    let tp = w.tensor(72, [4, 3, 4]); // 72..120
    w.pad(tl, tp, [4, 2, 3], [(0, 0), (0, 1), (1, 0)], -1);
    let tf = w.tensor(0, [4, 3, 4]); // 0..48
    w.affine(
        tp,
        tf,
        [q(0.04, -1), q(0.05, 0)],
        12,
        &[1.0, 0.5, -2.0, 0.25],
        &[0.0, 0.1, 0.2, -0.1],
    );
    let tg = w.tensor(120, [4, 1, 1]);
    w.global_avg(tf, tg, 12, [q(0.05, 0), q(0.05, 0)]);
    let fw = codes(&mut rng, 3 * 4);
    let spec = DenseSpec {
        wt: &fw,
        bias: Some(&[1, 2, 3]),
        requant: &rq[..1],
        zx: 0,
        out_zero: 0,
        relu: false,
        groups: 1,
    };
    let ty = w.tensor(124, [3, 1, 1]);
    w.gemm(tg, ty, 4, spec);
    w.io(tx, qa, ty, q(0.1, 0));
    let input = codes(&mut rng, 72);
    (w, input)
}
