//! The DARTS search supernet with channel-split MixedOps, edge normalization and the
//! CSC-DARTS identity connection.
//!
//! [`Supernet`] holds two sub-modules: [`SupernetWeights`] (convolutions, BatchNorms,
//! classifier) and [`ArchParams`] (alphas and betas). The bilevel optimizer takes the
//! gradients of one of them at a time (`GradientsParams::from_grads(grads, &net.arch)`),
//! so each step can only change its own half.

mod arch;

pub use arch::{ArchParams, CellArch, CellWeights};

use crate::mixed_op::{contiguous, EdgeInput, MixedOp, SelectorKind, PROPORTION_KS};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use rand::rngs::StdRng;
use splitnas_models::bn::{BatchNorm2d, BatchNorm2dConfig};
use splitnas_models::cell::{Cell, CellShape, Preprocess, Shortcut};
use splitnas_models::fastconv::conv_forward;
use splitnas_models::fastsum::weighted_sum;
use splitnas_models::network::reduction_layers;
use splitnas_models::ops::{conv, ReluConvBn};
use splitnas_models::{CellPair, Genotype};

/// Intermediate nodes per cell.
pub const NODES: usize = 4;
/// Edges per cell (2 + 3 + 4 + 5).
pub const EDGES: usize = 14;
/// Candidate operations per edge.
pub const OPS: usize = 8;

/// The edges entering node `i` (0-based): `start..start + 2 + i`.
pub fn node_edges(i: usize) -> std::ops::Range<usize> {
    let start = (0..i).map(|j| 2 + j).sum::<usize>();
    start..start + 2 + i
}

/// A supernet configuration that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupernetError {
    /// Too few channels or cells.
    #[error("the supernet needs at least 1 channel and 3 cells (got C={channels}, L={layers})")]
    Size {
        /// Channels C.
        channels: usize,
        /// Cells L.
        layers: usize,
    },
    /// A partial factor of 0.
    #[error("the partial factor K must be at least 1 (got 0)")]
    PartialKZero,
    /// Learned proportions on a channel count that 8 does not divide.
    #[error("learned proportions need a channel count divisible by 8 (got {0}): the candidate proportions are 1/2, 1/4 and 1/8 of every edge's channels")]
    ProportionChannels(usize),
    /// A progressive search with other than 3 stages.
    #[error("a progressive search has 3 stages (got {0}): the network has 3 stages (the cells before, between and after its two reductions)")]
    Stages(usize),
    /// A partial factor that does not divide the channels.
    #[error("the partial factor K={k} does not divide the {channels} channels: every edge must split its {channels} channels into {k} equal groups")]
    PartialK {
        /// The partial factor.
        k: usize,
        /// Channels C.
        channels: usize,
    },
    /// An image side below 8.
    #[error("the image size must be at least 8 (got {0}): the supernet's two reductions halve the side twice")]
    ImageTooSmall(usize),
    /// An image side that 4 does not divide.
    #[error("the image size must be divisible by 4 (got {0}): the supernet's two reductions halve the side twice")]
    ImageSide(usize),
    /// A progressive stage past the last one.
    #[error("stage {stage} of a {stages}-stage search does not exist")]
    NoSuchStage {
        /// The stage asked for (1-based).
        stage: usize,
        /// Stages of the search.
        stages: usize,
    },
}

/// Configuration of the supernet.
#[derive(Config, Debug, PartialEq)]
pub struct SupernetConfig {
    /// Initial channels C.
    #[config(default = 16)]
    pub channels: usize,
    /// Cells L.
    #[config(default = 8)]
    pub layers: usize,
    /// Classes.
    #[config(default = 10)]
    pub classes: usize,
    /// Input channels (1 or 3).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Input side.
    #[config(default = 32)]
    pub image_size: usize,
    /// Partial channel factor K (1 = DARTS).
    #[config(default = 4)]
    pub partial_k: usize,
    /// Channel selector.
    #[config(default = "SelectorKind::Split")]
    pub selector: SelectorKind,
    /// CSC-DARTS identity connection on every cell.
    #[config(default = true)]
    pub identity: bool,
    /// Edge normalization (betas).
    #[config(default = true)]
    pub edge_norm: bool,
    /// Slim-DARTS spatial reconstruction unit on the channels entering each MixedOp.
    #[config(default = false)]
    pub spatial_reconstruction: bool,
    /// Slim-DARTS learnable proportion: every edge mixes branches with 1/2, 1/4 and 1/8
    /// of its channels ([`PROPORTION_KS`]) by softmaxed per-edge parameters trained with
    /// the architecture; `partial_k` is not used.
    #[config(default = false)]
    pub learn_proportion: bool,
    /// LFR-DARTS progressive search: 1 (the whole network at once) or 3 (one stage per
    /// resolution, shallow to deep).
    #[config(default = 1)]
    pub stages: usize,
}

