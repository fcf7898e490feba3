//! Data-parallel steps: every batch is cut into `count` shards (contiguous rows, as even
//! as possible), each shard's gradient is computed by the worker that owns it, and the
//! workers' gradients are averaged with `burn-collective`'s all-reduce before the
//! optimizer step. The update is that of one worker computing the `count` shard gradients
//! in turn and averaging them ([`Parallel::accumulating`] is that worker: the reference
//! the tests compare with, and a way to halve a step's memory).
//!
//! Workers are processes, one per device: Burn 0.21's autodiff sweeps every graph of the
//! process at the end of a `backward()` (tracel-ai/burn#5573), so two workers cannot
//! share one. Each process registers as one node of `burn-collective`'s global mode (the
//! orchestrator's websocket address, its own data-service port); the same code joins
//! processes on one machine and on several. BatchNorm uses each shard's batch statistics;
//! the running statistics, used only by evaluation, are rank 0's (as with PyTorch's
//! `DataParallel`).

use crate::error::TrainError;
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorPrimitive};
use burn_collective::{
    all_reduce, finish_collective, register, AllReduceStrategy, CollectiveConfig, PeerId,
    ReduceOperation,
};
use std::ops::Range;

/// Where this process's worker meets the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The orchestrator, `ws://HOST:PORT` (`splitnas coordinator`, or the launcher of
    /// `--devices N`).
    pub coordinator: String,
    /// This worker's host as the others reach it.
    pub host: String,
    /// The port of this worker's tensor data service.
    pub data_port: u16,
}

/// How a run's steps are shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workers {
    /// This process computes every one of the shards in turn.
    Accumulate(usize),
    /// This process is worker `rank` of `count`, one shard each.
    Join {
        /// This worker (0 writes the run's files).
        rank: usize,
        /// Workers in all.
        count: usize,
        /// Where the workers meet.
        cluster: Cluster,
    },
}

impl Workers {
    /// The step sharing of this process on `device` (joins the other workers).
    pub fn start<B: AutodiffBackend>(&self, device: &B::Device) -> Result<Parallel, TrainError> {
        match self {
            Workers::Accumulate(n) => Ok(Parallel::accumulating(*n)),
            Workers::Join {
                rank,
                count,
                cluster,
            } => Parallel::join::<B>(*rank, *count, cluster, device),
        }
    }
}

/// The shards of a step this process computes, and how it averages them with the others.
#[derive(Debug)]
pub struct Parallel {
    rank: usize,
    count: usize,
    /// Shards computed here.
    local: Range<usize>,
    /// Registered with `burn-collective` (other processes hold the other shards).
    joined: bool,
}

impl Parallel {
    /// One process, one shard: the plain step.
    pub fn single() -> Self {
        Parallel {
            rank: 0,
            count: 1,
            local: 0..1,
            joined: false,
        }
    }

    /// One process computing all `count` shards in turn and averaging them.
    pub fn accumulating(count: usize) -> Self {
        Parallel {
            rank: 0,
            count: count.max(1),
            local: 0..count.max(1),
            joined: false,
        }
    }

