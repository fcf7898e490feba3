//! The int8 engine: on the CPU backends a QDQ model (QuantizeLinear / DequantizeLinear
//! around its ops) runs on int8 buffers with the integer kernels of
//! `splitnas_kernels::int8`, instead of the float plan's fake quantization.
//!
//! [`lower`] turns the loaded graph into a [`Program`] of [`Op`]s at load time, or says
//! why it cannot (the model then runs on the float path); [`exec`] runs a program on a
//! batch, images spread over rayon's pool. Values are i8 buffers; a value's quantization
//! (`real = scale (q - zero)`) is known at load time and baked into the ops reading it.
//!
//! The lowered program is public read-only ([`crate::Model::int8_program`]): the
//! microcontroller compiler (`splitnas_export::plan`) translates its ops one to one into
//! a `splitnas-micro` plan.
//!
//! Arithmetic: convolutions and dense layers sum in int32 and requantize with the
//! kernels' fixed-point multipliers (one rounding of a 64-bit product); pools sum in
//! int32 likewise; the elementwise requantizations (Relu, Add, Concat, a Q after a DQ of
//! other parameters) and the float islands compute `Q(f(DQ(x)))` in f32 with the float
//! path's own operations, so they give its codes exactly.

mod dense;
mod exec;
mod layout;
mod lower;

pub use splitnas_host::kernels::int8::{Quant, Requant};
pub use splitnas_host::kernels::Geom;

