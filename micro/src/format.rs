//! The plan's byte layout (see `FORMAT.md`) and the decoding of one op's argument words
//! into an [`Op`]. Decoding checks only what the words say on their own (op code, word
//! count, flags, quantization parameters); `check.rs` checks them against the tensors and
//! the constant blob.

use crate::error::PlanError;
use splitnas_kernels::int8::Quant;
use splitnas_kernels::Geom;

/// The first four bytes of a plan.
pub const MAGIC: [u8; 4] = *b"SNPL";
/// The format version this crate reads and writes.
pub const VERSION: u16 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 56;
/// Bytes of one tensor table entry: offset, length, three dimensions (u32 each).
pub const TENSOR_LEN: usize = 20;
/// A constant offset meaning "none" (a convolution without bias).
pub const NONE: u32 = u32::MAX;

/// Op codes (the low 16 bits of an op's first word).
pub mod code {
    /// Convolution: dense, grouped or depthwise.
    pub const CONV: u16 = 1;
    /// Fully connected layer.
    pub const GEMM: u16 = 2;
    /// Max pooling.
    pub const MAX_POOL: u16 = 3;
    /// Average pooling.
    pub const AVG_POOL: u16 = 4;
    /// Global average pooling.
    pub const GLOBAL_AVG: u16 = 5;
    /// Requantization, with an optional ReLU.
    pub const REQUANT: u16 = 6;
    /// Sum of two tensors.
    pub const ADD: u16 = 7;
    /// Concatenation.
    pub const CONCAT: u16 = 8;
    /// Strided box.
    pub const SLICE: u16 = 9;
    /// Constant padding.
    pub const PAD: u16 = 10;
    /// Per-channel `Q(DQ(x) a + b)`.
    pub const AFFINE: u16 = 11;
}

/// FNV-1a (32 bits) of `bytes`: the plan's checksum.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h
}

/// Little-endian u32 at `at` of `b` (the caller checked the bounds).
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Little-endian u16 at `at` of `b`.
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// A tensor's id (its index in the tensor table).
pub type TensorId = u16;

/// A convolution's or fully connected layer's decoded arguments. The constant offsets
/// are byte offsets into the blob: weights `[M, K]` i8, bias `[M]` i32 (or [`NONE`]),
/// `requants` (1 or `M`) pairs of i32 (multiplier, shift).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dense {
    pub x: TensorId,
    pub y: TensorId,
    pub weights: u32,
    pub bias: u32,
    pub requant: u32,
    pub requants: u32,
    pub zx: i8,
    pub out_zero: i8,
    pub relu: bool,
    /// Groups (1 for a fully connected layer).
    pub groups: u32,
    /// Output channels.
    pub m: u32,
    /// The window, none for a fully connected layer (then `k` products per output).
    pub geom: Option<Geom>,
    pub k: u32,
}

/// One decoded op.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op<'a> {
    Dense(Dense),
    MaxPool {
        x: TensorId,
        y: TensorId,
        g: Geom,
    },
    AvgPool {
        x: TensorId,
        y: TensorId,
        g: Geom,
        count_pad: bool,
        q: [Quant; 2],
    },
    GlobalAvg {
        x: TensorId,
        y: TensorId,
        hw: u32,
        q: [Quant; 2],
    },
    Requant {
        x: TensorId,
        y: TensorId,
        q: [Quant; 2],
        relu: bool,
    },
    Add {
        a: TensorId,
        b: TensorId,
        y: TensorId,
        q: [Quant; 3],
        relu: bool,
    },
    /// Parts: `parts` words of three (tensor, scale bits, zero) each.
    Concat {
        y: TensorId,
        outer: u32,
        yq: Quant,
        parts: Words<'a>,
    },
    Slice {
        x: TensorId,
        y: TensorId,
        dims: [u32; 3],
        ranges: [(u32, u32, u32); 3],
    },
    Pad {
        x: TensorId,
        y: TensorId,
        dims: [u32; 3],
        pads: [(u32, u32); 3],
        fill: i8,
    },
    /// `a` and `b`: byte offsets of `c` f32 each in the blob.
    Affine {
        x: TensorId,
        y: TensorId,
        q: [Quant; 2],
        inner: u32,
        c: u32,
        a: u32,
        b: u32,
    },
}

