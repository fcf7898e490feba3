//! Building a plan's bytes (feature `alloc`): the one writer of the format
//! [`crate::Plan::parse`] reads. Tensors are placed by the caller (a memory planner
//! chooses the offsets); constants are appended to the blob, 4-byte aligned.
//!
//! ```
//! use splitnas_micro::writer::PlanWriter;
//! use splitnas_micro::{Plan, Quant};
//! let q = Quant::new(0.05, -3);
//! let mut w = PlanWriter::new();
//! let (x, y) = (w.tensor(0, [1, 2, 4]), w.tensor(8, [1, 2, 4]));
//! w.requant(x, y, [q, Quant::new(0.1, 0)], true);
//! w.io(x, q, y, Quant::new(0.1, 0));
//! let bytes = w.finish();
//! let plan = Plan::parse(&bytes).unwrap();
//! assert_eq!((plan.arena_len(), plan.ops_len()), (16, 1));
//! ```

use crate::format::{self, code, fnv1a, NONE};
use crate::planner;
use crate::{Quant, Tensor};
use alloc::vec::Vec;
use splitnas_kernels::int8::Requant;
use splitnas_kernels::Geom;

/// A convolution's or fully connected layer's constants and quantization.
#[derive(Clone, Copy, Debug)]
pub struct DenseSpec<'a> {
    /// Weights `[M, K]` (a convolution's `[M, C / groups, kh, kw]`), zero point 0.
    pub wt: &'a [i8],
    /// Bias `[M]` in accumulator units, or none.
    pub bias: Option<&'a [i32]>,
    /// Requantization per output channel, or one for all.
    pub requant: &'a [Requant],
    /// Input zero point.
    pub zx: i8,
    /// Output zero point.
    pub out_zero: i8,
    /// Fused ReLU (nothing below the output zero point).
    pub relu: bool,
    /// Groups (1 dense, C depthwise; 1 for a fully connected layer).
    pub groups: u32,
}

/// A plan under construction.
#[derive(Clone, Debug, Default)]
pub struct PlanWriter {
    tensors: Vec<Tensor>,
    ops: Vec<u32>,
    n_ops: u16,
    consts: Vec<u8>,
    io: Option<(u16, Quant, u16, Quant)>,
    arena_len: Option<u32>,
    /// Each op's tensors read and written and whether it may write over its inputs
    /// (none for ops written with [`PlanWriter::op`]).
    op_io: Vec<Option<(Vec<u16>, u16, bool)>>,
}

fn quant(q: Quant) -> [u32; 2] {
    [q.scale.to_bits(), q.zero as i32 as u32]
}

fn geom(g: &Geom) -> [u32; 13] {
    [
        g.c, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.oh, g.ow,
    ]
    .map(|v| v as u32)
}

impl PlanWriter {
    /// An empty plan.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tensor of shape `dims` at arena byte `offset`; returns its id.
    pub fn tensor(&mut self, offset: u32, dims: [u32; 3]) -> u16 {
        let len = dims.iter().product();
        self.tensors.push(Tensor { offset, len, dims });
        (self.tensors.len() - 1) as u16
    }

    /// The plan's input tensor and quantization, and its output's.
    pub fn io(&mut self, input: u16, iq: Quant, output: u16, oq: Quant) {
        self.io = Some((input, iq, output, oq));
    }

    /// Sets the arena length (default: the end of the furthest tensor).
    pub fn arena_len(&mut self, len: u32) {
        self.arena_len = Some(len);
    }

    /// Appends `bytes` to the blob at a 4-byte boundary; returns their offset.
    pub fn constant(&mut self, bytes: &[u8]) -> u32 {
        while !self.consts.len().is_multiple_of(4) {
            self.consts.push(0);
        }
        let at = self.consts.len() as u32;
        self.consts.extend_from_slice(bytes);
        at
    }

    fn words(&mut self, v: impl IntoIterator<Item = u32>) -> u32 {
        let b: Vec<u8> = v.into_iter().flat_map(u32::to_le_bytes).collect();
        self.constant(&b)
    }

    /// An op of code `code` with argument words `args`, as they are (tests write bad
    /// ops with it).
    pub fn op(&mut self, code: u16, args: &[u32]) {
        self.ops.push(code as u32 | (args.len() as u32) << 16);
        self.ops.extend_from_slice(args);
        self.n_ops += 1;
        self.op_io.push(None);
    }

    /// [`PlanWriter::op`], recording the tensors it reads and writes for
    /// [`PlanWriter::plan_memory`].
    fn op_io(&mut self, code: u16, args: &[u32], inputs: &[u16], output: u16) {
        self.op(code, args);
        // the ops `Plan::run` runs in place (`Plan::in_place`)
        let in_place = code == code::REQUANT || code == code::ADD && inputs[0] != inputs[1];
        if let Some(last) = self.op_io.last_mut() {
            *last = Some((inputs.to_vec(), output, in_place));
        }
    }

