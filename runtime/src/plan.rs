//! The execution plan: the run-time steps over `Tensor<B, 4>` values (see
//! [`crate::value`]) that the op builders emit at load time, and the passes over the
//! finished list: ReLU -> Conv folding and marking where each value is read last.

use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Slice, Tensor};
use std::collections::HashMap;

use crate::hostconv::Geom;
use crate::value::Dim;

/// A step input: a run-time value or a constant prepared at load time.
#[derive(Clone, Debug)]
pub(crate) enum Operand<B: Backend> {
    /// Run-time value id.
    Value(usize),
    /// Constant (physical 4-D layout, broadcastable).
    Const(Tensor<B, 4>),
}

/// Padding mode of [`Step::Pad`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum PadKind {
    Constant(f32),
    Reflect,
    Edge,
}

/// Scale and zero point of a run-time [`Step::Quantize`] / [`Step::Dequantize`].
#[derive(Clone, Debug)]
pub(crate) enum QParams<B: Backend> {
    /// Per tensor.
    Scalar { scale: f32, zero: f32 },
    /// Per axis: both broadcastable to the input (physical 4-D layout).
    Tensor {
        scale: Tensor<B, 4>,
        zero: Tensor<B, 4>,
    },
}

/// The convolutions [`crate::hostconv`] covers, with their weights in host memory.
#[derive(Clone, Debug)]
pub(crate) enum HostKind {
    /// `w [C, 1, kh, kw]`, output `[N, C, g.oh, g.ow]`.
    Depthwise {
        w: Vec<f32>,
        b: Option<Vec<f32>>,
        g: Geom,
    },
    /// Group 1, any kernel: `w [m, C * kh * kw]`, `g.c` = C, output `[N, m, g.oh, g.ow]`.
    Dense {
        w: Vec<f32>,
        b: Option<Vec<f32>>,
        m: usize,
        g: Geom,
    },
    /// 1x1, no padding: `w [m, K]`, output `[N, m, (H - 1) / sh + 1, (W - 1) / sw + 1]`.
    Pointwise {
        w: Vec<f32>,
        b: Option<Vec<f32>>,
        m: usize,
        stride: [usize; 2],
    },
}

/// One run-time operation.
#[derive(Clone, Debug)]
pub(crate) enum Step<B: Backend> {
    Conv {
        x: usize,
        w: Tensor<B, 4>,
        b: Option<Tensor<B, 1>>,
        opts: ConvOptions<2>,
        /// Asymmetric padding applied before the convolution: (top, bottom, left, right).
        pre_pad: Option<[usize; 4]>,
        /// ReLU applied to `x` first (a fused ReLU -> Conv pair).
        relu_in: bool,
    },
    /// A convolution the host kernels of [`crate::hostconv`] run (CPU backends only).
    HostConv {
        x: usize,
        kind: HostKind,
        relu_in: bool,
    },
    Relu(usize),
    MaxPool {
        x: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        ceil: bool,
    },
    AvgPool {
        x: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        include_pad: bool,
        ceil: bool,
    },
    GlobalAvgPool(usize),
    ReduceMean {
        x: usize,
        axes: Vec<usize>,
        out: Vec<Dim>,
    },
    Add(Operand<B>, Operand<B>),
    Mul(Operand<B>, Operand<B>),
    Concat {
        xs: Vec<usize>,
        axis: usize,
    },
    Slice {
        x: usize,
        slices: [Slice; 4],
    },
    Pad {
        x: usize,
        pads: [(usize, usize); 4],
        mode: PadKind,
    },
    Reshape {
        x: usize,
        out: Vec<Dim>,
    },
    /// `x [N, K] @ w [K, M] + b [1, M]`.
    Gemm {
        x: usize,
        w: Tensor<B, 2>,
        b: Option<Tensor<B, 2>>,
        out: usize,
    },
    /// Inference BatchNorm as `x * scale + shift`, both `[1, C, 1, 1]`.
    BatchNorm {
        x: usize,
        scale: Tensor<B, 4>,
        shift: Tensor<B, 4>,
    },
    /// `QuantizeLinear`: `clamp(round_half_even(x / scale) + zero, lo, hi)`, the integer
    /// codes held as floats.
    Quantize {
        x: usize,
        p: QParams<B>,
        lo: f32,
        hi: f32,
    },
    /// `DequantizeLinear`: `(x - zero) scale`.
    Dequantize {
        x: usize,
        p: QParams<B>,
    },
}

impl<B: Backend> Step<B> {
    /// Run-time values the step reads.
    pub(crate) fn inputs(&self) -> Vec<usize> {
        let op = |o: &Operand<B>| match o {
            Operand::Value(v) => Some(*v),
            Operand::Const(_) => None,
        };
        match self {
            Step::Conv { x, .. }
            | Step::HostConv { x, .. }
            | Step::MaxPool { x, .. }
            | Step::AvgPool { x, .. }
            | Step::ReduceMean { x, .. }
            | Step::Slice { x, .. }
            | Step::Pad { x, .. }
            | Step::Reshape { x, .. }
            | Step::Gemm { x, .. }
            | Step::BatchNorm { x, .. }
            | Step::Quantize { x, .. }
            | Step::Dequantize { x, .. } => vec![*x],
            Step::Relu(x) | Step::GlobalAvgPool(x) => vec![*x],
            Step::Add(a, b) | Step::Mul(a, b) => op(a).into_iter().chain(op(b)).collect(),
            Step::Concat { xs, .. } => xs.clone(),
        }
    }
}

/// A step with its output value and the node it comes from.
#[derive(Clone, Debug)]
pub(crate) struct Planned<B: Backend> {
    pub step: Step<B>,
    /// The ONNX node it runs (the first of a fused pair).
    pub name: std::sync::Arc<str>,
    pub out: usize,
    /// Values whose last reader this step is (freed after it).
    pub last_use: Vec<usize>,
}

/// Folds each ReLU whose only reader is a convolution into that convolution
/// (`relu_in`), so the pair runs as one step. `output` is never folded away.
pub(crate) fn fuse_relus<B: Backend>(plan: &mut Vec<Planned<B>>, output: usize) {
    let mut readers: HashMap<usize, usize> = HashMap::new();
    for p in plan.iter() {
        for v in p.step.inputs() {
            *readers.entry(v).or_default() += 1;
        }
    }
    let mut fused = vec![false; plan.len()];
    for i in 0..plan.len() {
        let (src, r) = match plan[i].step {
            Step::Relu(src) => (src, plan[i].out),
            _ => continue,
        };
        if r == output || readers.get(&r) != Some(&1) {
            continue;
        }
        let Some(j) = (i + 1..plan.len()).find(|&j| plan[j].step.inputs().contains(&r)) else {
            continue;
        };
        if let Step::Conv { x, relu_in, .. } | Step::HostConv { x, relu_in, .. } = &mut plan[j].step
        {
            if !*relu_in {
                *x = src;
                *relu_in = true;
                fused[i] = true;
            }
        }
    }
    let mut i = 0;
    plan.retain(|_| {
        i += 1;
        !fused[i - 1]
    });
}

/// Records in each step the values it reads for the last time, so the executors free
/// them after it.
pub(crate) fn mark_last_uses<B: Backend>(plan: &mut [Planned<B>]) {
    let mut last: HashMap<usize, usize> = HashMap::new();
    for (i, p) in plan.iter().enumerate() {
        for v in p.step.inputs() {
            last.insert(v, i);
        }
    }
    for (v, i) in last {
        plan[i].last_use.push(v);
    }
}
