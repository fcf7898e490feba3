//! Execution: one step on Burn tensors (or the host kernels of [`crate::hostconv`] on
//! the CPU backends), and the plan run op after op on the calling thread. [`workers`]
//! runs the same steps on several one-thread workers.

pub(crate) mod workers;

use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::PadMode;
use burn::tensor::{activation::relu, Tensor, TensorData};

use crate::host::{self, Axis, Reduce};
use crate::hostconv;
use crate::plan::{HostKind, Operand, PadKind, Planned, QParams, Step};
use crate::value::Dim;

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

/// Runs a [`Step::HostConv`] on the host.
fn host_conv<B: Backend>(x: Tensor<B, 4>, kind: &HostKind, relu_in: bool) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let (y, dims) = host::with_floats(x, |xs| match kind {
        HostKind::Depthwise { w: wt, b, g } => (
            hostconv::depthwise(xs, n, wt, b.as_deref(), g, relu_in),
            [n, c, g.oh, g.ow],
        ),
        HostKind::Dense { w: wt, b, m, g } => (
            hostconv::dense(xs, n, wt, *m, b.as_deref(), g, relu_in),
            [n, *m, g.oh, g.ow],
        ),
        HostKind::Pointwise {
            w: wt,
            b,
            m,
            stride,
        } => {
            let (oh, ow) = ((h - 1) / stride[0] + 1, (w - 1) / stride[1] + 1);
            let sub = (*stride != [1, 1]).then(|| hostconv::subsample(xs, n * c, [h, w], *stride));
            let input = sub.as_deref().unwrap_or(xs);
            (
                hostconv::pointwise(input, n, oh * ow, wt, *m, b.as_deref(), relu_in),
                [n, *m, oh, ow],
            )
        }
    });
    Tensor::from_data(TensorData::new(y, dims), &device)
}

fn operand<B: Backend>(
    get: &mut impl FnMut(usize) -> Tensor<B, 4>,
    o: &Operand<B>,
) -> Tensor<B, 4> {
    match o {
        Operand::Value(v) => get(*v),
        Operand::Const(t) => t.clone(),
    }
}

/// Runs one step; `get` hands out its input values.
pub(crate) fn run_step<B: Backend>(
    step: &Step<B>,
    get: &mut impl FnMut(usize) -> Tensor<B, 4>,
    n: usize,
    on_host: bool,
) -> Tensor<B, 4> {
    match step {
        Step::Conv {
            x,
            w,
            b,
            opts,
            pre_pad,
            relu_in,
        } => {
            let mut x = get(*x);
            if *relu_in {
                x = relu(x);
            }
            if let Some([t, bo, l, r]) = pre_pad {
                x = x.pad((*l, *r, *t, *bo), PadMode::Constant(0.0));
            }
            conv2d(x, w.clone(), b.clone(), opts.clone())
        }
        Step::HostConv { x, kind, relu_in } => host_conv(get(*x), kind, *relu_in),
        Step::Relu(x) => relu(get(*x)),
        Step::MaxPool {
            x,
            kernel,
            stride,
            padding,
            dilation,
            ceil,
        } => {
            let x = get(*x);
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
            let x = get(*x);
            if on_host && host_pool(kernel, padding, *ceil) {
                let (rows, cols) = pool_axes(kernel, stride, padding);
                host::pool(x, rows, cols, Reduce::Avg(*include_pad))
            } else {
                avg_pool2d(x, *kernel, *stride, *padding, *include_pad, *ceil)
            }
        }
        Step::GlobalAvgPool(x) => get(*x).mean_dim(3).mean_dim(2),
        Step::ReduceMean { x, axes, out } => {
            let mut t = get(*x);
            for &a in axes {
                t = t.mean_dim(a);
            }
            t.reshape(physical(out, n))
        }
        Step::Add(a, b) => operand(get, a).add(operand(get, b)),
        Step::Mul(a, b) => operand(get, a).mul(operand(get, b)),
        Step::Concat { xs, axis } => Tensor::cat(xs.iter().map(|&v| get(v)).collect(), *axis),
        Step::Slice { x, slices } => get(*x).slice(slices.clone()),
        Step::Pad { x, pads, mode } => {
            let mode = match mode {
                PadKind::Constant(v) => PadMode::Constant(*v),
                PadKind::Reflect => PadMode::Reflect,
                PadKind::Edge => PadMode::Edge,
            };
            get(*x).pad(pads.to_vec(), mode)
        }
        Step::Reshape { x, out } => get(*x).reshape(physical(out, n)),
        Step::Gemm { x, w, b, out } => {
            let x = get(*x);
            let [rows, k, _, _] = x.dims();
            let y = x.reshape([rows, k]).matmul(w.clone());
            let y = match b {
                Some(b) => y.add(b.clone()),
                None => y,
            };
            y.reshape([rows, *out, 1, 1])
        }
        Step::BatchNorm { x, scale, shift } => get(*x).mul(scale.clone()).add(shift.clone()),
        Step::Quantize { x, p, lo, hi } => {
            let x = get(*x);
            let q = match p {
                QParams::Scalar { scale, zero } => x.div_scalar(*scale).round().add_scalar(*zero),
                QParams::Tensor { scale, zero } => x.div(scale.clone()).round().add(zero.clone()),
            };
            q.clamp(*lo, *hi)
        }
        Step::Dequantize { x, p } => {
            let x = get(*x);
            match p {
                QParams::Scalar { scale, zero } => x.sub_scalar(*zero).mul_scalar(*scale),
                QParams::Tensor { scale, zero } => x.sub(zero.clone()).mul(scale.clone()),
            }
        }
    }
}

