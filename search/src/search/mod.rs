//! Channel-split differentiable architecture search (`splitnas search`).
//!
//! The training images (the first `train_limit`) are split into a weight half (the first
//! `train_portion`) and an architecture half (the rest). Each iteration takes one batch
//! of each: the architecture step (Adam on alphas/betas; skipped during the warm-up
//! epochs), then the weight step (SGD with momentum, cosine learning rate, global
//! gradient clip). After every epoch the architecture half is evaluated (inference
//! mode), the genotype derived, and the run checkpointed atomically.
//!
//! Output directory: `config.json`, `search.jsonl`, `genotype.json` (usable as
//! `splitnas train --genotype DIR/genotype.json`), `alphas.json` (softmaxed and raw
//! architecture weights), `checkpoint.json` + `checkpoint/`.

mod metrics;
mod options;
pub(crate) mod step;

pub use metrics::{AlphasFile, Entropy, EpochWeights, SearchMetrics};

pub use options::{
    check_options, read_search_config, stage_epochs, SearchConfig, SearchOptions, SearchRecipe,
};

use crate::budget::Guard;
use crate::checkpoint::{self, write_atomic};
use crate::data::{self, Augment, DataOptions, Dataset, DatasetKind, ImageSet};
use crate::device::{host_rss, kind_of, memory, mib, seeded, DeviceKind};
use crate::error::TrainError;
use crate::parallel::{Parallel, Workers};
use crate::steps::{
    argmax_correct, batch_tensors, cosine_lr, cross_entropy, epoch_seed, progress_bar, scalar,
};
use crate::supernet::Supernet;
use burn::backend::Flex;
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use splitnas_models::{CellPair, Genotype};
use std::path::PathBuf;
use std::time::Instant;

/// The genotype of a progressive search so far: the derived pairs of the finished stages,
/// then the current stage's pair for the current and every deeper stage. Stage 0 has no
/// reduction cell (the first one opens stage 1), so its (unused) reduction cell is
/// stage 1's. A plain search gives the uniform genotype of `current`.
pub fn compose_genotype(frozen: &[CellPair], current: &CellPair, stages: usize) -> Genotype {
    if stages <= 1 {
        return Genotype::uniform(current.normal.clone(), current.reduce.clone())
            .unwrap_or_else(|_| unreachable!("derived cells are valid"));
    }
    let mut pairs: Vec<CellPair> = frozen.to_vec();
    while pairs.len() < stages {
        pairs.push(current.clone());
    }
    pairs[0].reduce = pairs[1].reduce.clone();
    Genotype::new(pairs).unwrap_or_else(|_| unreachable!("derived cells are valid"))
}

/// Result of a finished search.
#[derive(Clone, Debug)]
pub struct SearchSummary {
    /// All epochs.
    pub metrics: Vec<SearchMetrics>,
    /// Final genotype.
    pub genotype: Genotype,
    /// Output directory.
    pub out: PathBuf,
}

/// Runs `splitnas search` on `device`.
pub fn search(device: DeviceKind, opts: &SearchOptions) -> Result<SearchSummary, TrainError> {
    if !opts.resume {
        check_options(opts)?;
    }
    crate::with_autodiff_backend!(device, search_on(opts))
}

/// Loss and accuracy of the supernet (inference mode) on images `idx` of `set`.
fn evaluate<B: Backend>(
    net: &Supernet<B>,
    set: &ImageSet,
    idx: &[usize],
    cfg: &SearchConfig,
    device: &B::Device,
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(0);
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    for chunk in idx.chunks(256) {
        let (x, y) = batch_tensors::<B>(set, chunk, (&cfg.mean, &cfg.std), None, &mut rng, device);
        let logits = net.forward(x, &mut rng);
        loss_sum += scalar(cross_entropy(logits.clone(), y)) as f64 * chunk.len() as f64;
        let l: Vec<f32> = logits.into_data().iter::<f32>().collect();
        let labels: Vec<usize> = chunk.iter().map(|&i| set.labels[i]).collect();
        correct += argmax_correct(&l, &labels, cfg.classes.len());
    }
    let n = idx.len().max(1) as f64;
    (loss_sum / n, correct as f64 / n)
}