    /// Chooses every tensor's offset (the static memory plan over the ops' order:
    /// [`planner::place`], offsets multiples of `align`; with `in_place`, a Requant's or
    /// Add's output on the bytes of an input it is the last reader of,
    /// [`planner::merge_in_place`]) and the arena length, replacing the offsets given to
    /// [`PlanWriter::tensor`]. Tensors no op touches get offset 0. Call it after the ops
    /// and [`PlanWriter::io`]. The layout's lower bound is over the merged tensors.
    pub fn plan_memory(&mut self, align: u32, in_place: bool) -> planner::Layout {
        let (input, output) = self.io.map_or((0, 0), |io| (io.0 as usize, io.2 as usize));
        let ops: Vec<(Vec<usize>, usize)> = self
            .op_io
            .iter()
            .flatten()
            .map(|(xs, y, _)| (xs.iter().map(|&x| x as usize).collect(), *y as usize))
            .collect();
        let life = planner::lifetimes(self.tensors.len(), input, output, &ops);
        let live: Vec<planner::Live> = self
            .tensors
            .iter()
            .zip(&life)
            .map(|(t, l)| {
                let (first, last) = l.unwrap_or((0, 0));
                let size = if l.is_some() { t.len } else { 0 };
                planner::Live { size, first, last }
            })
            .collect();
        let mut pairs = Vec::new();
        for (xs, y, ok) in self.op_io.iter().flatten() {
            let (y, step) = (*y as usize, live.get(*y as usize).map_or(0, |l| l.first));
            let dead = |x: usize| x != output && live[x].last == step;
            if let Some(&x) = xs.iter().find(|&&x| *ok && in_place && dead(x as usize)) {
                pairs.push((x as usize, y));
            }
        }
        let (slots, slot_of) = planner::merge_in_place(&live, &pairs);
        let mut layout = planner::place(&slots, align);
        layout.offsets = slot_of.iter().map(|&s| layout.offsets[s]).collect();
        layout.sum = live.iter().map(|t| t.size as u64).sum();
        for (t, &o) in self.tensors.iter_mut().zip(&layout.offsets) {
            t.offset = o;
        }
        self.arena_len = Some(layout.peak);
        layout
    }

    fn dense_words(&mut self, x: u16, y: u16, m: u32, d: &DenseSpec) -> Vec<u32> {
        let weights = self.constant(&d.wt.iter().map(|&v| v as u8).collect::<Vec<_>>());
        let bias = match d.bias {
            Some(b) => self.words(b.iter().map(|&v| v as u32)),
            None => NONE,
        };
        let rq = d
            .requant
            .iter()
            .flat_map(|r| [r.multiplier as u32, r.shift as u32]);
        let requant = self.words(rq);
        let (zx, zy) = (d.zx as i32 as u32, d.out_zero as i32 as u32);
        let n = d.requant.len() as u32;
        let (relu, groups) = (d.relu as u32, d.groups);
        [
            x as u32, y as u32, weights, bias, requant, n, zx, zy, relu, groups, m,
        ]
        .to_vec()
    }

    /// Convolution of `x [C, H, W]` into `y [M, oh, ow]` over window `g`.
    pub fn conv(&mut self, x: u16, y: u16, g: &Geom, d: DenseSpec) {
        let k = (g.c / d.groups.max(1) as usize * g.kh * g.kw).max(1);
        let mut a = self.dense_words(x, y, (d.wt.len() / k) as u32, &d);
        a.extend(geom(g));
        self.op_io(code::CONV, &a, &[x], y);
    }

    /// Fully connected layer of `x [K]` into `y [M]`, weights `[M, K]`.
    pub fn gemm(&mut self, x: u16, y: u16, k: u32, d: DenseSpec) {
        let m = d.wt.len() as u32 / k.max(1);
        let mut a = self.dense_words(x, y, m, &d);
        a.push(k);
        self.op_io(code::GEMM, &a, &[x], y);
    }

    /// Max pooling over window `g`.
    pub fn max_pool(&mut self, x: u16, y: u16, g: &Geom) {
        let mut a = [x as u32, y as u32].to_vec();
        a.extend(geom(g));
        self.op_io(code::MAX_POOL, &a, &[x], y);
    }

    /// Average pooling over window `g` (`count_pad`: divide by the whole window).
    pub fn avg_pool(&mut self, x: u16, y: u16, g: &Geom, count_pad: bool, q: [Quant; 2]) {
        let mut a = [x as u32, y as u32].to_vec();
        a.extend(geom(g));
        a.push(count_pad as u32);
        a.extend(q.iter().flat_map(|&q| quant(q)));
        self.op_io(code::AVG_POOL, &a, &[x], y);
    }

    /// Mean of each plane of `hw` values.
    pub fn global_avg(&mut self, x: u16, y: u16, hw: u32, q: [Quant; 2]) {
        let mut a = [x as u32, y as u32, hw].to_vec();
        a.extend(q.iter().flat_map(|&q| quant(q)));
        self.op_io(code::GLOBAL_AVG, &a, &[x], y);
    }