/// A run of little-endian u32 words.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Words<'a>(pub &'a [u8]);

impl<'a> Words<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    pub fn get(&self, i: usize) -> u32 {
        u32_at(self.0, 4 * i)
    }
}

/// Reads an op's argument words in order.
struct Args<'a> {
    w: Words<'a>,
    at: usize,
    op: usize,
}

impl<'a> Args<'a> {
    fn next(&mut self) -> Result<u32, PlanError> {
        if self.at >= self.w.len() {
            return Err(PlanError::OpArgs {
                op: self.op,
                what: "too few argument words",
            });
        }
        self.at += 1;
        Ok(self.w.get(self.at - 1))
    }

    fn tensor(&mut self) -> Result<TensorId, PlanError> {
        let v = self.next()?;
        TensorId::try_from(v).map_err(|_| PlanError::TensorId {
            op: self.op,
            tensor: v,
        })
    }

    fn bad(&self, what: &'static str) -> PlanError {
        PlanError::OpArgs { op: self.op, what }
    }

    fn flag(&mut self) -> Result<bool, PlanError> {
        match self.next()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad("a flag other than 0 or 1")),
        }
    }

    fn i8(&mut self) -> Result<i8, PlanError> {
        let v = self.next()? as i32;
        i8::try_from(v).map_err(|_| self.bad("a zero point or fill outside i8"))
    }

    /// A quantization: a positive normal f32 scale and an i8 zero point.
    fn quant(&mut self) -> Result<Quant, PlanError> {
        let scale = f32::from_bits(self.next()?);
        if !(scale.is_normal() && scale > 0.0) {
            return Err(PlanError::Quant { op: self.op });
        }
        Ok(Quant::new(scale, self.i8()?))
    }

    fn dims(&mut self) -> Result<[u32; 3], PlanError> {
        Ok([self.next()?, self.next()?, self.next()?])
    }

    /// A window: c h w kh kw sh sw dh dw pt pl oh ow, each below 2^15 (so that the
    /// kernels' index products fit 32-bit `usize`).
    fn geom(&mut self) -> Result<Geom, PlanError> {
        let mut v = [0usize; 13];
        for d in &mut v {
            let x = self.next()?;
            if x >= 1 << 15 {
                return Err(self.bad("a window dimension of 2^15 or more"));
            }
            *d = x as usize;
        }
        let [c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow] = v;
        #[rustfmt::skip]
        let g = Geom { c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow };
        Ok(g)
    }

    fn done(&self) -> Result<(), PlanError> {
        if self.at == self.w.len() {
            Ok(())
        } else {
            Err(self.bad("more argument words than the op takes"))
        }
    }
}