fn load_data(cfg: &SearchConfig) -> Result<Dataset, TrainError> {
    let kind: DatasetKind = cfg.dataset.parse()?;
    Ok(data::load(
        kind,
        &DataOptions {
            dir: cfg.data_dir.clone(),
            train_limit: cfg.train_limit,
            test_limit: Some(1),
            seed: cfg.recipe.seed,
        },
    )?)
}

/// Runs the search on the autodiff backend `B`.
/// Runs of one process (trainings, searches, benchmarks) take turns: Burn's seed and
/// autodiff graphs are process-wide.
pub fn search_on<B: AutodiffBackend>(
    device: &B::Device,
    opts: &SearchOptions,
) -> Result<SearchSummary, TrainError> {
    let _turn = crate::exclusive_run();
    let out = &opts.out;
    // with several workers, rank 0 writes the run's files; the others only compute
    let writer = match &opts.workers {
        Some(Workers::Join { rank, .. }) => *rank == 0,
        _ => true,
    };
    let state = checkpoint::read_state::<SearchMetrics>(out)?;
    let (cfg, dataset) = match (&state, opts.resume) {
        (Some(s), false) => {
            let epochs = read_search_config(out)
                .map(|c| c.recipe.epochs)
                .unwrap_or(0);
            return Err(TrainError::Exists {
                dir: out.clone(),
                epoch: s.epoch,
                epochs,
            });
        }
        (None, true) => return Err(TrainError::NothingToResume(out.clone())),
        (Some(_), true) => {
            let cfg = read_search_config(out)?;
            let data = load_data(&cfg)?;
            (cfg, data)
        }
        (None, false) => {
            let mut data_opts = opts.data.clone();
            data_opts.test_limit = Some(1);
            let data = data::load(opts.dataset, &data_opts)?;
            if data.train.len() < 2 {
                return Err(TrainError::TooFewImages(data.train.len()));
            }
            let supernet = opts
                .supernet
                .clone()
                .with_classes(data.classes.len())
                .with_in_channels(data.train.channels)
                .with_image_size(data.train.side);
            supernet.validate()?;
            let (mean, std) = data.train.mean_std();
            let cfg = SearchConfig {
                supernet,
                recipe: opts.recipe.clone(),
                mean,
                std,
                classes: data.classes.clone(),
                dataset: data.kind.name().to_string(),
                data_dir: opts.data.dir.clone(),
                train_limit: opts.data.train_limit,
                budget: opts.budget.clone(),
            };
            // a budget no cell pair meets: said before anything is written
            if let Some(b) = &cfg.budget {
                b.table(&cfg.supernet, &[], opts.sram_oracle.as_ref())?;
            }
            if writer {
                std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
                    path: out.clone(),
                    source,
                })?;
                let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
                write_atomic(&out.join("config.json"), text.as_bytes())?;
            }
            (cfg, data)
        }
    };
    let r = cfg.recipe.clone();

    let stages = cfg.supernet.stages.max(1);
    let blocks = stage_epochs(r.epochs, stages);
    let stage_of = |epoch: usize| blocks.iter().position(|b| b.contains(&epoch)).unwrap_or(0);
    // Progressive search: the derived pairs of the finished stages. On resume they come
    // from search.jsonl (the genotype after each finished stage's last epoch).
    let mut frozen: Vec<CellPair> = vec![];
    if let Some(s) = &state {
        if stages > 1 && s.epoch > 0 {
            for stage in 0..stage_of(s.epoch - 1) {
                let last = blocks[stage].end;
                let m = s.metrics.get(last - 1).ok_or_else(|| TrainError::Corrupt {
                    path: out.join("checkpoint.json"),
                    problem: format!(
                        "has no metrics for epoch {last}, the end of stage {}",
                        stage + 1
                    ),
                })?;
                let g = Genotype::from_darts(&m.genotype).map_err(|e| TrainError::Corrupt {
                    path: out.join("checkpoint.json"),
                    problem: format!("epoch {last}'s genotype does not parse: {e}"),
                })?;
                frozen.push(g.stage(stage).clone());
            }
        }
    }
    // every worker joins before the first step (and starts from the same seeded weights)
    let par = match &opts.workers {
        Some(w) => w.start::<B>(device)?,
        None => Parallel::single(),
    };
    let mut net: Supernet<B> = seeded(
        device,
        r.seed,
        |d| cfg.supernet.init_stage::<Flex>(d, &frozen),
        |d| cfg.supernet.init_stage(d, &frozen),
    )?;
    let new_guard = |frozen: &[CellPair]| {
        cfg.budget
            .as_ref()
            .map(|b| Guard::<B>::new(b, &cfg.supernet, frozen, opts.sram_oracle.as_ref(), device))
            .transpose()
    };
    let mut guard = new_guard(&frozen)?;
    // the derived pair: DARTS' derivation, within the budget when there is one
    let derive_pair = |net: &Supernet<B>, guard: &Option<Guard<B>>| {
        let edge_norm = net.weights.edge_norm;
        let arch = net.arch.valid();
        let (normal, reduce) = (
            arch.cell_weights(false, edge_norm),
            arch.cell_weights(true, edge_norm),
        );
        match guard {
            Some(g) => g.derive(&normal, &reduce),
            None => Ok(CellPair {
                normal: normal.genotype(),
                reduce: reduce.genotype(),
            }),
        }
    };
    let new_w_optim = || {
        SgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: r.momentum,
                dampening: 0.0,
                nesterov: false,
            }))
            .with_weight_decay(Some(WeightDecayConfig::new(r.weight_decay as f32)))
            .init::<B, Supernet<B>>()
    };
    let new_a_optim = || {
        AdamConfig::new()
            .with_beta_1(r.arch_betas.0)
            .with_beta_2(r.arch_betas.1)
            .with_epsilon(1e-8)
            .with_weight_decay(Some(WeightDecayConfig::new(r.arch_weight_decay as f32)))
            .init::<B, Supernet<B>>()
    };
    let mut w_optim = new_w_optim();
    let mut a_optim = new_a_optim();
    let mut metrics: Vec<SearchMetrics> = vec![];
    let mut start_epoch = 0;
    if let Some(s) = &state {
        net = checkpoint::load_module(net, &out.join(&s.model), device)?;
        w_optim =
            checkpoint::load_optimizer::<B, Supernet<B>, _>(w_optim, &out.join(&s.optim), device)?;
        let arch_rel = s.arch_optim.clone().ok_or_else(|| TrainError::Corrupt {
            path: out.join("checkpoint.json"),
            problem: "names no architecture optimizer: not a search checkpoint".into(),
        })?;
        a_optim =
            checkpoint::load_optimizer::<B, Supernet<B>, _>(a_optim, &out.join(arch_rel), device)?;
        metrics = s.metrics.clone();
        start_epoch = s.epoch;
        // the SRAM model's correction at the last derived pair, as the uninterrupted
        // run had it after this epoch
        if guard.is_some() && s.epoch > 0 {
            derive_pair(&net, &guard)?;
        }
        println!(
            "resuming search {} after epoch {}/{} (settings from config.json)",
            out.display(),
            s.epoch,
            r.epochs
        );
    }

    let n = dataset.train.len();
    let n_w = ((n as f64 * r.train_portion).round() as usize).clamp(1, n - 1);
    let weight_half: Vec<usize> = (0..n_w).collect();
    let arch_half: Vec<usize> = (n_w..n).collect();
    let steps = weight_half
        .len()
        .div_ceil(r.batch_size)
        .min(arch_half.len().div_ceil(r.batch_size));
    let s = &cfg.supernet;
    println!(
        "searching on {} ({} weight / {} architecture images, {}x{}x{}): C={} L={} K={} selector={} identity={} order={:?} sru={} stages={}, {} epochs ({} warm-up{}), {} steps per epoch",
        cfg.dataset,
        weight_half.len(),
        arch_half.len(),
        s.in_channels,
        s.image_size,
        s.image_size,
        s.channels,
        s.layers,
        s.k_label(),
        s.selector.name(),
        s.identity,
        r.order,
        s.spatial_reconstruction,
        stages,
        r.epochs,
        r.warmup_epochs,
        if stages > 1 { " per stage" } else { "" },
        steps
    );
    let augment = Augment::standard(dataset.kind, dataset.train.side, 0);
    let env = |name: &str| -> Option<usize> { std::env::var(name).ok()?.parse().ok() };
    // test hooks: a kill after an epoch's checkpoint (of one worker when a rank is given)
    let (abort_after, abort_rank) = (
        env("SPLITNAS_ABORT_AFTER_EPOCH"),
        env("SPLITNAS_ABORT_WORKER"),
    );
    for epoch in start_epoch..r.epochs {
        let t0 = Instant::now();
        let stage = stage_of(epoch);
        if stage > frozen.len() {
            // Progressive search: freeze the finished stage's derived cells, deepen.
            frozen.push(derive_pair(&net, &guard)?);
            guard = new_guard(&frozen)?;
            net = seeded(
                device,
                epoch_seed(r.seed, epoch) ^ 0x57a6e,
                |d| cfg.supernet.init_stage::<Flex>(d, &frozen),
                |d| cfg.supernet.init_stage(d, &frozen),
            )?;
            w_optim = new_w_optim();
            a_optim = new_a_optim();
            println!(
                "stage {}/{}: stages 1-{} fixed to their derived cells, {} search cells",
                stage + 1,
                stages,
                stage,
                net.weights.cells.len()
            );
        }
        let block = &blocks[stage];
        let local = epoch - block.start;
        let lr = cosine_lr(r.lr, local, block.len());
        let search_arch = local >= r.warmup_epochs;
        if let Some(g) = &mut guard {
            let arch_epochs = block.len().saturating_sub(r.warmup_epochs);
            g.set_progress(local.checked_sub(r.warmup_epochs), arch_epochs);
        }
        let seed = epoch_seed(r.seed, epoch);
        B::seed(device, seed);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sel_rng = StdRng::seed_from_u64(seed ^ 0x5e1e_c7);
        let mut w_order = weight_half.clone();
        let mut a_order = arch_half.clone();
        w_order.shuffle(&mut rng);
        a_order.shuffle(&mut rng);
        let label = if stages > 1 {
            format!(
                "search {}/{} (stage {}/{stages})",
                epoch + 1,
                r.epochs,
                stage + 1
            )
        } else {
            format!("search {}/{}", epoch + 1, r.epochs)
        };
        let bar = progress_bar(opts.progress, steps as u64, &label);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for (b, (w_idx, a_idx)) in w_order
            .chunks(r.batch_size)
            .zip(a_order.chunks(r.batch_size))
            .enumerate()
        {
            let train = batch_tensors::<B>(
                &dataset.train,
                w_idx,
                (&cfg.mean, &cfg.std),
                Some(&augment),
                &mut rng,
                device,
            );
            let valid = search_arch.then(|| {
                batch_tensors::<B>(
                    &dataset.train,
                    a_idx,
                    (&cfg.mean, &cfg.std),
                    Some(&augment),
                    &mut rng,
                    device,
                )
            });
            let labels: Vec<usize> = w_idx.iter().map(|&i| dataset.train.labels[i]).collect();
            let settings = step::Settings {
                recipe: &r,
                lr,
                search_arch,
                guard: &guard,
                classes: cfg.classes.len(),
            };
            let (stepped, seen_now) = step::iteration(
                &par,
                &settings,
                net,
                &mut w_optim,
                &mut a_optim,
                train,
                valid,
                &labels,
                &mut sel_rng,
                epoch_seed(seed, b),
            )?;
            net = stepped;
            let Some(now) = seen_now else { continue };
            if !now.loss_sum.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    value: (now.loss_sum / now.images.max(1) as f64) as f32,
                    epoch: epoch + 1,
                    batch: b + 1,
                    last_good: epoch,
                    dir: out.clone(),
                });
            }
            correct += now.correct;
            loss_sum += now.loss_sum;
            seen += now.images;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.3}",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
        }
        bar.finish_and_clear();
        let valid_net = net.valid();
        let (valid_loss, valid_acc) = if writer {
            evaluate(&valid_net, &dataset.train, &arch_half, &cfg, device)
        } else {
            (f64::NAN, f64::NAN)
        };
        let edge_norm = valid_net.weights.edge_norm;
        let normal = valid_net.arch.cell_weights(false, edge_norm);
        let reduce = valid_net.arch.cell_weights(true, edge_norm);
        let current = derive_pair(&net, &guard)?;
        let cost = guard
            .as_ref()
            .map(|g| g.report(&net.arch, &current))
            .transpose()?;
        let genotype = compose_genotype(&frozen, &current, stages);
        let stage_label = (stages > 1).then_some(stage + 1);
        let learned = normal
            .learned_proportions()
            .zip(reduce.learned_proportions());
        let m = SearchMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            valid_loss,
            valid_acc,
            lr,
            arch_updated: search_arch,
            genotype: genotype.to_darts(),
            alpha_entropy: Entropy {
                normal: normal.entropy(),
                reduce: reduce.entropy(),
            },
            seconds: t0.elapsed().as_secs_f64(),
            weights: Some(EpochWeights {
                normal: normal.clone(),
                reduce: reduce.clone(),
            }),
            stage: stage_label,
            proportion: learned.as_ref().map(|(n, r)| Entropy {
                normal: mean(n),
                reduce: mean(r),
            }),
            host_peak_rss_mb: host_rss().map(|(_, peak)| mib(peak)),
            device_reserved_mb: kind_of::<B>().and_then(memory).map(|m| mib(m.reserved)),
            cost,
        };
        println!(
            "epoch {}/{} train_loss={:.4} train_acc={:.4} valid_loss={:.4} valid_acc={:.4} entropy={:.4}/{:.4} seconds={:.1}",
            m.epoch,
            r.epochs,
            m.train_loss,
            m.train_acc,
            m.valid_loss,
            m.valid_acc,
            m.alpha_entropy.normal,
            m.alpha_entropy.reduce,
            m.seconds
        );
        println!("genotype = {}", m.genotype);
        if let Some(c) = &m.cost {
            println!("cost: {}", c.line());
        }
        if let Some((n, r)) = &learned {
            println!(
                "learned proportion per edge: normal {} | reduce {}",
                proportion_list(n),
                proportion_list(r)
            );
        }
        metrics.push(m);
        let alphas = AlphasFile {
            epoch: epoch + 1,
            primitives: splitnas_models::Primitive::ALL
                .iter()
                .map(|p| p.name().to_string())
                .collect(),
            normal,
            reduce,
            stage: stage_label,
        };
        if writer {
            write_atomic(&out.join("genotype.json"), genotype.to_json().as_bytes())?;
            let text = serde_json::to_string_pretty(&alphas).unwrap_or_default();
            write_atomic(&out.join("alphas.json"), text.as_bytes())?;
            checkpoint::save_search_epoch::<B, _, _, _, _>(
                out,
                epoch + 1,
                &net,
                &w_optim,
                &a_optim,
                &metrics,
            )?;
        }
        par.barrier::<B>(device)?;
        if abort_after == Some(epoch + 1) && abort_rank.is_none_or(|k| k == par.rank()) {
            // Test hook: simulate a kill right after a checkpoint.
            std::process::abort();
        }
    }
    let current = derive_pair(&net, &guard)?;
    let genotype = compose_genotype(&frozen, &current, stages);
    par.finish::<B>()?;
    Ok(SearchSummary {
        metrics,
        genotype,
        out: out.clone(),
    })
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

fn proportion_list(v: &[f32]) -> String {
    v.iter()
        .map(|p| format!("{p:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progressive_genotype_repeats_the_current_pair_and_borrows_stage_1_reduce() {
        let pair = |name: &str| splitnas_models::zoo::by_name(name).unwrap().stages()[0].clone();
        let (a, b) = (pair("DARTS_V1"), pair("DARTS_V2"));
        let g = compose_genotype(std::slice::from_ref(&a), &b, 3);
        assert_eq!(g.stages().len(), 3);
        assert_eq!(g.stage(0).normal, a.normal);
        assert_eq!(g.stage(0).reduce, b.reduce);
        assert_eq!(g.stage(1), &b);
        assert_eq!(g.stage(2), &b);
        let g = compose_genotype(&[a.clone(), b.clone()], &a, 3);
        assert_eq!(g.stage(1), &b);
        assert_eq!(g.stage(2), &a);
        assert_eq!(
            compose_genotype(&[], &a, 1).stages(),
            std::slice::from_ref(&a)
        );
    }
}
