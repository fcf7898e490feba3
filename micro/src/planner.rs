//! The static memory plan (feature `alloc`): every activation an offset in one arena,
//! its bytes reused as soon as it is dead. A pure function of the tensors' sizes and
//! lifetimes over a chosen execution order ([`lifetimes`]), placed greedily with best
//! fit ([`place`], after TFLite Micro's `GreedyMemoryPlanner`): in a chosen order (the
//! largest tensor first, and two other orders; the best of the three kept), each at the
//! smallest gap between the tensors already placed that are alive at the same time, or
//! above them all.
//!
//! [`Layout`] reports the arena's peak beside the sum of all sizes (no reuse) and the
//! lower bound for the order: the most bytes alive at any one step, which no placement
//! of the same order can go under.

use alloc::vec;
use alloc::vec::Vec;

/// A tensor to place: its bytes and the steps it is alive, `first..=last` (written at
/// `first`, last read at `last`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Live {
    /// Bytes.
    pub size: u32,
    /// Step it is written (0: the plan's input).
    pub first: u32,
    /// Last step it is read.
    pub last: u32,
}

impl Live {
    /// Whether `self` and `o` are alive at a common step.
    pub fn meets(&self, o: &Live) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// A placement: one offset per tensor, and its figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Arena offset of each tensor (in the order given).
    pub offsets: Vec<u32>,
    /// Arena bytes used: the furthest tensor end.
    pub peak: u32,
    /// The most bytes alive at one step: no placement of this order uses less.
    pub lower_bound: u32,
    /// The sum of all sizes: the arena without reuse.
    pub sum: u64,
}

/// The lifetimes of `tensors` tensors under the ops in execution order, each op
/// `(inputs, output)`: op `i` runs at step `i + 1`, the plan's `input` is written at step
/// 0 and its `output` read after the last op. Tensors nothing writes get none.
pub fn lifetimes(
    tensors: usize,
    input: usize,
    output: usize,
    ops: &[(Vec<usize>, usize)],
) -> Vec<Option<(u32, u32)>> {
    let mut life: Vec<Option<(u32, u32)>> = vec![None; tensors];
    if let Some(l) = life.get_mut(input) {
        *l = Some((0, 0));
    }
    for (i, (xs, y)) in ops.iter().enumerate() {
        let step = i as u32 + 1;
        for &x in xs {
            if let Some(Some(l)) = life.get_mut(x) {
                l.1 = l.1.max(step);
            }
        }
        if let Some(l) = life.get_mut(*y) {
            *l = Some((step, step));
        }
    }
    if let Some(Some(l)) = life.get_mut(output) {
        l.1 = ops.len() as u32 + 1;
    }
    life
}

/// An order of placement: tensors sorted by this key, smallest first.
type SortKey = fn(&Live) -> (u64, u64);

/// Offsets for `tensors`, each a multiple of `align` (at least 1): best fit in three
/// orders (largest first, TFLite's; largest size x lifetime first; earliest written
/// first, largest first among equals), the lowest peak kept. Tensors alive at a common
/// step never share bytes.
pub fn place(tensors: &[Live], align: u32) -> Layout {
    let align = align.max(1);
    let keys: [SortKey; 3] = [
        |t| (u64::MAX - t.size as u64, t.first as u64),
        |t| {
            let span = (t.last - t.first + 1) as u64;
            (u64::MAX - t.size as u64 * span, t.first as u64)
        },
        |t| (t.first as u64, u64::MAX - t.size as u64),
    ];
    let mut best: Option<(u32, Vec<u32>)> = None;
    for key in keys {
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (key(&tensors[i]), i));
        let offsets = best_fit(tensors, &order, align);
        let peak = tensors
            .iter()
            .zip(&offsets)
            .map(|(t, &o)| o + t.size)
            .max()
            .unwrap_or(0);
        if best.as_ref().is_none_or(|b| peak < b.0) {
            best = Some((peak, offsets));
        }
    }
    let (peak, offsets) = best.unwrap_or_default();
    Layout {
        offsets,
        peak,
        lower_bound: lower_bound(tensors),
        sum: tensors.iter().map(|t| t.size as u64).sum(),
    }
}