/// Decodes op number `op` of code `code` from its argument words.
pub(crate) fn decode(op: usize, code: u16, words: Words<'_>) -> Result<Op<'_>, PlanError> {
    let mut a = Args {
        w: words,
        at: 0,
        op,
    };
    let decoded = match code {
        code::CONV | code::GEMM => {
            let (x, y) = (a.tensor()?, a.tensor()?);
            let (weights, bias, requant, requants) = (a.next()?, a.next()?, a.next()?, a.next()?);
            let (zx, out_zero, relu) = (a.i8()?, a.i8()?, a.flag()?);
            let (groups, m) = (a.next()?, a.next()?);
            let (geom, k) = if code == code::CONV {
                (Some(a.geom()?), 0)
            } else {
                (None, a.next()?)
            };
            Op::Dense(Dense {
                x,
                y,
                weights,
                bias,
                requant,
                requants,
                zx,
                out_zero,
                relu,
                groups,
                m,
                geom,
                k,
            })
        }
        code::MAX_POOL => Op::MaxPool {
            x: a.tensor()?,
            y: a.tensor()?,
            g: a.geom()?,
        },
        code::AVG_POOL => Op::AvgPool {
            x: a.tensor()?,
            y: a.tensor()?,
            g: a.geom()?,
            count_pad: a.flag()?,
            q: [a.quant()?, a.quant()?],
        },
        code::GLOBAL_AVG => Op::GlobalAvg {
            x: a.tensor()?,
            y: a.tensor()?,
            hw: a.next()?,
            q: [a.quant()?, a.quant()?],
        },
        code::REQUANT => Op::Requant {
            x: a.tensor()?,
            y: a.tensor()?,
            q: [a.quant()?, a.quant()?],
            relu: a.flag()?,
        },
        code::ADD => Op::Add {
            a: a.tensor()?,
            b: a.tensor()?,
            y: a.tensor()?,
            q: [a.quant()?, a.quant()?, a.quant()?],
            relu: a.flag()?,
        },
        code::CONCAT => {
            let (y, outer, yq, n) = (a.tensor()?, a.next()?, a.quant()?, a.next()?);
            let rest = a.w.len() - a.at;
            if n == 0 || !rest.is_multiple_of(3) || rest / 3 != n as usize {
                return Err(a.bad("a concatenation's part count and words disagree"));
            }
            let parts = Words(&a.w.0[4 * a.at..]);
            for i in 0..n as usize {
                a.tensor()?;
                a.quant()?;
                let _ = i;
            }
            Op::Concat {
                y,
                outer,
                yq,
                parts,
            }
        }
        code::SLICE => Op::Slice {
            x: a.tensor()?,
            y: a.tensor()?,
            dims: a.dims()?,
            ranges: [
                (a.next()?, a.next()?, a.next()?),
                (a.next()?, a.next()?, a.next()?),
                (a.next()?, a.next()?, a.next()?),
            ],
        },
        code::PAD => Op::Pad {
            x: a.tensor()?,
            y: a.tensor()?,
            dims: a.dims()?,
            pads: [
                (a.next()?, a.next()?),
                (a.next()?, a.next()?),
                (a.next()?, a.next()?),
            ],
            fill: a.i8()?,
        },
        code::AFFINE => Op::Affine {
            x: a.tensor()?,
            y: a.tensor()?,
            q: [a.quant()?, a.quant()?],
            inner: a.next()?,
            c: a.next()?,
            a: a.next()?,
            b: a.next()?,
        },
        _ => return Err(PlanError::UnknownOp { op, code }),
    };
    a.done()?;
    Ok(decoded)
}

/// Part `i` of a concatenation: tensor and quantization (decoded once already).
pub(crate) fn concat_part(parts: Words<'_>, i: usize) -> (TensorId, Quant) {
    let t = parts.get(3 * i) as TensorId;
    let q = Quant::new(
        f32::from_bits(parts.get(3 * i + 1)),
        parts.get(3 * i + 2) as i8,
    );
    (t, q)
}

impl Op<'_> {
    /// The tensor written.
    pub fn output(&self) -> TensorId {
        match *self {
            Op::Dense(d) => d.y,
            Op::MaxPool { y, .. }
            | Op::AvgPool { y, .. }
            | Op::GlobalAvg { y, .. }
            | Op::Requant { y, .. }
            | Op::Add { y, .. }
            | Op::Concat { y, .. }
            | Op::Slice { y, .. }
            | Op::Pad { y, .. }
            | Op::Affine { y, .. } => y,
        }
    }

    /// Calls `f` on every tensor read, in order.
    pub fn for_inputs(&self, mut f: impl FnMut(TensorId)) {
        match *self {
            Op::Dense(d) => f(d.x),
            Op::Add { a, b, .. } => {
                f(a);
                f(b)
            }
            Op::Concat { parts, .. } => {
                for i in 0..parts.len() / 3 {
                    f(concat_part(parts, i).0)
                }
            }
            Op::MaxPool { x, .. }
            | Op::AvgPool { x, .. }
            | Op::GlobalAvg { x, .. }
            | Op::Requant { x, .. }
            | Op::Slice { x, .. }
            | Op::Pad { x, .. }
            | Op::Affine { x, .. } => f(x),
        }
    }
}
