//! The supernet edge: a MixedOp that sends only a fraction of the channels through the
//! softmax(alpha)-weighted sum of the 8 DARTS operations (CSC-DARTS channel split).
//!
//! With partial factor K, C/K channels are *selected* and go through the operations; the
//! other channels *bypass* them (2x2 max pool on stride-2 edges) and are merged back.
//! K = 1 is plain DARTS. Which channels are selected, and how the two parts are merged,
//! is the job of the [`SelectorKind`] (a field of the MixedOp, so new selectors slot in
//! here without touching the supernet):
//!
//! - `split` (CSC-DARTS, default): the first C/K channels are selected; the output is
//!   `concat(ops, bypass)` followed by a channel shuffle with K groups, so that over the
//!   cell's edges every channel takes part in an operation.
//! - `random` (PC-DARTS-style random subset, for comparison): a fresh random subset of
//!   C/K channels per step and edge; each output channel keeps its position (processed
//!   channels are put back where they came from), so no shuffle is needed.
//! - `attention` (ADARTS): a small channel-attention module per edge ([`ChannelAttention`]:
//!   global average pool -> 1x1 (C -> C/4) -> ReLU -> 1x1 (C/4 -> C) -> sigmoid) scores
//!   every input channel per image; the C/K channels with the highest batch-mean score
//!   enter the operations, each multiplied by its own (per-image) score, so the attention
//!   module gets gradients through the selected channels; the rest bypass. Output
//!   channels keep their input positions (as with `random`), so the next layer sees a
//!   fixed channel order. The attention parameters belong to the weights: trained in the
//!   weight step, constant in the architecture step. Selected channels enter the
//!   operations in ascending channel order.

use crate::sru::SpatialReconstruction;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use splitnas_models::bn::{BatchNorm2d, BatchNorm2dConfig};
use splitnas_models::fastselect::{merge_channels, on_host, select_channels};
use splitnas_models::fastsum::weighted_sum;
use splitnas_models::ops::Op;
use splitnas_models::Primitive;

/// How a MixedOp picks the channels that enter the operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SelectorKind {
    /// Fixed split + channel shuffle (CSC-DARTS).
    #[default]
    Split,
    /// Random subset per step, channels keep their positions.
    Random,
    /// ADARTS: the channels with the highest channel-attention score, weighted by it.
    Attention,
}

impl SelectorKind {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            SelectorKind::Split => "split",
            SelectorKind::Random => "random",
            SelectorKind::Attention => "attention",
        }
    }
}

impl std::str::FromStr for SelectorKind {
    type Err = crate::error::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "split" => Ok(SelectorKind::Split),
            "random" => Ok(SelectorKind::Random),
            "attention" => Ok(SelectorKind::Attention),
            _ => Err(crate::error::UnknownName {
                what: "selector",
                value: s.to_string(),
                expected: "split, random or attention",
            }),
        }
    }
}

/// Channel shuffle with `groups` groups (ShuffleNet; PC-DARTS): `[N, C, H, W]` is viewed
/// as `[N, groups, C/groups, H, W]`, the two group axes are swapped, and flattened back.
/// Output channel `j * groups + g` is input channel `g * C/groups + j`.
///
/// # Shapes
/// `[N, C, H, W] -> [N, C, H, W]` (`groups` divides C)
pub fn channel_shuffle<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups <= 1 {
        return x;
    }
    let c = x.dims()[1];
    // One plane copy per channel on the CPU backends (see `models::fastselect`).
    select_channels(x, &shuffle_order(c, groups))
}

/// Input channel of every output channel of [`channel_shuffle`]: `order[j * groups + g]
/// = g * C/groups + j`.
pub fn shuffle_order(channels: usize, groups: usize) -> Vec<usize> {
    let per_group = channels / groups.max(1);
    (0..channels)
        .map(|o| (o % groups.max(1)) * per_group + o / groups.max(1))
        .collect()
}

/// Reduction ratio of [`ChannelAttention`]'s hidden layer (squeeze-and-excitation style;
/// ADARTS leaves it open): C/4 hidden units, at least 1.
pub const ATTENTION_REDUCTION: usize = 4;

