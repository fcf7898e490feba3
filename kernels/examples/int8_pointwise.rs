//! Micro-benchmark of the int8 pointwise (1x1) convolution: GMAC/s of
//! `splitnas_kernels::int8::conv::conv` on the path this CPU picks, for 36 -> 36 and
//! 144 -> 144 channels at 32x32 and 16x16, batch 1 and 32.
//!
//! `cargo run --release -p splitnas-kernels --example int8_pointwise`
//! (`RAYON_NUM_THREADS=1` for one core).

use std::time::Instant;

use splitnas_kernels::int8::conv::{conv, Filter};
use splitnas_kernels::int8::{OutQ, Requant};
use splitnas_kernels::Geom;

fn main() {
    println!("threads {}", rayon_threads());
    for (c, hw) in [(36, 32), (36, 16), (144, 32), (144, 16)] {
        for n in [1usize, 32] {
            let g = Geom::square(c, [hw, hw], 1, 1, 0, 1);
            let x: Vec<i8> = (0..n * c * hw * hw).map(|i| (i * 37 % 251) as i8).collect();
            let wt: Vec<i8> = (0..c * c).map(|i| (i * 91 % 253) as i8).collect();
            let bias: Vec<i32> = (0..c as i32).map(|i| i * 17 - 300).collect();
            let requant: Vec<Requant> = (0..c)
                .map(|i| Requant::new(1e-4 * (1.0 + i as f64 / 50.0)))
                .collect();
            let f = Filter {
                wt: &wt,
                bias: Some(&bias),
                requant: &requant,
                groups: 1,
            };
            let mut y = vec![0i8; n * c * hw * hw];
            let macs = (n * c * c * hw * hw) as f64;
            // enough repetitions for ~0.3 s
            let reps = ((3e8 / macs) as usize).max(3);
            conv(&x, 3, n, &g, f, OutQ::relu(-4), &mut y);
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    conv(&x, 3, n, &g, f, OutQ::relu(-4), &mut y);
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            let sum: i64 = y.iter().map(|&v| v as i64).sum();
            println!(
                "1x1 {c:>3}->{c:<3} {hw:>2}x{hw:<2} n {n:>2}: {:>8.1} us  {:>6.1} GMAC/s  (checksum {sum})",
                best * 1e6,
                macs / best / 1e9
            );
        }
    }
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
}
