//! The DARTS search supernet with channel-split MixedOps, edge normalization and the
//! CSC-DARTS identity connection.
//!
//! [`Supernet`] holds two sub-modules: [`SupernetWeights`] (convolutions, BatchNorms,
//! classifier) and [`ArchParams`] (alphas and betas). The bilevel optimizer takes the
//! gradients of one of them at a time (`GradientsParams::from_grads(grads, &net.arch)`),
//! so each step can only change its own half.

use crate::mixed_op::{MixedOp, SelectorKind};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use rand::rngs::StdRng;
use splitnas_models::bn::{BatchNorm2d, BatchNorm2dConfig};
use splitnas_models::cell::{Preprocess, Shortcut};
use splitnas_models::fastconv::conv_forward;
use splitnas_models::network::reduction_layers;
use splitnas_models::ops::{conv, ReluConvBn};
use splitnas_models::{CellGenotype, Genotype, Primitive};

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
}

impl SupernetConfig {
    /// Checks that every MixedOp can split its channels by K.
    pub fn validate(&self) -> Result<(), String> {
        if self.channels == 0 || self.layers < 3 {
            return Err(format!(
                "--channels must be at least 1 and --layers at least 3 (got C={}, L={})",
                self.channels, self.layers
            ));
        }
        if self.partial_k == 0 {
            return Err("--partial-k must be at least 1".into());
        }
        // Nodes have C channels in the first stage, 2C and 4C after the reductions.
        if self.channels % self.partial_k != 0 {
            return Err(format!(
                "--partial-k {} does not divide --channels {}: every edge must split its {} channels into {} equal groups",
                self.partial_k, self.channels, self.channels, self.partial_k
            ));
        }
        if self.image_size < 8 {
            return Err(format!("images of side {} are too small", self.image_size));
        }
        Ok(())
    }

    /// Builds the supernet; alphas and betas are `1e-3 * N(0, 1)` from Burn's seeded RNG.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Supernet<B>, String> {
        self.validate()?;
        let c = self.channels;
        let c_stem = 3 * c;
        let (mut c_pp, mut c_p, mut c_curr) = (c_stem, c_stem, c);
        let reductions = reduction_layers(self.layers);
        let mut reduction_prev = false;
        let mut cells = Vec::with_capacity(self.layers);
        for i in 0..self.layers {
            let reduction = reductions.contains(&i);
            if reduction {
                c_curr *= 2;
            }
            cells.push(SearchCell::new(
                c_pp,
                c_p,
                c_curr,
                reduction,
                reduction_prev,
                self,
                device,
            ));
            reduction_prev = reduction;
            c_pp = c_p;
            c_p = NODES * c_curr;
        }
        let weights = SupernetWeights {
            stem_conv: conv(self.in_channels, c_stem, 3, 1, 1, 1, 1, device),
            stem_bn: BatchNorm2dConfig::new(c_stem).init(device),
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
        let arch = ArchParams {
            alphas_normal: init([EDGES, OPS]),
            alphas_reduce: init([EDGES, OPS]),
            betas_normal: init1(EDGES),
            betas_reduce: init1(EDGES),
        };
        Ok(Supernet { weights, arch })
    }
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
                edges.push(MixedOp::new(c, stride, cfg.partial_k, cfg.selector, device));
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

