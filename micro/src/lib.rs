//! Run a compiled int8 network on a microcontroller: no OS, no allocator, one static
//! arena. A **plan** (`model.plan`, format in `FORMAT.md`) holds the op sequence, the
//! int8 weights, int32 biases and fixed-point requantization multipliers, and a static
//! memory plan: every activation's offset in one arena. [`Plan::parse`] validates all of
//! it (bounds, offsets, op arguments against tensor shapes, tensors alive together not
//! sharing bytes, a checksum); [`Plan::run`] then executes the ops with the integer
//! kernels of `splitnas_kernels::int8` (their allocation-free `*_into` entry points and
//! element-wise loops: the arithmetic the host's int8 engine runs, so the codes are the
//! same) and never panics or indexes out of bounds.
//!
//! ```
//! # fn demo(bytes: &[u8], image: &[i8]) -> Result<(), Box<dyn std::error::Error>> {
//! use splitnas_micro::Plan;
//! let plan = Plan::parse(bytes)?; // a corrupt plan is an error, never a fault
//! let mut arena = vec![0i8; plan.arena_len()]; // on a board: a static buffer
//! let mut logits = vec![0i8; plan.output_len()];
//! plan.run(&mut arena, image, &mut logits)?;
//! # Ok(()) }
//! ```
//!
//! The arena and the activations are `i8` (no `unsafe` reinterpretation of bytes: the
//! crate forbids it); the plan's bytes stay where they are (flash), and each output
//! channel's weights are copied into a stack buffer as its convolution runs (at most
//! [`MAX_K`] products per output channel, [`MAX_ROW`] sums per output row: `parse`
//! rejects larger ops with [`PlanError::Limit`]). The plan [`writer`] (feature `alloc`)
//! builds plans, and the [`planner`] chooses the tensors' offsets (the static memory
//! plan); the tests use both.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

mod check;
mod error;
pub mod format;
#[cfg(feature = "alloc")]
pub mod planner;
mod run;
#[cfg(feature = "alloc")]
pub mod writer;

pub use error::{PlanError, RunError};
use format::{u16_at, u32_at, Op, TensorId, Words, HEADER_LEN, MAGIC, TENSOR_LEN, VERSION};
pub use splitnas_kernels::int8::Quant;

/// Most products per output channel of a convolution or fully connected layer
/// (`C / groups kh kw`, or `K`): one channel's weights are copied to a stack buffer of
/// this many bytes.
pub const MAX_K: usize = 4608;
/// Most `i32` sums of one output row (a convolution's output width; an average pool's
/// width plus twice its window's taps): a stack buffer of this many.
pub const MAX_ROW: usize = 512;

/// A tensor of the plan: where it lies in the arena and its shape (per image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// Byte offset in the arena.
    pub offset: u32,
    /// Length in bytes (= values).
    pub len: u32,
    /// Shape `[d0, d1, d2]` (trailing 1s for lower ranks).
    pub dims: [u32; 3],
}

/// A validated plan borrowing its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    arena_len: u32,
    input: TensorId,
    output: TensorId,
    input_quant: Quant,
    output_quant: Quant,
    n_tensors: u16,
    n_ops: u16,
    tensors: &'a [u8],
    ops: &'a [u8],
    consts: &'a [u8],
}