/// The stage of cell `i` in an `layers`-cell network: 0 before the first reduction cell,
/// 1 from it, 2 from the second (the same rule as the evaluation network's per-stage
/// genotypes).
pub fn cell_stage(layers: usize, i: usize) -> usize {
    reduction_layers(layers).iter().filter(|&&r| r <= i).count()
}

impl SupernetConfig {
    /// Checks that every MixedOp can split its channels by K.
    pub fn validate(&self) -> Result<(), SupernetError> {
        if self.channels == 0 || self.layers < 3 {
            return Err(SupernetError::Size {
                channels: self.channels,
                layers: self.layers,
            });
        }
        if self.partial_k == 0 {
            return Err(SupernetError::PartialKZero);
        }
        if self.learn_proportion && self.channels % 8 != 0 {
            return Err(SupernetError::ProportionChannels(self.channels));
        }
        if self.stages != 1 && self.stages != 3 {
            return Err(SupernetError::Stages(self.stages));
        }
        // Nodes have C channels in the first stage, 2C and 4C after the reductions.
        if !self.learn_proportion && self.channels % self.partial_k != 0 {
            return Err(SupernetError::PartialK {
                k: self.partial_k,
                channels: self.channels,
            });
        }
        if self.image_size < 8 {
            return Err(SupernetError::ImageTooSmall(self.image_size));
        }
        // Each cell after a reduction halves its older input with FactorizedReduce, whose
        // two shifted halves only line up on an even side, so the side must stay even
        // through both reductions (a side of 10 panicked in the cell's concatenation).
        if self.image_size % 4 != 0 {
            return Err(SupernetError::ImageSide(self.image_size));
        }
        Ok(())
    }

    /// The partial factors of each edge's branches: `[partial_k]`, or [`PROPORTION_KS`]
    /// with `learn_proportion`.
    pub fn branch_ks(&self) -> Vec<usize> {
        if self.learn_proportion {
            PROPORTION_KS.to_vec()
        } else {
            vec![self.partial_k]
        }
    }

    /// K as the logs show it: the number, or `learned`.
    pub fn k_label(&self) -> String {
        if self.learn_proportion {
            "learned(1/2,1/4,1/8)".into()
        } else {
            self.partial_k.to_string()
        }
    }