    /// `alphas`: softmax over ops, `[14, 8]`; `betas`: per-node softmax, `[14]` (None
    /// without edge normalization).
    ///
    /// # Shapes
    /// `s0: [N, c_pp, H0, W0]`, `s1: [N, c_p, H, W]` -> `[N, 4c, H', W']`
    pub fn forward(
        &self,
        s0: Tensor<B, 4>,
        s1: Tensor<B, 4>,
        alphas: &Tensor<B, 2>,
        betas: Option<&Tensor<B, 1>>,
        rng: &mut StdRng,
    ) -> Tensor<B, 4> {
        let mut states = vec![
            self.preprocess0.forward(s0),
            self.preprocess1.forward(s1.clone()),
        ];
        for i in 0..NODES {
            let mut sum: Option<Tensor<B, 4>> = None;
            for (input, e) in node_edges(i).enumerate() {
                let w = alphas.clone().slice([e..e + 1, 0..OPS]).reshape([OPS]);
                let mut h = self.edges[e].forward(states[input].clone(), w, rng);
                if let Some(b) = betas {
                    h = h.mul(b.clone().slice([e..e + 1]).reshape([1, 1, 1, 1]));
                }
                sum = Some(match sum {
                    Some(s) => s.add(h),
                    None => h,
                });
            }
            if let Some(s) = sum {
                states.push(s);
            }
        }
        let out = Tensor::cat(states.split_off(2), 1);
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
    /// The L cells.
    pub cells: Vec<SearchCell<B>>,
    /// Classifier.
    pub classifier: Linear<B>,
    /// Edge normalization on.
    pub edge_norm: bool,
}

/// Architecture parameters: alphas (edge x op) and betas (edge) per cell type.
#[derive(Module, Debug)]
pub struct ArchParams<B: Backend> {
    /// Normal-cell alphas `[14, 8]`.
    pub alphas_normal: Param<Tensor<B, 2>>,
    /// Reduction-cell alphas `[14, 8]`.
    pub alphas_reduce: Param<Tensor<B, 2>>,
    /// Normal-cell betas `[14]`.
    pub betas_normal: Param<Tensor<B, 1>>,
    /// Reduction-cell betas `[14]`.
    pub betas_reduce: Param<Tensor<B, 1>>,
}

/// softmax over each node's incoming edges.
fn node_softmax<B: Backend>(betas: Tensor<B, 1>) -> Tensor<B, 1> {
    let parts = (0..NODES)
        .map(|i| softmax(betas.clone().slice([node_edges(i)]), 0))
        .collect();
    Tensor::cat(parts, 0)
}

/// Softmaxed architecture weights of one cell type, as plain numbers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CellWeights {
    /// softmax(alpha) per edge, `[14][8]`.
    pub alphas: Vec<Vec<f32>>,
    /// Per-node softmax(beta) per edge (all 1 without edge normalization).
    pub betas: Vec<f32>,
}

impl CellWeights {
    /// The genotype of this cell type: per node the 2 edges with the largest
    /// `max over non-none ops of softmax(alpha) * softmax(beta)`, each with its best
    /// non-`none` op, strongest first (DARTS). Concat nodes 2..5.
    pub fn genotype(&self) -> CellGenotype {
        let mut edges = Vec::with_capacity(2 * NODES);
        for i in 0..NODES {
            let range = node_edges(i);
            let best_op = |e: usize| {
                (1..OPS).fold(1, |b, k| {
                    if self.alphas[e][k] > self.alphas[e][b] {
                        k
                    } else {
                        b
                    }
                })
            };
            let strength = |e: usize| self.alphas[e][best_op(e)] * self.betas[e];
            let mut cand: Vec<usize> = range.clone().collect();
            cand.sort_by(|&a, &b| strength(b).total_cmp(&strength(a)).then(a.cmp(&b)));
            for &e in cand.iter().take(2) {
                edges.push((Primitive::ALL[best_op(e)], e - range.start));
            }
        }
        CellGenotype {
            edges,
            concat: (2..2 + NODES).collect(),
        }
    }

    /// Mean entropy (nats) of softmax(alpha) over the 14 edges.
    pub fn entropy(&self) -> f64 {
        let total: f64 = self
            .alphas
            .iter()
            .map(|row| {
                row.iter()
                    .filter(|&&p| p > 0.0)
                    .map(|&p| -(p as f64) * (p as f64).ln())
                    .sum::<f64>()
            })
            .sum();
        total / self.alphas.len().max(1) as f64
    }
}

impl<B: Backend> ArchParams<B> {
    fn weights(&self, reduce: bool, edge_norm: bool) -> (Tensor<B, 2>, Option<Tensor<B, 1>>) {
        let (a, b) = if reduce {
            (&self.alphas_reduce, &self.betas_reduce)
        } else {
            (&self.alphas_normal, &self.betas_normal)
        };
        (
            softmax(a.val(), 1),
            edge_norm.then(|| node_softmax(b.val())),
        )
    }

    /// Softmaxed weights of the normal (`reduce = false`) or reduction cell.
    pub fn cell_weights(&self, reduce: bool, edge_norm: bool) -> CellWeights {
        let (a, b) = self.weights(reduce, edge_norm);
        let a: Vec<f32> = a.into_data().iter::<f32>().collect();
        let b: Vec<f32> = match b {
            Some(b) => b.into_data().iter::<f32>().collect(),
            None => vec![1.0; EDGES],
        };
        CellWeights {
            alphas: a.chunks(OPS).map(|r| r.to_vec()).collect(),
            betas: b,
        }
    }