impl<'a> Plan<'a> {
    /// Checks `bytes` and returns the plan they hold: header (magic, version, lengths,
    /// checksum), tensor table (inside the arena, lengths matching shapes), every op
    /// (code, arguments, tensor shapes, constants inside the blob, multipliers in
    /// range), and the memory plan (an op's output not overlapping its inputs, every
    /// tensor written before it is read, tensors alive at the same time on disjoint
    /// bytes).
    ///
    /// The last check compares every pair of tensors whose bytes overlap, scanning the
    /// ops for their lifetimes: quadratic in the tensors, done once.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PlanError> {
        let len = bytes.len();
        if len < HEADER_LEN {
            return Err(PlanError::Truncated {
                need: HEADER_LEN,
                len,
            });
        }
        if bytes[..4] != MAGIC {
            return Err(PlanError::Magic);
        }
        let version = u16_at(bytes, 4);
        if version != VERSION {
            return Err(PlanError::Version(version));
        }
        let declared = u32_at(bytes, 8) as usize;
        if declared > len {
            return Err(PlanError::Truncated {
                need: declared,
                len,
            });
        }
        if declared != len {
            return Err(PlanError::Length {
                declared,
                sections: len,
            });
        }
        let (stored, computed) = (u32_at(bytes, 12), format::fnv1a(&bytes[16..]));
        if stored != computed {
            return Err(PlanError::Checksum { stored, computed });
        }
        let (n_tensors, n_ops) = (u16_at(bytes, 20), u16_at(bytes, 22));
        let (ops_words, consts_len) = (u32_at(bytes, 44) as u64, u32_at(bytes, 48) as u64);
        let sections =
            HEADER_LEN as u64 + n_tensors as u64 * TENSOR_LEN as u64 + 4 * ops_words + consts_len;
        if sections != len as u64 {
            return Err(PlanError::Length {
                declared,
                sections: sections.min(usize::MAX as u64) as usize,
            });
        }
        if bytes[6..8] != [0, 0] || bytes[33..36] != [0; 3] || bytes[41..44] != [0; 3] {
            return Err(PlanError::Header("reserved bytes not 0"));
        }
        if u32_at(bytes, 52) != 0 {
            return Err(PlanError::Header("reserved bytes not 0"));
        }
        let quant = |at: usize| {
            let scale = f32::from_bits(u32_at(bytes, at));
            (scale.is_normal() && scale > 0.0)
                .then(|| Quant::new(scale, bytes[at + 4] as i8))
                .ok_or(PlanError::Quant { op: usize::MAX })
        };
        let t_end = HEADER_LEN + n_tensors as usize * TENSOR_LEN;
        let o_end = t_end + 4 * ops_words as usize;
        let plan = Plan {
            arena_len: u32_at(bytes, 16),
            input: u16_at(bytes, 24),
            output: u16_at(bytes, 26),
            input_quant: quant(28)?,
            output_quant: quant(36)?,
            n_tensors,
            n_ops,
            tensors: &bytes[HEADER_LEN..t_end],
            ops: &bytes[t_end..o_end],
            consts: &bytes[o_end..],
        };
        if plan.input >= n_tensors || plan.output >= n_tensors {
            return Err(PlanError::Header("input or output tensor out of range"));
        }
        plan.check_tensors()?;
        plan.check_ops()?;
        plan.check_lifetimes()?;
        Ok(plan)
    }

    /// Bytes of arena [`Plan::run`] needs.
    pub fn arena_len(&self) -> usize {
        self.arena_len as usize
    }

    /// Values of the (quantized) input: `input_quant` gives `real = scale (q - zero)`.
    pub fn input_len(&self) -> usize {
        self.tensor(self.input).map_or(0, |t| t.len as usize)
    }

    /// Values of the (quantized) output.
    pub fn output_len(&self) -> usize {
        self.tensor(self.output).map_or(0, |t| t.len as usize)
    }

    /// The input tensor's id (its shape: [`Plan::tensor`]).
    pub fn input_id(&self) -> u16 {
        self.input
    }

    /// The output tensor's id.
    pub fn output_id(&self) -> u16 {
        self.output
    }

    /// The input's quantization (quantize an image with it before [`Plan::run`]).
    pub fn input_quant(&self) -> Quant {
        self.input_quant
    }

    /// The output's quantization (dequantize the logits with it).
    pub fn output_quant(&self) -> Quant {
        self.output_quant
    }

    /// Number of ops.
    pub fn ops_len(&self) -> usize {
        self.n_ops as usize
    }

    /// Number of tensors.
    pub fn tensors_len(&self) -> usize {
        self.n_tensors as usize
    }

    /// Tensor `id`, none beyond the table.
    pub fn tensor(&self, id: u16) -> Option<Tensor> {
        if id >= self.n_tensors {
            return None;
        }
        let at = id as usize * TENSOR_LEN;
        let b = &self.tensors[at..at + TENSOR_LEN];
        Some(Tensor {
            offset: u32_at(b, 0),
            len: u32_at(b, 4),
            dims: [u32_at(b, 8), u32_at(b, 12), u32_at(b, 16)],
        })
    }

    /// Calls `f(index, op)` for every op in order, stopping at the first error (an
    /// op's words running past the section, a bad op).
    pub(crate) fn each_op(
        &self,
        mut f: impl FnMut(usize, Op<'a>) -> Result<(), PlanError>,
    ) -> Result<(), PlanError> {
        let mut at = 0;
        for i in 0..self.n_ops as usize {
            if at + 4 > self.ops.len() {
                return Err(PlanError::OpArgs {
                    op: i,
                    what: "the op list ends before this op",
                });
            }
            let head = u32_at(self.ops, at);
            let (code, n) = (head as u16, (head >> 16) as usize);
            let end = at + 4 + 4 * n;
            if end > self.ops.len() {
                return Err(PlanError::OpArgs {
                    op: i,
                    what: "argument words past the op list",
                });
            }
            f(i, format::decode(i, code, Words(&self.ops[at + 4..end]))?)?;
            at = end;
        }
        if at != self.ops.len() {
            return Err(PlanError::OpArgs {
                op: self.n_ops as usize,
                what: "words after the last op",
            });
        }
        Ok(())
    }

    fn check_tensors(&self) -> Result<(), PlanError> {
        for id in 0..self.n_tensors {
            let t = self
                .tensor(id)
                .ok_or(PlanError::TensorShape { tensor: id })?;
            if t.offset as u64 + t.len as u64 > self.arena_len as u64 {
                return Err(PlanError::OutsideArena {
                    tensor: id,
                    offset: t.offset,
                    len: t.len,
                    arena: self.arena_len,
                });
            }
            let n = t.dims.iter().map(|&d| d as u64).product::<u64>();
            if n != t.len as u64 {
                return Err(PlanError::TensorShape { tensor: id });
            }
        }
        Ok(())
    }

    /// Every op against the tensors and constants; outputs not overlapping their op's
    /// inputs; each tensor written once, before it is read, and never the input.
    fn check_ops(&self) -> Result<(), PlanError> {
        self.each_op(|i, op| {
            self.check_op(i, &op)?;
            let y = op.output();
            let yt = self.tensor_checked(i, y)?;
            if y == self.input || self.writer_of(y, i).is_some() {
                return Err(PlanError::OpArgs {
                    op: i,
                    what: "writes the input or a tensor written before",
                });
            }
            let mut err = Ok(());
            op.for_inputs(|x| {
                if err.is_err() {
                    return;
                }
                err = match self.tensor(x) {
                    None => Err(PlanError::TensorId {
                        op: i,
                        tensor: x as u32,
                    }),
                    Some(xt) if overlap(&xt, &yt) && !self.in_place(&op, x) => {
                        Err(PlanError::InPlace {
                            op: i,
                            output: y,
                            input: x,
                        })
                    }
                    Some(_) if x != self.input && self.writer_of(x, i).is_none() => {
                        Err(PlanError::Unwritten { op: i, tensor: x })
                    }
                    Some(_) => Ok(()),
                };
            });
            err
        })
    }

    /// Whether `op` may write its output over its input `x`: a Requant, or an Add whose
    /// other input is another tensor on other bytes, with the output on exactly `x`'s
    /// bytes (the
    /// kernels' `requant_in_place` / `add_in_place`: each value read, then written).
    pub(crate) fn in_place(&self, op: &Op<'_>, x: TensorId) -> bool {
        let bytes = |t: TensorId| self.tensor(t).map(|t| (t.offset, t.len));
        let same = |y: TensorId| bytes(x).is_some() && bytes(x) == bytes(y);
        match *op {
            Op::Requant { x: input, y, .. } => input == x && same(y),
            Op::Add { a, b, y, .. } => {
                let other = if a == x { b } else { a };
                let apart = match (self.tensor(other), self.tensor(y)) {
                    (Some(o), Some(y)) => !overlap(&o, &y),
                    _ => false,
                };
                (a == x || b == x) && a != b && same(y) && apart
            }
            _ => false,
        }
    }

    /// Op number `i`, decoded.
    fn op_at(&self, i: usize) -> Option<Op<'a>> {
        let mut found = None;
        let _ = self.each_op(|j, op| {
            if j == i {
                found = Some(op);
                return Err(PlanError::Magic); // stop
            }
            Ok(())
        });
        found
    }

    /// The op before `before` that writes tensor `t`.
    fn writer_of(&self, t: TensorId, before: usize) -> Option<usize> {
        let mut found = None;
        let _ = self.each_op(|i, op| {
            if i >= before {
                return Err(PlanError::Magic); // stop: any error ends the scan
            }
            if op.output() == t {
                found = Some(i);
            }
            Ok(())
        });
        found
    }

    /// The steps tensor `t` is alive: from its writing (step `i + 1` for op `i`, 0 for
    /// the input) to its last reading (the output: past the last op); none when nothing
    /// writes it.
    fn lifetime(&self, t: TensorId) -> Option<(usize, usize)> {
        let mut span = (t == self.input).then_some((0, 0));
        let _ = self.each_op(|i, op| {
            if op.output() == t {
                span = Some((i + 1, i + 1));
            }
            op.for_inputs(|x| {
                if let (true, Some(s)) = (x == t, span.as_mut()) {
                    s.1 = s.1.max(i + 1);
                }
            });
            Ok(())
        });
        if t == self.output {
            span = span.map(|s| (s.0, self.n_ops as usize + 1));
        }
        span
    }

    fn check_lifetimes(&self) -> Result<(), PlanError> {
        for a in 0..self.n_tensors {
            let ta = self.tensor(a).ok_or(PlanError::TensorShape { tensor: a })?;
            let Some(la) = self.lifetime(a) else { continue };
            for b in a + 1..self.n_tensors {
                let tb = self.tensor(b).ok_or(PlanError::TensorShape { tensor: b })?;
                if !overlap(&ta, &tb) {
                    continue;
                }
                let Some(lb) = self.lifetime(b) else { continue };
                if la.0 <= lb.1 && lb.0 <= la.1 && !self.handed_over(a, la, b, lb) {
                    return Err(PlanError::Overlap { a, b });
                }
            }
        }
        Ok(())
    }
}

impl<'a> Plan<'a> {
    /// Whether tensors `a` and `b`, alive together, meet only at the step where one
    /// dies and the op of that step writes the other over it in place.
    fn handed_over(
        &self,
        a: TensorId,
        la: (usize, usize),
        b: TensorId,
        lb: (usize, usize),
    ) -> bool {
        let pass = |x: TensorId, lx: (usize, usize), y: TensorId, ly: (usize, usize)| {
            lx.1 == ly.0
                && ly.0 >= 1
                && self
                    .op_at(ly.0 - 1)
                    .is_some_and(|op| op.output() == y && self.in_place(&op, x))
        };
        pass(a, la, b, lb) || pass(b, lb, a, la)
    }
}

/// Whether two tensors share arena bytes (empty tensors share none).
fn overlap(a: &Tensor, b: &Tensor) -> bool {
    let (a0, a1) = (a.offset as u64, a.offset as u64 + a.len as u64);
    let (b0, b1) = (b.offset as u64, b.offset as u64 + b.len as u64);
    a0 < b1 && b0 < a1
}