/// Channel attention of the `attention` selector: global average pool, 1x1 convolution
/// (a linear layer on the pooled vector) C -> C/4, ReLU, 1x1 C/4 -> C, sigmoid.
#[derive(Module, Debug)]
pub struct ChannelAttention<B: Backend> {
    /// C -> C/4.
    pub squeeze: Linear<B>,
    /// C/4 -> C.
    pub excite: Linear<B>,
}

impl<B: Backend> ChannelAttention<B> {
    /// Attention on `channels` channels.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        let hidden = (channels / ATTENTION_REDUCTION).max(1);
        Self {
            squeeze: LinearConfig::new(channels, hidden).init(device),
            excite: LinearConfig::new(hidden, channels).init(device),
        }
    }

    /// Score in (0, 1) per image and channel.
    ///
    /// # Shapes
    /// `[N, C, H, W] -> [N, C]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [n, c, h, w] = x.dims();
        let pooled = x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]);
        sigmoid(self.excite.forward(relu(self.squeeze.forward(pooled))))
    }
}

/// One candidate operation of a MixedOp; pooling is followed by a BatchNorm without
/// affine in the supernet (DARTS).
#[derive(Module, Debug)]
pub struct SearchOp<B: Backend> {
    /// The operation (always affine-free BatchNorm inside).
    pub op: Op<B>,
    /// BN after max/avg pooling.
    pub bn: Option<BatchNorm2d<B>>,
}

impl<B: Backend> SearchOp<B> {
    /// # Shapes
    /// `[N, C, H, W] -> [N, C, ceil(H/s), ceil(W/s)]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = self.op.forward(x);
        match &self.bn {
            Some(bn) => bn.forward(y),
            None => y,
        }
    }
}

/// Candidate channel proportions of `--learn-proportion` (Slim-DARTS), as partial factors:
/// 1/2, 1/4 and 1/8 of the channels enter the operations.
pub const PROPORTION_KS: [usize; 3] = [2, 4, 8];

/// The operations of one partial factor K: the 7 non-`none` operations on C/K channels,
/// and the optional spatial reconstruction unit in front of them.
#[derive(Module, Debug)]
pub struct Branch<B: Backend> {
    /// The 7 operations other than `none`, in [`Primitive::ALL`] order (index i here is
    /// primitive i + 1). `none` contributes zeros and is not computed; its alpha still
    /// takes part in the softmax.
    pub ops: Vec<SearchOp<B>>,
    /// Partial factor K of this branch.
    pub partial_k: usize,
    /// Slim-DARTS spatial reconstruction of the selected channels (`--spatial-reconstruction`).
    pub sru: Option<SpatialReconstruction<B>>,
}

impl<B: Backend> Branch<B> {
    fn new(channels: usize, stride: usize, k: usize, sru: bool, device: &B::Device) -> Self {
        let c = channels / k;
        let ops = Primitive::ALL[1..]
            .iter()
            .map(|&p| {
                let pool = matches!(p, Primitive::MaxPool3x3 | Primitive::AvgPool3x3);
                SearchOp {
                    op: Op::new(p, c, stride, false, device),
                    bn: pool.then(|| BatchNorm2dConfig::new(c).with_affine(false).init(device)),
                }
            })
            .collect();
        Self {
            ops,
            partial_k: k,
            sru: sru.then(|| SpatialReconstruction::new(c, device)),
        }
    }

    /// SRU (when on), then the softmax(alpha)-weighted sum of the operations.
    fn op_sum(&self, x: Tensor<B, 4>, weights: Tensor<B, 1>) -> Tensor<B, 4> {
        let x = match &self.sru {
            Some(sru) => sru.forward(x),
            None => x,
        };
        // On the CPU backends the operations run side by side on the thread pool: with
        // the channel split each one is too small to keep both cores busy by itself.
        // The autodiff graph is built under Burn's lock and its backward order follows
        // the graph, not the threads, so results do not depend on the scheduling.
        let ys: Vec<Tensor<B, 4>> = if on_host::<B>() {
            self.ops
                .par_iter()
                .map(|op| op.forward(x.clone()))
                .collect()
        } else {
            self.ops.iter().map(|op| op.forward(x.clone())).collect()
        };
        if ys.is_empty() {
            return x;
        }
        // `weights[0]` is `none`'s: the operations' weights start at 1. One step on the
        // CPU backends (`models::fastsum`) instead of 7 slices, products and 6 sums.
        let m = ys.len();
        weighted_sum(ys, weights.slice([1..1 + m]))
    }
}