    /// `x` from `q[0]` to `q[1]`, with a ReLU when `relu`.
    pub fn requant(&mut self, x: u16, y: u16, q: [Quant; 2], relu: bool) {
        let mut a = [x as u32, y as u32].to_vec();
        a.extend(q.iter().flat_map(|&q| quant(q)));
        a.push(relu as u32);
        self.op_io(code::REQUANT, &a, &[x], y);
    }

    /// `a + b`.
    pub fn add(&mut self, a: u16, b: u16, y: u16, q: [Quant; 3], relu: bool) {
        let mut w = [a as u32, b as u32, y as u32].to_vec();
        w.extend(q.iter().flat_map(|&q| quant(q)));
        w.push(relu as u32);
        self.op_io(code::ADD, &w, &[a, b], y);
    }

    /// Concatenation of `parts` in `outer` blocks each (the product of the dimensions
    /// before the axis) into `y`, quantized by `yq`.
    pub fn concat(&mut self, parts: &[(u16, Quant)], y: u16, outer: u32, yq: Quant) {
        let mut a = [y as u32, outer].to_vec();
        a.extend(quant(yq));
        a.push(parts.len() as u32);
        for &(p, q) in parts {
            a.push(p as u32);
            a.extend(quant(q));
        }
        let xs: Vec<u16> = parts.iter().map(|p| p.0).collect();
        self.op_io(code::CONCAT, &a, &xs, y);
    }

    /// The strided box `ranges` (start, step, count per axis) of `x [d0, d1, d2]`.
    pub fn slice(&mut self, x: u16, y: u16, dims: [u32; 3], ranges: [(u32, u32, u32); 3]) {
        let mut a = [x as u32, y as u32].to_vec();
        a.extend(dims);
        a.extend(ranges.iter().flat_map(|r| [r.0, r.1, r.2]));
        self.op_io(code::SLICE, &a, &[x], y);
    }

    /// `x [d0, d1, d2]` padded by `pads` (before, after per axis) with `fill`.
    pub fn pad(&mut self, x: u16, y: u16, dims: [u32; 3], pads: [(u32, u32); 3], fill: i8) {
        let mut a = [x as u32, y as u32].to_vec();
        a.extend(dims);
        a.extend(pads.iter().flat_map(|p| [p.0, p.1]));
        a.push(fill as i32 as u32);
        self.op_io(code::PAD, &a, &[x], y);
    }

    /// `Q(DQ(x) a[c] + b[c])` over `[C, inner]`, `C = a.len()`.
    pub fn affine(&mut self, x: u16, y: u16, q: [Quant; 2], inner: u32, a: &[f32], b: &[f32]) {
        let (ao, bo) = (
            self.words(a.iter().map(|v| v.to_bits())),
            self.words(b.iter().map(|v| v.to_bits())),
        );
        let mut w = [x as u32, y as u32].to_vec();
        w.extend(q.iter().flat_map(|&q| quant(q)));
        w.extend([inner, a.len() as u32, ao, bo]);
        self.op_io(code::AFFINE, &w, &[x], y);
    }

    /// The plan's bytes: header, tensor table, ops, constants, with the checksum.
    pub fn finish(&self) -> Vec<u8> {
        let (input, iq, output, oq) =
            self.io
                .unwrap_or((0, Quant::new(1.0, 0), 0, Quant::new(1.0, 0)));
        let arena = self.arena_len.unwrap_or_else(|| {
            self.tensors
                .iter()
                .map(|t| t.offset.saturating_add(t.len))
                .max()
                .unwrap_or(0)
        });
        let mut b = Vec::new();
        b.extend_from_slice(&format::MAGIC);
        b.extend_from_slice(&format::VERSION.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&[0; 8]); // length and checksum, set below
        b.extend_from_slice(&arena.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.n_ops.to_le_bytes());
        b.extend_from_slice(&input.to_le_bytes());
        b.extend_from_slice(&output.to_le_bytes());
        for q in [iq, oq] {
            b.extend_from_slice(&q.scale.to_le_bytes());
            b.extend_from_slice(&[q.zero as u8, 0, 0, 0]);
        }
        b.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.consts.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        debug_assert_eq!(b.len(), format::HEADER_LEN);
        for t in &self.tensors {
            for v in [t.offset, t.len, t.dims[0], t.dims[1], t.dims[2]] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        for w in &self.ops {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&self.consts);
        let len = b.len() as u32;
        b[8..12].copy_from_slice(&len.to_le_bytes());
        seal(&mut b);
        b
    }
}

/// Recomputes the checksum of `plan` in place (after an edit; tests mutate plans and
/// seal them so that parse's later checks see the mutation). Plans shorter than the
/// header are left as they are.
pub fn seal(plan: &mut [u8]) {
    if plan.len() >= format::HEADER_LEN {
        let sum = fnv1a(&plan[16..]);
        plan[12..16].copy_from_slice(&sum.to_le_bytes());
    }
}