    /// Builds the supernet; alphas and betas are `1e-3 * N(0, 1)` from Burn's seeded RNG.
    /// With `stages = 3` this is the first (shallowest) stage of the progressive search.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Supernet<B>, SupernetError> {
        self.init_stage(device, &[])
    }

    /// The supernet of progressive stage `frozen.len()`: the cells of the earlier stages
    /// are evaluation cells built from their derived pairs `frozen` (affine BN, trained
    /// with the weights), the current stage's cells are search cells, later stages do not
    /// exist yet (the classifier reads the current stage's last cell). With `stages = 1`
    /// `frozen` must be empty and every cell is a search cell.
    pub fn init_stage<B: Backend>(
        &self,
        device: &B::Device,
        frozen: &[CellPair],
    ) -> Result<Supernet<B>, SupernetError> {
        self.validate()?;
        let stage = frozen.len();
        if stage >= self.stages {
            return Err(SupernetError::NoSuchStage {
                stage: stage + 1,
                stages: self.stages,
            });
        }
        let c = self.channels;
        let c_stem = 3 * c;
        let (mut c_pp, mut c_p, mut c_curr) = (c_stem, c_stem, c);
        let reductions = reduction_layers(self.layers);
        let mut reduction_prev = false;
        let mut cells = Vec::with_capacity(self.layers);
        let mut fixed = vec![];
        for i in 0..self.layers {
            let cell_stage = if self.stages == 1 {
                0
            } else {
                cell_stage(self.layers, i)
            };
            if cell_stage > stage {
                break;
            }
            let reduction = reductions.contains(&i);
            if reduction {
                c_curr *= 2;
            }
            if cell_stage < stage {
                let pair = &frozen[cell_stage];
                let genotype = if reduction {
                    &pair.reduce
                } else {
                    &pair.normal
                };
                let shape = CellShape {
                    c_prev_prev: c_pp,
                    c_prev: c_p,
                    c: c_curr,
                    reduction,
                    reduction_prev,
                };
                fixed.push(Cell::new(genotype, shape, self.identity, device));
                c_p_next(&mut c_pp, &mut c_p, genotype.concat.len() * c_curr);
            } else {
                cells.push(SearchCell::new(
                    c_pp,
                    c_p,
                    c_curr,
                    reduction,
                    reduction_prev,
                    self,
                    device,
                ));
                c_p_next(&mut c_pp, &mut c_p, NODES * c_curr);
            }
            reduction_prev = reduction;
        }
        let weights = SupernetWeights {
            stem_conv: conv(self.in_channels, c_stem, 3, 1, 1, 1, 1, device),
            stem_bn: BatchNorm2dConfig::new(c_stem).init(device),
            fixed,
            cells,
            classifier: LinearConfig::new(c_p, self.classes).init(device),
            edge_norm: self.edge_norm,
        };
        let init = |shape: [usize; 2]| {
            Param::from_tensor(
                Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 1.0), device)
                    .mul_scalar(1e-3),
            )
        };
        let init1 = |n: usize| {
            Param::from_tensor(
                Tensor::<B, 1>::random([n], Distribution::Normal(0.0, 1.0), device)
                    .mul_scalar(1e-3),
            )
        };
        let proportions = self.learn_proportion;
        let arch = ArchParams {
            alphas_normal: init([EDGES, OPS]),
            alphas_reduce: init([EDGES, OPS]),
            betas_normal: init1(EDGES),
            betas_reduce: init1(EDGES),
            proportions_normal: proportions.then(|| init([EDGES, PROPORTION_KS.len()])),
            proportions_reduce: proportions.then(|| init([EDGES, PROPORTION_KS.len()])),
        };
        let net = Supernet { weights, arch };
        splitnas_models::materialize(&net);
        Ok(net)
    }
}

fn c_p_next(c_pp: &mut usize, c_p: &mut usize, out: usize) {
    *c_pp = *c_p;
    *c_p = out;
}

/// A supernet cell: 14 MixedOps over 4 nodes.
#[derive(Module, Debug)]
pub struct SearchCell<B: Backend> {
    /// s0 preprocessing.
    pub preprocess0: Preprocess<B>,
    /// s1 preprocessing.
    pub preprocess1: ReluConvBn<B>,
    /// The 14 edges, node by node.
    pub edges: Vec<MixedOp<B>>,
    /// CSC-DARTS identity connection.
    pub shortcut: Option<Shortcut<B>>,
    /// Reduction cell.
    pub reduction: bool,
}

impl<B: Backend> SearchCell<B> {
    fn new(
        c_pp: usize,
        c_p: usize,
        c: usize,
        reduction: bool,
        reduction_prev: bool,
        cfg: &SupernetConfig,
        device: &B::Device,
    ) -> Self {
        let mut edges = Vec::with_capacity(EDGES);
        for i in 0..NODES {
            for input in 0..2 + i {
                let stride = if reduction && input < 2 { 2 } else { 1 };
                edges.push(MixedOp::with_branches(
                    c,
                    stride,
                    &cfg.branch_ks(),
                    cfg.selector,
                    cfg.spatial_reconstruction,
                    device,
                ));
            }
        }
        Self {
            preprocess0: Preprocess::new(c_pp, c, reduction_prev, false, device),
            preprocess1: ReluConvBn::new(c_p, c, 1, 1, 0, false, device),
            edges,
            shortcut: cfg
                .identity
                .then(|| Shortcut::new(c_p, NODES * c, reduction, false, device)),
            reduction,
        }
    }

