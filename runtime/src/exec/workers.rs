//! The worker scheduling on the CPU backends: one-thread rayon pools, one per core, and
//! two ways to share a batch among them: graph workers claiming independent steps (small
//! batches), or one image per worker (from [`IMAGE_BATCH`] images).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{execute, run_step};
use crate::plan::Planned;

/// On the CPU backends a batch smaller than [`IMAGE_BATCH`] runs with one worker per
/// core, at most this many, each taking whole ops on one thread (the independent ops of
/// a cell side by side): on one 32x32 image a DARTS op is 0.3-1.3 M multiply-adds, too
/// little to split over cores. Figures: `docs/benchmarks.md`.
pub const MAX_WORKERS: usize = 4;

/// On the CPU backends batches of this size and larger run image-parallel: one worker
/// per core, each running whole images op after op on one thread, so one image's values
/// stay in that core's cache and workers never wait for each other (faster than graph
/// workers over the whole batch from this size on; figures in `docs/benchmarks.md`).
pub const IMAGE_BATCH: usize = 4;

/// One-thread rayon pools, one per worker.
pub(crate) struct Pools(pub(crate) Vec<rayon::ThreadPool>);

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} one-thread pools", self.0.len())
    }
}

/// One pool of one thread per core, None when a pool cannot be built.
pub(crate) fn one_thread_pools() -> Option<Pools> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let pools = (0..cores)
        .map(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "splitnas-runtime".into())
                .build()
                .ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Pools(pools))
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
    // only the CPU backends with the host kernels on run here (their pools)
    let on_host = true;
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
            let y = execute(plan, values_len, x, output, n, false, true, None);
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