/// A supernet edge (see the module documentation): one [`Branch`] for a fixed K, or one
/// per candidate proportion ([`PROPORTION_KS`]) with `--learn-proportion`, whose outputs
/// are mixed with the edge's softmaxed proportion parameters.
#[derive(Module, Debug)]
pub struct MixedOp<B: Backend> {
    /// The operations per partial factor.
    pub branches: Vec<Branch<B>>,
    /// 1 or 2.
    pub stride: usize,
    /// Channel selection.
    #[module(skip)]
    pub selector: SelectorKind,
    /// The `attention` selector's scoring module (None for the other selectors); shared by
    /// the branches (each takes its own number of top-scored channels).
    pub attention: Option<ChannelAttention<B>>,
}

/// An edge's input, with what the edges leaving the same state share. Under the `split`
/// selector every such edge selects the same first C/K channels and, on stride-2 edges,
/// pools the same bypassed ones, so a cell computes both once per state (through
/// [`MixedOp::forward_shared`]) instead of once per edge: 4 edges leave each cell input,
/// and the 8 stride-2 edges of a reduction cell pool 3/4 of their input's channels.
/// Gradients of a shared part add up over its edges as for any tensor used twice.
#[derive(Debug)]
pub struct EdgeInput<B: Backend> {
    x: Tensor<B, 4>,
    /// Per (partial factor, stride): the selected channels and the pooled bypass.
    split: Vec<(usize, usize, Tensor<B, 4>, Option<Tensor<B, 4>>)>,
}

impl<B: Backend> EdgeInput<B> {
    /// The state `x` with nothing computed yet.
    pub fn new(x: Tensor<B, 4>) -> Self {
        Self { x, split: vec![] }
    }

    /// The state.
    pub fn into_inner(self) -> Tensor<B, 4> {
        self.x
    }

    /// The split selector's selected channels and (stride 2) pooled bypass for partial
    /// factor `k`, computed by `make` the first time.
    fn split(
        &mut self,
        k: usize,
        stride: usize,
        make: impl FnOnce(&Tensor<B, 4>) -> (Tensor<B, 4>, Option<Tensor<B, 4>>),
    ) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
        if let Some((_, _, sel, byp)) = self
            .split
            .iter()
            .find(|(kk, ss, _, _)| (*kk, *ss) == (k, stride))
        {
            return (sel.clone(), byp.clone());
        }
        let (sel, byp) = make(&self.x);
        self.split.push((k, stride, sel.clone(), byp.clone()));
        (sel, byp)
    }
}

impl<B: Backend> MixedOp<B> {
    /// An edge on `channels` channels (divisible by `partial_k`).
    pub fn new(
        channels: usize,
        stride: usize,
        partial_k: usize,
        selector: SelectorKind,
        device: &B::Device,
    ) -> Self {
        Self::with_branches(channels, stride, &[partial_k], selector, false, device)
    }

    /// An edge with one branch per partial factor in `partial_ks` (each divides
    /// `channels`), with or without the spatial reconstruction unit.
    pub fn with_branches(
        channels: usize,
        stride: usize,
        partial_ks: &[usize],
        selector: SelectorKind,
        sru: bool,
        device: &B::Device,
    ) -> Self {
        let branches: Vec<Branch<B>> = partial_ks
            .iter()
            .map(|&k| Branch::new(channels, stride, k.max(1), sru, device))
            .collect();
        let attention = (selector == SelectorKind::Attention && partial_ks.iter().any(|&k| k > 1))
            .then(|| ChannelAttention::new(channels, device));
        Self {
            branches,
            stride,
            selector,
            attention,
        }
    }

