//! The execution plan: run-time steps over `Tensor<B, 4>` values (see [`crate::value`]),
//! built once at load time, and their execution.

use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{activation::relu, Slice, Tensor, TensorData};
use std::collections::HashMap;

use crate::host::{self, Axis, Reduce};
use crate::hostconv::{self, Geom};
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
fn run_step<B: Backend>(
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
    }
}

/// Runs the plan on `input` (value 0) with batch size `n`; returns value `output`.
/// `profile`: print the time per op kind (`SPLITNAS_PROFILE=1`).
pub(crate) fn execute<B: Backend>(
    plan: &[Planned<B>],
    values_len: usize,
    input: Tensor<B, 4>,
    output: usize,
    n: usize,
    profile: bool,
) -> Tensor<B, 4> {
    let mut values: Vec<Option<Tensor<B, 4>>> = vec![None; values_len];
    values[0] = Some(input);
    let on_host = host::is_host::<B>();
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

/// Per-model data the two-worker executor needs, computed once at load time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Graph {
    /// For each step, the steps producing its inputs.
    deps: Vec<Vec<usize>>,
    /// For each value, how many reads the plan makes of it.
    reads: Vec<usize>,
    /// The order workers claim steps in: critical path first (the longest chain of
    /// readers after the step), then by depth (longest chain of producers).
    order: Vec<usize>,
}

impl Graph {
    pub(crate) fn new<B: Backend>(plan: &[Planned<B>], values_len: usize) -> Self {
        let mut producer = vec![None; values_len];
        let mut reads = vec![0; values_len];
        let mut deps = Vec::with_capacity(plan.len());
        for (i, p) in plan.iter().enumerate() {
            let inputs = p.step.inputs();
            for &v in &inputs {
                reads[v] += 1;
            }
            let mut d: Vec<usize> = inputs.iter().filter_map(|&v| producer[v]).collect();
            d.sort_unstable();
            d.dedup();
            deps.push(d);
            producer[p.out] = Some(i);
        }
        let mut depth = vec![0usize; plan.len()];
        for i in 0..plan.len() {
            depth[i] = deps[i].iter().map(|&d| depth[d] + 1).max().unwrap_or(0);
        }
        // height: the longest chain of readers after a step (critical path first)
        let mut height = vec![0usize; plan.len()];
        for i in (0..plan.len()).rev() {
            for &d in &deps[i] {
                height[d] = height[d].max(height[i] + 1);
            }
        }
        // a step's producers are higher than it, so this is a topological order; on
        // DARTS_V2 C=36 L=20 (2 workers, batch 1) 9.2-9.5 ms against 10.1-10.5 ms in
        // depth order
        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(height[i]), depth[i], i));
        Self { deps, reads, order }
    }
}

/// Sets `flag` when dropped during a panic, so the other worker stops waiting.
struct PanicFlag<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Runs `worker` once in each pool (the first on the calling thread) and waits for all;
/// a worker's panic is resumed here.
fn on_pools(pools: &[rayon::ThreadPool], worker: impl Fn() + Sync) {
    std::thread::scope(|scope| {
        let worker = &worker;
        let others: Vec<_> = pools[1..]
            .iter()
            .map(|pool| scope.spawn(move || pool.install(worker)))
            .collect();
        if let Some(pool) = pools.first() {
            pool.install(worker);
        }
        for other in others {
            if let Err(e) = other.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}

/// Runs the plan like [`execute`] with one worker per pool, each pool of one thread (so
/// Burn's kernels stay on that worker): workers claim steps critical path first ([`Graph`]) and wait (spinning) for the steps that produce their inputs. Independent ops of a cell
/// (the edges into a node, the nodes reading only the cell inputs) run side by side,
/// which one small image cannot do inside a single op without paying more for the
/// hand-off than the op costs. A value's last read moves it out of the table.
pub(crate) fn execute_parallel<B: Backend>(
    plan: &[Planned<B>],
    graph: &Graph,
    values_len: usize,
    input: Tensor<B, 4>,
    output: usize,
    n: usize,
    pools: &[rayon::ThreadPool],
) -> Tensor<B, 4> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let slots: Vec<Mutex<Option<Tensor<B, 4>>>> =
        (0..values_len).map(|_| Mutex::new(None)).collect();
    *slots[0].lock().expect("fresh lock") = Some(input);
    let left: Vec<AtomicUsize> = graph.reads.iter().map(|&r| AtomicUsize::new(r)).collect();
    let done: Vec<AtomicBool> = (0..plan.len()).map(|_| AtomicBool::new(false)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let on_host = host::is_host::<B>();
    let worker = || {
        let _flag = PanicFlag(&failed);
        loop {
            let Some(&i) = graph.order.get(next.fetch_add(1, Ordering::SeqCst)) else {
                return;
            };
            for &d in &graph.deps[i] {
                let mut spins = 0u32;
                while !done[d].load(Ordering::Acquire) {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    spins += 1;
                    if spins < 1 << 12 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
            let mut get = |v: usize| {
                let mut slot = slots[v].lock().unwrap_or_else(|e| e.into_inner());
                if v != output && left[v].fetch_sub(1, Ordering::SeqCst) == 1 {
                    slot.take()
                } else {
                    slot.clone()
                }
                .expect("the plan defines every value before its use")
            };
            let y = run_step(&plan[i].step, &mut get, n, on_host);
            *slots[plan[i].out].lock().unwrap_or_else(|e| e.into_inner()) = Some(y);
            done[i].store(true, Ordering::Release);
        }
    };
    on_pools(pools, worker);
    let y = slots[output]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    y.expect("the plan defines the output")
}

/// Runs the plan image by image, each image on one worker (one pool of one thread each)
/// with [`execute`], workers claiming images in order; the logits are concatenated back
/// in batch order. One image's values fit in a core's cache where a whole batch's do
/// not, and images need no hand-off between workers. (Chunks of 2 and 4 images were
/// slower than 1 on a 2-core x86: 321 and 356 ms against 318 ms at batch 32.)
pub(crate) fn execute_images<B: Backend>(
    plan: &[Planned<B>],
    values_len: usize,
    input: Tensor<B, 4>,
    output: usize,
    pools: &[rayon::ThreadPool],
) -> Tensor<B, 4> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let chunks = input.split(1, 0);
    let results: Vec<Mutex<Option<Tensor<B, 4>>>> =
        chunks.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || {
        let _flag = PanicFlag(&failed);
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= chunks.len() || failed.load(Ordering::Relaxed) {
                return;
            }
            let x = chunks[i].clone();
            let n = x.dims()[0];
            let y = execute(plan, values_len, x, output, n, false);
            *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(y);
        }
    };
    on_pools(pools, worker);
    let ys = results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every chunk ran")
        })
        .collect();
    Tensor::cat(ys, 0)
}