use crate::ops::Ctx;
use burn::tensor::backend::Backend;
use lower::lower;
use onnx_protobuf::GraphProto;
use splitnas_host::kernels::int8::OutQ;
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// The int8 program of a QDQ model loaded for a CPU backend, or why it runs on the float
/// path; `(None, None)` for a float model (no QuantizeLinear / DequantizeLinear node).
pub(crate) fn choose<B: Backend>(
    cx: &Ctx<'_, B>,
    graph: &GraphProto,
    input: &str,
) -> (Option<Program>, Option<String>) {
    let qdq = graph
        .node
        .iter()
        .any(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"));
    if !qdq {
        return (None, None);
    }
    if !cx.on_host {
        let why = "the int8 engine runs on the CPU backends (flex, ndarray)";
        return (None, Some(why.into()));
    }
    if !int8_enabled() {
        return (None, Some(format!("the int8 engine is off ({INT8_ENV}=0)")));
    }
    match lower(cx, graph, input) {
        Ok(p) => (Some(p), None),
        Err(why) => (None, Some(why)),
    }
}

/// A quantized model lowered to int8 ops.
#[derive(Debug)]
pub struct Program {
    /// The ops in execution order.
    pub ops: Vec<Op>,
    /// Elements per image of each value.
    pub sizes: Vec<usize>,
    /// Floats per image of the model's input.
    pub input: usize,
    /// The value the logits are dequantized from, and its quantization.
    pub output: (usize, Quant),
    /// For each op, the values it reads last (freed after it).
    pub free: Vec<Vec<usize>>,
    /// The ONNX tensor each value holds (the QuantizeLinear output or layout op output
    /// that named it; empty when none did).
    pub names: Vec<String>,
}

/// A convolution or fully connected layer: int8 weights `[M, K]` (a convolution's
/// `[M, C / groups, kh, kw]`), symmetric per output channel, int32 bias in accumulator
/// units, requantized per output channel into `out`.
#[derive(Debug)]
pub struct Dense {
    /// The value read.
    pub x: usize,
    /// The value written.
    pub y: usize,
    /// Input zero point.
    pub zx: i8,
    /// A convolution's window and groups, None for a fully connected layer.
    pub conv: Option<(Geom, usize)>,
    /// K of a fully connected layer.
    pub k: usize,
    /// Weights `[M, K]`.
    pub w: Vec<i8>,
    /// Bias `[M]` in accumulator units.
    pub bias: Option<Vec<i32>>,
    /// Accumulator scale per output channel, `s_x s_w[m]` (in f64, as the kernels'
    /// `Requant::from_scales` takes it).
    pub acc_scale: Vec<f64>,
    /// Output quantization.
    pub out: Quant,
    /// A fused ReLU (the output clamped at its zero point).
    pub relu: bool,
    /// `acc_scale / out.scale` as fixed-point multipliers.
    pub requant: Vec<Requant>,
}

impl Dense {
    /// Sets the output quantization (and ReLU), recomputing the multipliers.
    pub(crate) fn set_out(&mut self, out: Quant, relu: bool) {
        self.requant = self
            .acc_scale
            .iter()
            .map(|&a| Requant::new(a / out.scale as f64))
            .collect();
        self.out = out;
        self.relu = relu;
    }

    pub(crate) fn out_q(&self) -> OutQ {
        OutQ::with_relu(self.out.zero, self.relu)
    }
}

/// One int8 operation; `x`, `a`, `b`, `xs` are the values read, `y` the value written.
#[derive(Debug)]
#[allow(missing_docs)] // the fields are named as in `Dense`: x, a, b read, y written
pub enum Op {
    /// The float input quantized (`QuantizeLinear`).
    Quantize { y: usize, q: Quant },
    /// Convolution or Gemm / MatMul.
    Dense(Box<Dense>),
    /// `x` (quantized by `xq`) requantized to `yq`; with `relu` nothing below real 0
    /// (Relu, and a Q reading a DQ of other parameters).
    Requant {
        x: usize,
        y: usize,
        xq: Quant,
        yq: Quant,
        relu: bool,
    },
    /// Max pooling: the codes of the input's quantization.
    MaxPool { x: usize, y: usize, g: Geom },
    AvgPool {
        x: usize,
        y: usize,
        g: Geom,
        count_pad: bool,
        q: [Quant; 2],
    },
    /// Mean of each plane of `hw` elements.
    GlobalAvg {
        x: usize,
        y: usize,
        hw: usize,
        q: [Quant; 2],
    },
    /// `Q(DQ(a) + DQ(b))` in f32, clamped at real 0 with `relu`.
    Add {
        a: usize,
        b: usize,
        y: usize,
        q: [Quant; 3],
        relu: bool,
    },
    /// Concatenation: per image `outer` blocks of each part's elements (`C_i` times
    /// the product of the dimensions after the axis).
    Concat {
        xs: Vec<(usize, Quant)>,
        y: usize,
        outer: usize,
        yq: Quant,
    },
    /// Strided box of an image `[d0, d1, d2]`: per axis (start, step, count).
    Slice {
        x: usize,
        y: usize,
        dims: [usize; 3],
        ranges: [(usize, usize, usize); 3],
    },
    /// Constant padding of an image `[d0, d1, d2]` with the code of real 0.
    Pad {
        x: usize,
        y: usize,
        dims: [usize; 3],
        pads: [(usize, usize); 3],
        fill: i8,
    },
    /// A float op between a dequantization and a quantization, per channel:
    /// `quantize(dequantize(q) a[c] + b[c])` over images `[c, inner]` (BatchNormalization,
    /// Mul or Add with a constant), in the float path's f32 operations.
    Affine {
        x: usize,
        y: usize,
        q: [Quant; 2],
        inner: usize,
        a: Vec<f32>,
        b: Vec<f32>,
    },
}

impl Op {
    /// The value written.
    pub fn out(&self) -> usize {
        match self {
            Op::Dense(d) => d.y,
            Op::Quantize { y, .. }
            | Op::Requant { y, .. }
            | Op::MaxPool { y, .. }
            | Op::AvgPool { y, .. }
            | Op::GlobalAvg { y, .. }
            | Op::Add { y, .. }
            | Op::Concat { y, .. }
            | Op::Slice { y, .. }
            | Op::Pad { y, .. }
            | Op::Affine { y, .. } => *y,
        }
    }

    /// A short name of the op and its shape (`SPLITNAS_PROFILE`).
    pub fn label(&self) -> String {
        match self {
            Op::Dense(d) => match &d.conv {
                Some((g, groups)) if *groups == g.c && *groups > 1 => {
                    format!("int8 depthwise k{} s{}", g.kh, g.sh)
                }
                Some((g, groups)) => format!("int8 conv k{} s{} g{groups}", g.kh, g.sh),
                None => "int8 gemm".into(),
            },
            Op::Quantize { .. } => "quantize".into(),
            Op::Requant { relu, .. } => format!("requant relu={relu}"),
            Op::MaxPool { .. } => "max pool".into(),
            Op::AvgPool { .. } => "avg pool".into(),
            Op::GlobalAvg { .. } => "global avg".into(),
            Op::Add { .. } => "add".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Affine { .. } => "float affine".into(),
        }
    }

    /// The values read.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Op::Quantize { .. } => vec![],
            Op::Dense(d) => vec![d.x],
            Op::Add { a, b, .. } => vec![*a, *b],
            Op::Concat { xs, .. } => xs.iter().map(|p| p.0).collect(),
            Op::Requant { x, .. }
            | Op::MaxPool { x, .. }
            | Op::AvgPool { x, .. }
            | Op::GlobalAvg { x, .. }
            | Op::Slice { x, .. }
            | Op::Pad { x, .. }
            | Op::Affine { x, .. } => vec![*x],
        }
    }
}

/// The environment variable that turns the int8 engine off when set to `0` (or `off`,
/// `false`, `no`): QDQ models then run on the float path.
pub const INT8_ENV: &str = "SPLITNAS_INT8";

/// Process-wide setting: 0 not read yet, 1 on, 2 off.
static PROCESS: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static THREAD: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether models loaded on this thread may use the int8 engine: this thread's
/// [`with_int8`] override, else [`INT8_ENV`] (on unless it says `0`, `off`, `false`, `no`).
pub fn int8_enabled() -> bool {
    if let Some(on) = THREAD.with(Cell::get) {
        return on;
    }
    match PROCESS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let off = std::env::var(INT8_ENV).is_ok_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "off" | "false" | "no"
                )
            });
            PROCESS.store(if off { 2 } else { 1 }, Ordering::Relaxed);
            !off
        }
    }
}

/// Runs `f` with the int8 engine on or off for models loaded on this thread (tests
/// comparing the engine with the float path).
pub fn with_int8<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<bool>);
    impl Drop for Reset {
        fn drop(&mut self) {
            THREAD.with(|t| t.set(self.0));
        }
    }
    let _reset = Reset(THREAD.with(|t| t.replace(Some(on))));
    f()
}