    /// `w`: this cell type's softmaxed architecture weights ([`CellArch`]).
    ///
    /// # Shapes
    /// `s0: [N, c_pp, H0, W0]`, `s1: [N, c_p, H, W]` -> `[N, 4c, H', W']`
    pub fn forward(
        &self,
        s0: Tensor<B, 4>,
        s1: Tensor<B, 4>,
        w: &CellArch<B>,
        rng: &mut StdRng,
    ) -> Tensor<B, 4> {
        // Each state with what the edges leaving it share (`EdgeInput`).
        let mut states = vec![
            EdgeInput::new(self.preprocess0.forward(s0)),
            EdgeInput::new(self.preprocess1.forward(s1.clone())),
        ];
        for i in 0..NODES {
            let edges = node_edges(i);
            let hs: Vec<Tensor<B, 4>> = edges
                .clone()
                .enumerate()
                .map(|(input, e)| {
                    let a = w.alphas.clone().slice([e..e + 1, 0..OPS]).reshape([OPS]);
                    let p = w.proportions.as_ref().map(|p| {
                        let k = p.dims()[1];
                        p.clone().slice([e..e + 1, 0..k]).reshape([k])
                    });
                    self.edges[e].forward_shared(&mut states[input], a, p, rng)
                })
                .collect();
            // The node is the sum of its edges, each weighted by its beta when edge
            // normalization is on (one step on the CPU backends, `models::fastsum`).
            let node = match &w.betas {
                Some(b) => Some(weighted_sum(hs, b.clone().slice([edges]))),
                None => hs.into_iter().reduce(|s, h| s.add(h)),
            };
            if let Some(s) = node {
                states.push(EdgeInput::new(s));
            }
        }
        // `contiguous`: the gradients `cat` hands back are strided views; copy each once
        // instead of every later element-wise step walking it element by element.
        let nodes = states.split_off(2).into_iter();
        let out = Tensor::cat(nodes.map(|s| contiguous(s.into_inner())).collect(), 1);
        match &self.shortcut {
            Some(sc) => out.add(sc.forward(s1)),
            None => out,
        }
    }
}

/// Supernet weights (everything but the architecture parameters).
#[derive(Module, Debug)]
pub struct SupernetWeights<B: Backend> {
    /// Stem 3x3 convolution to 3C.
    pub stem_conv: Conv2d<B>,
    /// Stem BN (affine, as in the reference).
    pub stem_bn: BatchNorm2d<B>,
    /// Progressive search: the derived cells of the stages already searched (run before
    /// `cells`); empty otherwise.
    pub fixed: Vec<Cell<B>>,
    /// The search cells (all L, or the current stage's in a progressive search).
    pub cells: Vec<SearchCell<B>>,
    /// Classifier.
    pub classifier: Linear<B>,
    /// Edge normalization on.
    pub edge_norm: bool,
}

/// The supernet.
#[derive(Module, Debug)]
pub struct Supernet<B: Backend> {
    /// Weights (SGD).
    pub weights: SupernetWeights<B>,
    /// Architecture parameters (Adam).
    pub arch: ArchParams<B>,
}

impl<B: Backend> Supernet<B> {
    /// A copy whose weights are untracked: its backward pass computes architecture
    /// gradients only.
    pub fn with_untracked_weights(&self) -> Self {
        Self {
            weights: self.weights.clone().no_grad(),
            arch: self.arch.clone(),
        }
    }

    /// A copy whose architecture parameters are untracked: its backward pass computes
    /// weight gradients only.
    pub fn with_untracked_arch(&self) -> Self {
        Self {
            weights: self.weights.clone(),
            arch: self.arch.clone().no_grad(),
        }
    }

    /// Logits. `rng` drives the random selector.
    ///
    /// # Shapes
    /// `[N, in_channels, H, W] -> [N, classes]`
    pub fn forward(&self, x: Tensor<B, 4>, rng: &mut StdRng) -> Tensor<B, 2> {
        let _tie = splitnas_models::graph::tie_parameters(self, &x.device());
        let w = &self.weights;
        let normal = self.arch.weights(false, w.edge_norm);
        let reduce = self.arch.weights(true, w.edge_norm);
        let s = w.stem_bn.forward(conv_forward(&w.stem_conv, x));
        let (mut s0, mut s1) = (s.clone(), s);
        for cell in &w.fixed {
            let out = cell.forward(s0, s1.clone(), 0.0);
            s0 = s1;
            s1 = out;
        }
        for cell in &w.cells {
            let a = if cell.reduction { &reduce } else { &normal };
            let out = cell.forward(s0, s1.clone(), a, rng);
            s0 = s1;
            s1 = out;
        }
        let [n, c, _, _] = s1.dims();
        let pooled = s1.mean_dim(3).mean_dim(2).reshape([n, c]);
        w.classifier.forward(pooled)
    }

    /// The genotype derived from the current architecture parameters.
    pub fn genotype(&self) -> Genotype {
        self.arch.genotype(self.weights.edge_norm)
    }
}

#[cfg(test)]
mod tests;