    /// Worker `rank` of `count` processes, one shard each, registered with the orchestrator
    /// of `cluster` (blocks until every worker has registered).
    pub fn join<B: AutodiffBackend>(
        rank: usize,
        count: usize,
        cluster: &Cluster,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        quiet_logs();
        if count < 2 || rank >= count {
            return Err(TrainError::Parallel(format!(
                "worker {rank} of {count}: needs 2 or more workers and a rank below their count"
            )));
        }
        let parse = |what: &str, s: String| {
            s.parse()
                .map_err(|e| TrainError::Parallel(format!("{what} '{s}': {e}")))
        };
        let config = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(count as u32)
            .with_global_address(parse("coordinator", cluster.coordinator.clone())?)
            .with_node_address(parse(
                "worker address",
                format!("ws://{}:{}", cluster.host, cluster.data_port),
            )?)
            .with_data_service_port(cluster.data_port)
            // the ring splits a tensor into one slice per worker: tensors shorter than the
            // worker count fail; the tree has no such limit
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2));
        register::<B::InnerBackend>(PeerId::from(rank), device.clone(), config).map_err(|e| {
            TrainError::Parallel(format!(
                "worker {rank} could not join {}: {e:?}",
                cluster.coordinator
            ))
        })?;
        Ok(Parallel {
            rank,
            count,
            local: rank..rank + 1,
            joined: true,
        })
    }

    /// Shards per step.
    pub fn count(&self) -> usize {
        self.count
    }

    /// This worker's rank (0 writes the run's files).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The shards computed here.
    pub fn local(&self) -> Range<usize> {
        self.local.clone()
    }

    /// Rows of shard `s` in a batch of `n` rows: the first `n % count` shards get one
    /// more. `None` when a shard would be empty (a batch smaller than the shard count is
    /// skipped by every worker alike).
    pub fn rows(&self, n: usize, s: usize) -> Option<Range<usize>> {
        if n < self.count {
            return None;
        }
        let (base, extra) = (n / self.count, n % self.count);
        let start = s * base + s.min(extra);
        Some(start..start + base + usize::from(s < extra))
    }

    /// Shard `rows` of a batch (the batch itself when it is all of it).
    pub fn shard<B: Backend>(
        batch: &(Tensor<B, 4>, Tensor<B, 1, Int>),
        rows: &Range<usize>,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        if rows.start == 0 && rows.end == batch.1.dims()[0] {
            batch.clone()
        } else {
            (
                batch.0.clone().slice([rows.clone()]),
                batch.1.clone().slice([rows.clone()]),
            )
        }
    }

    /// The seed of shard `s`'s random draws (channel selection, drop-path) in a step whose
    /// seed is `step_seed`: the same in [`Self::accumulating`] and on the workers.
    pub fn shard_seed(step_seed: u64, s: usize) -> u64 {
        step_seed ^ (s as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)
    }

    /// The mean over all `count` shards of the gradients of `module`'s parameters, given
    /// this process's shards' gradients (`per_shard`, one per local shard). Every shard
    /// must have gradients for the same parameters.
    pub fn mean<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        per_shard: Vec<GradientsParams>,
    ) -> Result<GradientsParams, TrainError> {
        Ok(self.mean_with::<B, M>(module, per_shard, &[])?.0)
    }

    /// [`Self::mean`], and `extras` (numbers per local shard, the same count each)
    /// summed over every shard of every worker, carried by the same all-reduce.
    pub fn mean_with<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
        mut per_shard: Vec<GradientsParams>,
        extras: &[Vec<f64>],
    ) -> Result<(GradientsParams, Vec<f64>), TrainError> {
        let width = extras.first().map_or(0, Vec::len);
        let mut extra_sum = vec![0f64; width];
        for e in extras {
            for (s, v) in extra_sum.iter_mut().zip(e) {
                *s += v;
            }
        }
        if !self.joined && per_shard.len() == 1 {
            return Ok((per_shard.remove(0), extra_sum));
        }
        let mut sum: Option<(Tensor<B::InnerBackend, 1>, Vec<Slot>)> = None;
        for g in &per_shard {
            let (flat, layout) = flatten::<B, M>(module, g);
            let flat = flat.ok_or_else(|| {
                TrainError::Parallel("a shard's step produced no gradient".into())
            })?;
            sum = Some(match sum {
                None => (flat, layout),
                Some((s, l)) if l == layout => (s.add(flat), l),
                Some(_) => {
                    return Err(TrainError::Parallel(
                        "two shards have gradients for different parameters".into(),
                    ))
                }
            });
        }
        let (mut total, layout) =
            sum.ok_or_else(|| TrainError::Parallel("no shard computed here".into()))?;
        if self.joined {
            // the extras ride at the end of the gradients: one all-reduce per step
            let n = total.dims()[0];
            if width == 0 {
                total = self.all_sum::<B::InnerBackend>(total)?;
            } else {
                let e: Vec<f32> = extra_sum.iter().map(|&x| x as f32).collect();
                let e = Tensor::from_floats(e.as_slice(), &total.device());
                let both = self.all_sum::<B::InnerBackend>(Tensor::cat(vec![total, e], 0))?;
                extra_sum = both
                    .clone()
                    .slice([n..n + width])
                    .into_data()
                    .iter::<f64>()
                    .collect();
                total = both.slice([0..n]);
            }
        }
        let grads = unflatten::<B, M>(module, total.div_scalar(self.count as f64), &layout);
        Ok((grads, extra_sum))
    }

    /// `values` summed over the workers (each worker's local sums; for the log).
    pub fn sum_values<B: AutodiffBackend>(
        &self,
        values: &[f64],
        device: &B::Device,
    ) -> Result<Vec<f64>, TrainError> {
        if !self.joined {
            return Ok(values.to_vec());
        }
        let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        let t = Tensor::<B::InnerBackend, 1>::from_floats(v.as_slice(), device);
        let t = self.all_sum::<B::InnerBackend>(t)?;
        Ok(t.into_data().iter::<f64>().collect())
    }

    /// Returns when every worker has called it (after an epoch's checkpoint: a worker
    /// that stops after it leaves a checkpoint that has been written).
    pub fn barrier<B: AutodiffBackend>(&self, device: &B::Device) -> Result<(), TrainError> {
        self.sum_values::<B>(&[1.0], device).map(|_| ())
    }

    fn all_sum<B: Backend>(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>, TrainError> {
        let out = all_reduce::<B>(
            PeerId::from(self.rank),
            t.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| {
            TrainError::Parallel(format!(
                "worker {}: all-reduce failed ({e:?}); a worker stopped or the workers run different steps",
                self.rank
            ))
        })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// Leaves the collective (every worker at the end of its run).
    pub fn finish<B: AutodiffBackend>(&self) -> Result<(), TrainError> {
        if self.joined {
            finish_collective::<B::InnerBackend>(PeerId::from(self.rank)).map_err(|e| {
                TrainError::Parallel(format!("worker {} could not leave: {e:?}", self.rank))
            })?;
        }
        Ok(())
    }
}

/// Runs the orchestrator the workers register with, on `port` of every interface, until
/// the process ends (`splitnas coordinator`, or a thread of the `--devices` launcher).
pub fn run_coordinator(port: u16) -> Result<(), TrainError> {
    quiet_logs();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Parallel(format!("coordinator: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// Warnings and errors of the collective's websocket services on stderr, not their
/// per-transfer info lines (their server installs an info-level logger unless the process
/// has one).
fn quiet_logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .try_init();
}

/// One parameter's place in the flat gradient.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    id: ParamId,
    dims: Vec<usize>,
}

/// The gradients of `module`'s parameters present in `grads`, one after the other in
/// the module's order, and where each lies.
fn flatten<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> (Option<Tensor<B::InnerBackend, 1>>, Vec<Slot>) {
    struct Collect<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        parts: Vec<Tensor<B::InnerBackend, 1>>,
        layout: Vec<Slot>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let dims = g.dims().to_vec();
                let n: usize = dims.iter().product();
                self.parts.push(g.reshape([n]));
                self.layout.push(Slot { id: param.id, dims });
            }
        }
    }
    let mut c = Collect::<B> {
        grads,
        parts: vec![],
        layout: vec![],
    };
    module.visit(&mut c);
    let flat = (!c.parts.is_empty()).then(|| Tensor::cat(c.parts, 0));
    (flat, c.layout)
}

/// The gradients of `layout` cut back out of `flat`.
fn unflatten<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    flat: Tensor<B::InnerBackend, 1>,
    layout: &[Slot],
) -> GradientsParams {
    struct Place<'a, B: AutodiffBackend> {
        flat: Tensor<B::InnerBackend, 1>,
        layout: &'a [Slot],
        next: usize,
        offset: usize,
        out: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Place<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(slot) = self.layout.get(self.next).filter(|s| s.id == param.id) else {
                return;
            };
            let n: usize = slot.dims.iter().product();
            let dims: [usize; D] = std::array::from_fn(|i| slot.dims[i]);
            let g = self
                .flat
                .clone()
                .slice([self.offset..self.offset + n])
                .reshape(dims);
            self.out.register(param.id, g);
            self.offset += n;
            self.next += 1;
        }
    }
    let mut p = Place::<B> {
        flat,
        layout,
        next: 0,
        offset: 0,
        out: GradientsParams::new(),
    };
    module.visit(&mut p);
    p.out
}

#[cfg(test)]
mod tests;