    /// Partial factor of the first branch (the only one without learned proportions).
    pub fn partial_k(&self) -> usize {
        self.branches.first().map_or(1, |b| b.partial_k)
    }

    /// Weighted sum of the operations on the selected channels, merged with the bypass.
    /// `weights` holds softmax(alpha) of this edge, one value per primitive (8). `rng`
    /// drives the random selector.
    ///
    /// # Shapes
    /// `x: [N, C, H, W]`, `weights: [8]` -> `[N, C, ceil(H/s), ceil(W/s)]`
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        weights: Tensor<B, 1>,
        rng: &mut StdRng,
    ) -> Tensor<B, 4> {
        self.forward_mixed(x, weights, None, rng)
    }

    /// [`forward`](Self::forward) with the edge's softmaxed proportion weights (one per
    /// branch; `None`: equal weights) mixing the branches' outputs.
    ///
    /// # Shapes
    /// `x: [N, C, H, W]`, `weights: [8]`, `proportions: [branches]` ->
    /// `[N, C, ceil(H/s), ceil(W/s)]`
    pub fn forward_mixed(
        &self,
        x: Tensor<B, 4>,
        weights: Tensor<B, 1>,
        proportions: Option<Tensor<B, 1>>,
        rng: &mut StdRng,
    ) -> Tensor<B, 4> {
        self.forward_shared(&mut EdgeInput::new(x), weights, proportions, rng)
    }

    /// [`forward_mixed`](Self::forward_mixed) on an [`EdgeInput`] that the other edges
    /// leaving the same state also use (the parts they share are computed once).
    ///
    /// # Shapes
    /// as [`forward_mixed`](Self::forward_mixed)
    pub fn forward_shared(
        &self,
        input: &mut EdgeInput<B>,
        weights: Tensor<B, 1>,
        proportions: Option<Tensor<B, 1>>,
        rng: &mut StdRng,
    ) -> Tensor<B, 4> {
        let x = input.x.clone();
        let c = x.dims()[1];
        // What the selectors share between branches: one random permutation (branch K
        // takes its first C/K entries, so the subsets are nested), one attention score.
        let perm: Vec<usize> = if self.selector == SelectorKind::Random {
            let mut perm: Vec<usize> = (0..c).collect();
            perm.shuffle(rng);
            perm
        } else {
            vec![]
        };
        let scores = match (&self.attention, self.selector) {
            (Some(att), SelectorKind::Attention) => Some(att.forward(x.clone())),
            _ => None,
        };
        let mean: Vec<f32> = scores
            .as_ref()
            .map(|s| {
                s.clone()
                    .mean_dim(0)
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let mut ys: Vec<Tensor<B, 4>> = self
            .branches
            .iter()
            .map(|branch| {
                self.branch_forward(branch, input, weights.clone(), &perm, scores.clone(), &mean)
            })
            .collect();
        match ys.len() {
            0 => x,
            1 => ys.remove(0),
            m => {
                // Branches mixed by the proportion weights (equal ones when none are given).
                let p =
                    proportions.unwrap_or_else(|| Tensor::full([m], 1.0 / m as f32, &x.device()));
                weighted_sum(ys, p)
            }
        }
    }

    fn branch_forward(
        &self,
        branch: &Branch<B>,
        input: &mut EdgeInput<B>,
        weights: Tensor<B, 1>,
        perm: &[usize],
        scores: Option<Tensor<B, 2>>,
        mean_scores: &[f32],
    ) -> Tensor<B, 4> {
        let x = input.x.clone();
        let [n, c, h, w] = x.dims();
        let k = branch.partial_k;
        if k == 1 {
            return branch.op_sum(x, weights);
        }
        let ck = c / k;
        match (self.selector, scores) {
            (SelectorKind::Random, _) => {
                self.select_and_restore(branch, x, perm, ck, weights, None)
            }
            (SelectorKind::Attention, Some(scores)) => {
                let order = attention_order(mean_scores, ck);
                self.select_and_restore(branch, x, &order, ck, weights, Some(scores))
            }
            // Split (and attention without its module, which `new` never builds).
            _ => {
                let stride = self.stride;
                let (selected, bypass) = input.split(k, stride, |x| {
                    let selected = select_channels(x.clone(), &(0..ck).collect::<Vec<_>>());
                    let bypass = (stride != 1)
                        .then(|| self.bypass(x.clone().slice([0..n, ck..c, 0..h, 0..w])));
                    (selected, bypass)
                });
                let summed = contiguous(branch.op_sum(selected, weights));
                // shuffle(cat([summed, bypass])) in one pass (`merge_channels`)
                let order = shuffle_order(c, k);
                if let Some(bypass) = bypass {
                    merge_channels(summed, bypass, &order)
                } else {
                    // concatenated channel m >= ck is input channel m: index ck + m of [summed; x]
                    let index: Vec<usize> = order
                        .iter()
                        .map(|&m| if m < ck { m } else { ck + m })
                        .collect();
                    merge_channels(summed, x, &index)
                }
            }
        }
    }

    /// Sends input channels `perm[..ck]` through the branch's operations (each multiplied
    /// by its score when `scores` `[N, C]` is given), bypasses `perm[ck..]`, and puts every
    /// channel back at its input position.
    fn select_and_restore(
        &self,
        branch: &Branch<B>,
        x: Tensor<B, 4>,
        perm: &[usize],
        ck: usize,
        weights: Tensor<B, 1>,
        scores: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 4> {
        let [n, c, _, _] = x.dims();
        let device = x.device();
        let index = |v: &[usize]| {
            let data: Vec<i64> = v.iter().map(|&i| i as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(data, [v.len()]), &device)
        };
        let mut selected = select_channels(x.clone(), &perm[..ck]);
        if let Some(scores) = scores {
            let s = scores.select(1, index(&perm[..ck])).reshape([n, ck, 1, 1]);
            selected = selected.mul(s);
        }
        let summed = contiguous(branch.op_sum(selected, weights));
        // Concatenated [summed; bypass] channel j came from input channel perm[j]: put
        // it back there (`merge_channels` does the concatenation and the reordering).
        let mut inverse = vec![0usize; c];
        for (j, &p) in perm.iter().enumerate() {
            inverse[p] = j;
        }
        if self.stride == 1 {
            // a bypassed channel p is input channel p unchanged: index ck + p of [summed; x]
            let index: Vec<usize> = (0..c)
                .map(|p| if inverse[p] < ck { inverse[p] } else { ck + p })
                .collect();
            merge_channels(summed, x, &index)
        } else {
            let bypass = self.bypass(select_channels(x, &perm[ck..]));
            merge_channels(summed, bypass, &inverse)
        }
    }

    fn bypass(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if self.stride == 1 {
            return x;
        }
        // Ceil mode (odd sides give ceil(H/2), like the strided ops): replicating the
        // last row/column leaves every window's maximum unchanged.
        let [_, _, h, w] = x.dims();
        let x = if h % 2 == 1 || w % 2 == 1 {
            x.pad((0, w % 2, 0, h % 2), PadMode::Edge)
        } else {
            x
        };
        splitnas_models::fastpool::max_pool2d(x, 2, 2, 0)
    }
}

/// Channel order of the `attention` selector from the batch-mean scores: the `ck`
/// highest-scoring channels (ties to the lower index) in ascending channel order, then the
/// others in ascending order.
pub fn attention_order(mean_scores: &[f32], ck: usize) -> Vec<usize> {
    let mut by_score: Vec<usize> = (0..mean_scores.len()).collect();
    by_score.sort_by(|&a, &b| mean_scores[b].total_cmp(&mean_scores[a]).then(a.cmp(&b)));
    let mut top = by_score[..ck.min(by_score.len())].to_vec();
    top.sort_unstable();
    let rest: Vec<usize> = (0..mean_scores.len())
        .filter(|i| !top.contains(i))
        .collect();
    top.extend(rest);
    top
}

pub use splitnas_models::fastselect::contiguous;

#[cfg(test)]
mod tests;
