//! One search iteration (the architecture step, then the weight step) over the shards of
//! a [`Parallel`] step: each local shard's gradient, the mean over all shards, one
//! optimizer step on it. With one shard it is the plain DARTS iteration.

use crate::architect::{arch_grads_first, arch_grads_second, weight_grads, Batch, Order};
use crate::budget::Guard;
use crate::error::TrainError;
use crate::parallel::Parallel;
use crate::search::SearchRecipe;
use crate::steps::{argmax_correct, clip_grad_norm, scalar};
use crate::supernet::Supernet;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// What the weight step saw, summed over every shard of every worker.
pub(crate) struct Seen {
    /// Sum over images of the cross-entropy.
    pub loss_sum: f64,
    /// Images classified right.
    pub correct: usize,
    /// Images.
    pub images: usize,
}

/// The step's inputs that do not change within an epoch.
pub(crate) struct Settings<'a, B: AutodiffBackend> {
    pub recipe: &'a SearchRecipe,
    pub lr: f64,
    pub search_arch: bool,
    pub guard: &'a Option<Guard<B>>,
    pub classes: usize,
}

/// Runs one iteration on the weight-half batch `train` (labels `labels`) and the
/// architecture-half batch `valid`; `None` when the batch has fewer images than shards
/// (every worker skips it alike). `sel_rng` draws the channel selection of a single
/// shard; with several shards each draws from its own stream seeded by `shard_seed`, so
/// that a worker's shard sees what it would see in [`Parallel::accumulating`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn iteration<B, OW, OA>(
    par: &Parallel,
    set: &Settings<'_, B>,
    mut net: Supernet<B>,
    w_optim: &mut OW,
    a_optim: &mut OA,
    train: Batch<B>,
    valid: Option<Batch<B>>,
    labels: &[usize],
    sel_rng: &mut StdRng,
    shard_seed: u64,
) -> Result<(Supernet<B>, Option<Seen>), TrainError>
where
    B: AutodiffBackend,
    OW: Optimizer<Supernet<B>, B> + Clone,
    OA: Optimizer<Supernet<B>, B>,
{
    let n = labels.len();
    let Some(rows): Option<Vec<_>> = par.local().map(|s| par.rows(n, s)).collect() else {
        return Ok((net, None));
    };
    let shard = Parallel::shard::<B>;
    let mut rngs: Vec<StdRng> = par
        .local()
        .map(|s| StdRng::seed_from_u64(Parallel::shard_seed(shard_seed, s)))
        .collect();
    let single = par.count() == 1;
    let r = set.recipe;
    if let (true, Some(valid)) = (set.search_arch, &valid) {
        let mut per = Vec::with_capacity(rows.len());
        for (rows, rng) in rows.iter().zip(&mut rngs) {
            let rng = if single { &mut *sel_rng } else { rng };
            let (v, t) = (shard(valid, rows), shard(&train, rows));
            let (grads, _) = match r.order {
                Order::First => arch_grads_first(&net, v, rng),
                Order::Second => arch_grads_second(&net, w_optim, set.lr, t, v, rng),
            };
            per.push(grads);
        }
        let grads = par.mean(&net, per)?;
        // the penalty depends on alphas alone: added once to the mean
        let grads = match set.guard {
            Some(g) => g.add_penalty(&net, grads),
            None => grads,
        };
        net = a_optim.step(r.arch_lr, net, grads);
    }
    let mut per = Vec::with_capacity(rows.len());
    let mut extras = Vec::with_capacity(rows.len());
    for (rows, rng) in rows.iter().zip(&mut rngs) {
        let rng = if single { &mut *sel_rng } else { rng };
        let (grads, loss, logits) = weight_grads(&net, shard(&train, rows), rng);
        let loss = scalar(loss.inner()) as f64;
        let l: Vec<f32> = logits.inner().into_data().iter::<f32>().collect();
        let correct = argmax_correct(&l, &labels[rows.clone()], set.classes);
        per.push(grads);
        extras.push(vec![
            loss * rows.len() as f64,
            correct as f64,
            rows.len() as f64,
        ]);
    }
    let (mut grads, sums) = par.mean_with(&net, per, &extras)?;
    clip_grad_norm(&net.weights, &mut grads, r.grad_clip);
    let seen = Seen {
        loss_sum: sums[0],
        correct: sums[1].round() as usize,
        images: sums[2].round() as usize,
    };
    if !(seen.loss_sum.is_finite()) {
        // the caller names the epoch and batch; nothing is stepped
        return Ok((net, Some(seen)));
    }
    net = w_optim.step(set.lr, net, grads);
    Ok((net, Some(seen)))
}
