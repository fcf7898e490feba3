//! The execution plan: run-time steps over `Tensor<B, 4>` values (see [`crate::value`]),
//! built once at load time, and their execution.

use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{activation::relu, Slice, Tensor};

use crate::host::{self, Axis, Reduce};
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
            | Step::MaxPool { x, .. }
            | Step::AvgPool { x, .. }
            | Step::ReduceMean { x, .. }
            | Step::Slice { x, .. }
            | Step::Pad { x, .. }
            | Step::Reshape { x, .. }
            | Step::Gemm { x, .. }
            | Step::BatchNorm { x, .. } => vec![*x],
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
    pub out: usize,
    /// Values whose last reader this step is (freed after it).
    pub last_use: Vec<usize>,
}

fn physical(shape: &[Dim], n: usize) -> [usize; 4] {
    let mut p = [1; 4];
    for (i, d) in shape.iter().enumerate().take(4) {
        p[i] = d.at(n);
    }
    p
}

/// Pools the host kernels cover: floor mode, and every window holds an image element.
fn host_pool(kernel: &[usize; 2], padding: &[usize; 2], ceil: bool) -> bool {
    !ceil && (0..2).all(|i| 2 * padding[i] <= kernel[i])
}

fn pool_axes(kernel: &[usize; 2], stride: &[usize; 2], padding: &[usize; 2]) -> (Axis, Axis) {
    let axis = |i: usize| Axis {
        k: kernel[i],
        s: stride[i],
        p: padding[i],
    };
    (axis(0), axis(1))
}

/// Runs the plan on `input` (value 0) with batch size `n`; returns value `output`.
pub(crate) fn execute<B: Backend>(
    plan: &[Planned<B>],
    values_len: usize,
    input: Tensor<B, 4>,
    output: usize,
    n: usize,
) -> Tensor<B, 4> {
    let mut values: Vec<Option<Tensor<B, 4>>> = vec![None; values_len];
    values[0] = Some(input);
    let profile = std::env::var_os("SPLITNAS_PROFILE").is_some();
    let on_host = host::is_host::<B>();
    let mut times: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for p in plan {
        let t0 = std::time::Instant::now();
        let get = |values: &Vec<Option<Tensor<B, 4>>>, v: usize| -> Tensor<B, 4> {
            values[v]
                .clone()
                .expect("the plan defines every value before its use")
        };
        let operand = |values: &Vec<Option<Tensor<B, 4>>>, o: &Operand<B>| match o {
            Operand::Value(v) => get(values, *v),
            Operand::Const(t) => t.clone(),
        };
        let y = match &p.step {
            Step::Conv {
                x,
                w,
                b,
                opts,
                pre_pad,
            } => {
                let mut x = get(&values, *x);
                if let Some([t, bo, l, r]) = pre_pad {
                    x = x.pad((*l, *r, *t, *bo), PadMode::Constant(0.0));
                }
                conv2d(x, w.clone(), b.clone(), opts.clone())
            }
            Step::Relu(x) => relu(get(&values, *x)),
            Step::MaxPool {
                x,
                kernel,
                stride,
                padding,
                dilation,
                ceil,
            } => {
                let x = get(&values, *x);
                if on_host && host_pool(kernel, padding, *ceil) && *dilation == [1, 1] {
                    let (rows, cols) = pool_axes(kernel, stride, padding);
                    host::pool(x, rows, cols, Reduce::Max)
                } else {
                    max_pool2d(x, *kernel, *stride, *padding, *dilation, *ceil)
                }
            }
            Step::AvgPool {
                x,
                kernel,
                stride,
                padding,
                include_pad,
                ceil,
            } => {
                let x = get(&values, *x);
                if on_host && host_pool(kernel, padding, *ceil) {
                    let (rows, cols) = pool_axes(kernel, stride, padding);
                    host::pool(x, rows, cols, Reduce::Avg(*include_pad))
                } else {
                    avg_pool2d(x, *kernel, *stride, *padding, *include_pad, *ceil)
                }
            }
            Step::GlobalAvgPool(x) => get(&values, *x).mean_dim(3).mean_dim(2),
            Step::ReduceMean { x, axes, out } => {
                let mut t = get(&values, *x);
                for &a in axes {
                    t = t.mean_dim(a);
                }
                t.reshape(physical(out, n))
            }
            Step::Add(a, b) => operand(&values, a).add(operand(&values, b)),
            Step::Mul(a, b) => operand(&values, a).mul(operand(&values, b)),
            Step::Concat { xs, axis } => {
                Tensor::cat(xs.iter().map(|&v| get(&values, v)).collect(), *axis)
            }
            Step::Slice { x, slices } => get(&values, *x).slice(slices.clone()),
            Step::Pad { x, pads, mode } => {
                let mode = match mode {
                    PadKind::Constant(v) => PadMode::Constant(*v),
                    PadKind::Reflect => PadMode::Reflect,
                    PadKind::Edge => PadMode::Edge,
                };
                get(&values, *x).pad(pads.to_vec(), mode)
            }
            Step::Reshape { x, out } => get(&values, *x).reshape(physical(out, n)),
            Step::Gemm { x, w, b, out } => {
                let [rows, k, _, _] = get(&values, *x).dims();
                let y = get(&values, *x).reshape([rows, k]).matmul(w.clone());
                let y = match b {
                    Some(b) => y.add(b.clone()),
                    None => y,
                };
                y.reshape([rows, *out, 1, 1])
            }
            Step::BatchNorm { x, scale, shift } => {
                get(&values, *x).mul(scale.clone()).add(shift.clone())
            }
        };
        if profile {
            let y = y.clone();
            let _ = B::sync(&y.device());
            let key = format!("{:?}", std::mem::discriminant(&p.step));
            let label = match &p.step {
                Step::Conv { opts, w, .. } => format!("Conv g{} k{}", opts.groups, w.dims()[2]),
                Step::Relu(_) => "Relu".into(),
                Step::MaxPool { .. } => "MaxPool".into(),
                Step::AvgPool { .. } => "AvgPool".into(),
                Step::Add(..) => "Add".into(),
                Step::Concat { .. } => "Concat".into(),
                Step::Slice { .. } => "Slice".into(),
                _ => key,
            };
            let e = times.entry(label).or_default();
            e.0 += t0.elapsed().as_secs_f64() * 1e3;
            e.1 += 1;
        }
        values[p.out] = Some(y);
        for &v in &p.last_use {
            if v != output {
                values[v] = None;
            }
        }
    }
    if profile {
        for (k, (ms, c)) in &times {
            eprintln!("{k:>20}: {ms:8.2} ms over {c} steps");
        }
    }
    values[output].take().expect("the plan defines the output")
}