/// The tensors placed in `order`, each at the smallest gap (best fit) among the placed
/// tensors alive with it, or above them all.
fn best_fit(tensors: &[Live], order: &[usize], align: u32) -> Vec<u32> {
    let mut offsets = vec![0u32; tensors.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(tensors.len());
    for &i in order {
        let t = tensors[i];
        // the placed tensors alive with `t`, by offset
        let mut busy: Vec<(u32, u32)> = placed
            .iter()
            .filter(|&&j| tensors[j].meets(&t) && tensors[j].size > 0)
            .map(|&j| (offsets[j], offsets[j] + tensors[j].size))
            .collect();
        busy.sort_unstable();
        let (mut best, mut best_gap, mut end) = (None, u32::MAX, 0u32);
        for &(start, stop) in &busy {
            let at = end.next_multiple_of(align);
            if start >= at && start - at >= t.size && start - at < best_gap {
                best = Some(at);
                best_gap = start - at;
            }
            end = end.max(stop);
        }
        offsets[i] = best.unwrap_or(end.next_multiple_of(align));
        placed.push(i);
    }
    offsets
}

/// Tensors written over a dead input share its bytes: for each `(input, output)` pair
/// of an op that can run in place (in op order), the output joins the input's slot
/// when the input's life (and its slot's) ends at the step the output is written and
/// the sizes are equal. Returns the slots (a merged tensor's own slot emptied: size 0)
/// and each tensor's slot; place the slots, then give each tensor its slot's offset.
pub fn merge_in_place(tensors: &[Live], pairs: &[(usize, usize)]) -> (Vec<Live>, Vec<usize>) {
    let mut slots = tensors.to_vec();
    let mut slot_of: Vec<usize> = (0..tensors.len()).collect();
    for &(x, y) in pairs {
        let (Some(tx), Some(ty)) = (tensors.get(x), tensors.get(y)) else {
            continue;
        };
        let sx = slot_of[x];
        let fits = tx.size == ty.size && tx.last == ty.first && slots[sx].last == tx.last;
        if fits && slot_of[y] == y && x != y {
            slot_of[y] = sx;
            slots[sx].last = slots[sx].last.max(ty.last);
            slots[y].size = 0;
        }
    }
    (slots, slot_of)
}

/// The most bytes alive at one step.
pub fn lower_bound(tensors: &[Live]) -> u32 {
    let steps = tensors.iter().map(|t| t.last).max().unwrap_or(0);
    (0..=steps)
        .map(|s| {
            tensors
                .iter()
                .filter(|t| t.first <= s && s <= t.last)
                .map(|t| t.size)
                .sum()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(size: u32, first: u32, last: u32) -> Live {
        Live { size, first, last }
    }

    /// No two tensors alive together share bytes; the peak covers every tensor.
    fn assert_valid(t: &[Live], l: &Layout) {
        for i in 0..t.len() {
            assert!(l.offsets[i] + t[i].size <= l.peak);
            for j in i + 1..t.len() {
                let (a0, a1) = (l.offsets[i], l.offsets[i] + t[i].size);
                let (b0, b1) = (l.offsets[j], l.offsets[j] + t[j].size);
                if t[i].meets(&t[j]) && t[i].size > 0 && t[j].size > 0 {
                    assert!(a1 <= b0 || b1 <= a0, "{i} and {j} overlap: {l:?}");
                }
            }
        }
        assert!(l.peak >= l.lower_bound && l.sum >= l.peak as u64);
    }

    /// A chain x -> a -> b -> c: two tensors alive per step, ping-pong at the bound.
    #[test]
    fn chain_reaches_the_lower_bound() {
        let t = [
            live(100, 0, 1),
            live(80, 1, 2),
            live(60, 2, 3),
            live(10, 3, 4),
        ];
        let l = place(&t, 1);
        assert_valid(&t, &l);
        assert_eq!((l.peak, l.lower_bound, l.sum), (180, 180, 250));
        // the largest at 0; a above it; b back at 0 (x is dead), c above b
        assert_eq!(l.offsets, [0, 100, 0, 60]);
    }

    /// A residual block (x read again by the Add) and a DARTS-like cell with concat.
    #[test]
    fn skip_connections_stay_valid_and_near_the_bound() {
        // x(0..3) -> a(1..2) -> b(2..3); add(x, b) -> y(3..4)
        let t = [
            live(64, 0, 3),
            live(64, 1, 2),
            live(64, 2, 3),
            live(64, 3, 4),
        ];
        let l = place(&t, 1);
        assert_valid(&t, &l);
        assert_eq!((l.peak, l.lower_bound), (192, 192));
        let ops: Vec<(Vec<usize>, usize)> = vec![
            (vec![0], 1),
            (vec![0], 2),
            (vec![1], 3),
            (vec![2, 3], 4),
            (vec![1, 4], 5),
            (vec![3, 4, 5], 6),
            (vec![6], 7),
        ];
        let sizes = [96, 48, 48, 48, 48, 48, 144, 10];
        let life = lifetimes(8, 0, 7, &ops);
        let t: Vec<Live> = life
            .iter()
            .zip(sizes)
            .map(|(l, s)| {
                let (first, last) = l.unwrap();
                live(s, first, last)
            })
            .collect();
        assert_eq!((t[0].first, t[0].last, t[7].last), (0, 2, 8));
        let l = place(&t, 4);
        assert_valid(&t, &l);
        assert!(l.offsets.iter().all(|o| o % 4 == 0));
        assert!(l.peak as f64 <= 1.1 * l.lower_bound as f64, "{l:?}");
    }

    /// x -> relu in place -> add into the relu's output: one slot for the three.
    #[test]
    fn in_place_shares_the_input_slot() {
        // x(0..2) -> r = relu(x) (1..2) -> y = r + x (2..3): x is still read by the add,
        // so r cannot take x's bytes; y takes r's (r dies at the add)
        let t = [live(64, 0, 2), live(64, 1, 2), live(64, 2, 3)];
        let (slots, slot_of) = merge_in_place(&t, &[(0, 1), (1, 2)]);
        assert_eq!(slot_of, [0, 1, 1]);
        assert_eq!(slots[1], live(64, 1, 3));
        assert_eq!(slots[2].size, 0);
        let l = place(&slots, 1);
        assert_eq!((l.peak, l.lower_bound), (128, 128));
        // a chain of in-place ops over one buffer
        let t = [live(50, 0, 1), live(50, 1, 2), live(50, 2, 3)];
        let (slots, slot_of) = merge_in_place(&t, &[(0, 1), (1, 2)]);
        assert_eq!(slot_of, [0, 0, 0]);
        assert_eq!(place(&slots, 1).peak, 50);
    }

    /// Random orders of random chains with skips: always valid; the peak within 10% of
    /// the bound on most (reported).
    #[test]
    fn random_graphs_are_valid() {
        let mut s = 12345u64;
        let mut next = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        let (mut within, mut total) = (0, 0);
        for _ in 0..300 {
            let n = 2 + next(30) as usize;
            let mut ops = Vec::new();
            for y in 1..n {
                let mut xs = vec![y - 1];
                if y > 2 && next(3) == 0 {
                    xs.push(next(y as u64 - 1) as usize);
                }
                ops.push((xs, y));
            }
            let life = lifetimes(n, 0, n - 1, &ops);
            let t: Vec<Live> = life
                .iter()
                .map(|l| {
                    let (first, last) = l.unwrap();
                    live(1 + next(5000) as u32, first, last)
                })
                .collect();
            let l = place(&t, 1);
            assert_valid(&t, &l);
            total += 1;
            within += (l.peak as f64 <= 1.1 * l.lower_bound as f64) as usize;
        }
        std::println!("{within} of {total} random graphs within 1.1x the lower bound");
        assert!(within * 10 >= total * 8, "{within} of {total}");
    }
}