/// Runs the plan on `input` (value 0) with batch size `n`; returns value `output`.
/// `profile`: print the time per op kind (`SPLITNAS_PROFILE=1`); `timer`: gets the
/// seconds of every step, in plan order (each step synchronized before the next).
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute<B: Backend>(
    plan: &[Planned<B>],
    values_len: usize,
    input: Tensor<B, 4>,
    output: usize,
    n: usize,
    profile: bool,
    on_host: bool,
    mut timer: Option<&mut Vec<f64>>,
) -> Tensor<B, 4> {
    let mut values: Vec<Option<Tensor<B, 4>>> = vec![None; values_len];
    values[0] = Some(input);
    let mut times: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for p in plan {
        let t0 = std::time::Instant::now();
        let inputs = p.step.inputs();
        // values this step reads for the last time, with the reads still to come: the
        // last read moves the tensor out (so a kernel that owns its input, like flex's
        // in-place ops or the host kernels, does not copy it)
        let mut last: Vec<(usize, usize)> = p
            .last_use
            .iter()
            .filter(|&&v| v != output)
            .map(|&v| (v, inputs.iter().filter(|&&u| u == v).count()))
            .collect();
        let mut get = |v: usize| {
            let mut remaining = 0;
            for e in last.iter_mut().filter(|e: &&mut (usize, usize)| e.0 == v) {
                e.1 -= 1;
                remaining = e.1 + 1;
            }
            if remaining == 1 {
                values[v]
                    .take()
                    .expect("the plan defines every value before its use")
            } else {
                values[v]
                    .clone()
                    .expect("the plan defines every value before its use")
            }
        };
        let y = run_step(&p.step, &mut get, n, on_host);
        if let Some(t) = timer.as_deref_mut() {
            let _ = B::sync(&y.device());
            t.push(t0.elapsed().as_secs_f64());
        }
        if profile {
            let y = y.clone();
            let _ = B::sync(&y.device());
            let key = format!("{:?}", std::mem::discriminant(&p.step));
            let label = match &p.step {
                Step::Conv { opts, w, .. } => format!("Conv g{} k{}", opts.groups, w.dims()[2]),
                Step::HostConv { kind, .. } => match kind {
                    HostKind::Depthwise { g, .. } => format!("host depthwise k{}", g.kh),
                    HostKind::Dense { g, .. } => format!("host dense k{}", g.kh),
                    HostKind::Pointwise { w, m, stride, .. } => {
                        let [n, _, h, wd] = y.dims();
                        let _ = n;
                        format!(
                            "host pointwise {}x{} {}x{} /{}",
                            w.len() / m,
                            m,
                            h,
                            wd,
                            stride[0]
                        )
                    }
                },
                Step::Relu(_) => "Relu".into(),
                Step::MaxPool { .. } => "MaxPool".into(),
                Step::AvgPool { .. } => "AvgPool".into(),
                Step::Add(..) => "Add".into(),
                Step::Concat { .. } => "Concat".into(),
                Step::Slice { .. } => "Slice".into(),
                Step::Quantize { .. } => "QuantizeLinear".into(),
                Step::Dequantize { .. } => "DequantizeLinear".into(),
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