    /// The derived genotype.
    pub fn genotype(&self, edge_norm: bool) -> Genotype {
        let normal = self.cell_weights(false, edge_norm).genotype();
        let reduce = self.cell_weights(true, edge_norm).genotype();
        // Derived cells always have 2 edges per node with valid inputs.
        Genotype::uniform(normal.clone(), reduce.clone())
            .unwrap_or_else(|_| unreachable!("derived genotype is valid"))
    }
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
    /// Logits. `rng` drives the random selector.
    ///
    /// # Shapes
    /// `[N, in_channels, H, W] -> [N, classes]`
    pub fn forward(&self, x: Tensor<B, 4>, rng: &mut StdRng) -> Tensor<B, 2> {
        let _tie = splitnas_models::graph::tie_parameters(self, &x.device());
        let w = &self.weights;
        let (an, bn) = self.arch.weights(false, w.edge_norm);
        let (ar, br) = self.arch.weights(true, w.edge_norm);
        let s = w.stem_bn.forward(conv_forward(&w.stem_conv, x));
        let (mut s0, mut s1) = (s.clone(), s);
        for cell in &w.cells {
            let (a, b) = if cell.reduction {
                (&ar, &br)
            } else {
                (&an, &bn)
            };
            let out = cell.forward(s0, s1.clone(), a, b.as_ref(), rng);
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
mod tests {
    use super::*;
    use rand::SeedableRng;

    type B = burn::backend::Flex;

    #[test]
    fn node_edge_ranges_cover_the_14_edges() {
        let r: Vec<_> = (0..NODES).map(node_edges).collect();
        assert_eq!(r, vec![0..2, 2..5, 5..9, 9..14]);
    }

    #[test]
    fn supernet_logits_have_the_right_shape() {
        let device = Default::default();
        for (k, identity) in [(1, false), (4, true)] {
            let cfg = SupernetConfig::new()
                .with_channels(8)
                .with_layers(5)
                .with_in_channels(1)
                .with_image_size(28)
                .with_partial_k(k)
                .with_identity(identity);
            let net = cfg.init::<B>(&device).unwrap();
            let x = Tensor::<B, 4>::random([2, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
            let y = net.forward(x, &mut StdRng::seed_from_u64(0));
            assert_eq!(y.dims(), [2, 10]);
            assert_eq!(net.genotype().normal().edges.len(), 8);
        }
    }

    #[test]
    fn k_that_does_not_divide_c_is_rejected() {
        let err = SupernetConfig::new()
            .with_channels(6)
            .with_partial_k(4)
            .validate()
            .unwrap_err();
        assert!(
            err.contains("--partial-k 4 does not divide --channels 6"),
            "{err}"
        );
    }

    #[test]
    fn genotype_picks_the_two_strongest_edges_and_their_best_ops() {
        // Hand-made weights: node 0 edges 0,1; node 1 edges 2,3,4 where edge 4 has a
        // strong sep_conv_5x5 and edge 2 a dominant `none` (ignored).
        let mut alphas = vec![vec![0.125f32; OPS]; EDGES];
        alphas[0][4] = 0.3; // sep_conv_3x3
        alphas[1][3] = 0.2; // skip_connect
        alphas[2][0] = 0.9; // none: must not count
        alphas[2][1] = 0.05;
        alphas[4][5] = 0.5; // sep_conv_5x5
        alphas[3][7] = 0.4; // dil_conv_5x5
        let w = CellWeights {
            alphas,
            betas: vec![1.0; EDGES],
        };
        let g = w.genotype();
        assert_eq!(g.edges[0], (Primitive::SepConv3x3, 0));
        assert_eq!(g.edges[1], (Primitive::SkipConnect, 1));
        assert_eq!(g.edges[2], (Primitive::SepConv5x5, 2));
        assert_eq!(g.edges[3], (Primitive::DilConv5x5, 1));
        // A small beta demotes an edge.
        let mut w2 = w.clone();
        w2.betas[4] = 0.1;
        assert_eq!(w2.genotype().edges[2], (Primitive::DilConv5x5, 1));
    }
}
