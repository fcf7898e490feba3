//! What can be wrong with a plan ([`PlanError`], from [`crate::Plan::parse`]) or a run
//! ([`RunError`], from [`crate::Plan::run`]): each variant names the op (its index in
//! the op list), tensor (its id) or byte offset involved.

use core::fmt;

/// A plan that cannot be run, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// Fewer bytes than the header or the header's sections need.
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        len: usize,
    },
    /// The first four bytes are not `SNPL`.
    Magic,
    /// A format version this build does not read.
    Version(u16),
    /// The header's section sizes do not add up to the plan's length.
    Length {
        /// Length the header declares.
        declared: usize,
        /// Length of the sections it lists.
        sections: usize,
    },
    /// The checksum of the bytes after the header's checksum field differs.
    Checksum {
        /// Stored in the header.
        stored: u32,
        /// Computed from the bytes.
        computed: u32,
    },
    /// A reserved header field is not 0, or the input or output tensor id is out of range.
    Header(&'static str),
    /// A tensor lies (partly) outside the arena.
    OutsideArena {
        /// Tensor id.
        tensor: u16,
        /// Its arena offset.
        offset: u32,
        /// Its length in bytes.
        len: u32,
        /// The arena's length.
        arena: u32,
    },
    /// A tensor's length is not the product of its dimensions.
    TensorShape {
        /// Tensor id.
        tensor: u16,
    },
    /// An op code this build does not know.
    UnknownOp {
        /// Op index.
        op: usize,
        /// Its code.
        code: u16,
    },
    /// An op's argument words are wrong (count, flag, value out of range).
    OpArgs {
        /// Op index.
        op: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// An op names a tensor id beyond the table.
    TensorId {
        /// Op index.
        op: usize,
        /// The id.
        tensor: u32,
    },
    /// A scale that is not a positive normal f32.
    Quant {
        /// Op index (`usize::MAX`: the header's input or output).
        op: usize,
    },
    /// An op's tensor lengths disagree with its arguments.
    Shape {
        /// Op index.
        op: usize,
        /// Tensor id.
        tensor: u16,
        /// What disagrees.
        what: &'static str,
    },
    /// A constant range outside the blob, or misaligned.
    Const {
        /// Op index.
        op: usize,
        /// Byte offset into the blob.
        offset: u32,
        /// Bytes the op reads there.
        len: u32,
    },
    /// A requantization shift outside `-31..=30` or a negative multiplier.
    Requant {
        /// Op index.
        op: usize,
        /// Output channel.
        channel: u32,
    },
    /// A figure beyond what this build runs (`micro` sums one output row in a
    /// fixed-size stack buffer and copies one channel's weights to the stack).
    Limit {
        /// Op index.
        op: usize,
        /// What it is.
        what: &'static str,
        /// Its value.
        value: u32,
        /// The most this build runs.
        max: u32,
    },
    /// An op writes a tensor whose bytes overlap a tensor it reads.
    InPlace {
        /// Op index.
        op: usize,
        /// The tensor written.
        output: u16,
        /// The tensor read.
        input: u16,
    },
    /// An op reads a tensor no earlier op wrote (nor the plan's input).
    Unwritten {
        /// Op index.
        op: usize,
        /// Tensor id.
        tensor: u16,
    },
    /// Two tensors alive at the same time share arena bytes.
    Overlap {
        /// One tensor.
        a: u16,
        /// The other.
        b: u16,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PlanError::*;
        match *self {
            Truncated { need, len } => write!(f, "plan truncated: {len} bytes, {need} needed"),
            Magic => write!(f, "not a splitnas plan (magic)"),
            Version(v) => write!(f, "plan version {v} is not supported"),
            Length { declared, sections } => write!(
                f,
                "plan length {declared} but its sections take {sections} bytes"
            ),
            Checksum { stored, computed } => write!(
                f,
                "plan checksum {stored:#010x}, bytes give {computed:#010x}"
            ),
            Header(what) => write!(f, "plan header: {what}"),
            OutsideArena {
                tensor,
                offset,
                len,
                arena,
            } => write!(
                f,
                "tensor {tensor} at {offset} of {len} bytes leaves the {arena}-byte arena"
            ),
            TensorShape { tensor } => write!(f, "tensor {tensor}: length is not its shape's"),
            UnknownOp { op, code } => write!(f, "op {op}: unknown code {code}"),
            OpArgs { op, what } => write!(f, "op {op}: {what}"),
            TensorId { op, tensor } => write!(f, "op {op}: tensor id {tensor} out of range"),
            Quant { op } => write!(f, "op {op}: scale not a positive normal number"),
            Shape { op, tensor, what } => write!(f, "op {op}, tensor {tensor}: {what}"),
            Const { op, offset, len } => write!(
                f,
                "op {op}: constants at {offset} ({len} bytes) outside the blob or misaligned"
            ),
            Requant { op, channel } => write!(f, "op {op}: bad multiplier of channel {channel}"),
            Limit {
                op,
                what,
                value,
                max,
            } => write!(f, "op {op}: {what} {value} beyond {max}"),
            InPlace { op, output, input } => write!(
                f,
                "op {op} writes tensor {output} over tensor {input} it reads"
            ),
            Unwritten { op, tensor } => {
                write!(f, "op {op} reads tensor {tensor} before it is written")
            }
            Overlap { a, b } => write!(f, "tensors {a} and {b} are alive together and overlap"),
        }
    }
}

/// A run that could not start; nothing was written to `output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunError {
    /// The arena is shorter than the plan's [`crate::Plan::arena_len`].
    Arena {
        /// Bytes the plan needs.
        need: usize,
        /// Bytes given.
        len: usize,
    },
    /// The input is not as long as the plan's input tensor.
    Input {
        /// Its length.
        need: usize,
        /// Bytes given.
        len: usize,
    },
    /// The output is not as long as the plan's output tensor.
    Output {
        /// Its length.
        need: usize,
        /// Bytes given.
        len: usize,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RunError::Arena { need, len } => {
                write!(f, "arena of {len} bytes, the plan needs {need}")
            }
            RunError::Input { need, len } => write!(f, "input of {len} values, expected {need}"),
            RunError::Output { need, len } => {
                write!(f, "output of {len} values, expected {need}")
            }
        }
    }
}

impl core::error::Error for PlanError {}
impl core::error::Error for RunError {}
