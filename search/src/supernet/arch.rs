//! The architecture half of the supernet: alphas, betas and learned proportions per cell
//! type, their softmaxed weights and the genotype derived from them.

use super::{node_edges, EDGES, NODES, OPS};
use crate::mixed_op::PROPORTION_KS;
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use splitnas_models::{CellGenotype, Genotype, Primitive};

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
    /// Normal-cell proportion parameters `[14, 3]` (learned proportions).
    pub proportions_normal: Option<Param<Tensor<B, 2>>>,
    /// Reduction-cell proportion parameters `[14, 3]`.
    pub proportions_reduce: Option<Param<Tensor<B, 2>>>,
}

/// One cell type's softmaxed architecture weights, as the cells use them.
#[derive(Clone, Debug)]
pub struct CellArch<B: Backend> {
    /// softmax over ops, `[14, 8]`.
    pub alphas: Tensor<B, 2>,
    /// Per-node softmax of the betas, `[14]` (None without edge normalization).
    pub betas: Option<Tensor<B, 1>>,
    /// softmax over the candidate proportions, `[14, 3]` (None without them).
    pub proportions: Option<Tensor<B, 2>>,
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
    /// softmax of the proportion parameters per edge, `[14][3]` for 1/2, 1/4, 1/8
    /// (learned proportions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proportions: Option<Vec<Vec<f32>>>,
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

    /// Learned proportion per edge (learned proportions): the expected fraction of
    /// channels `sum_i softmax(p)_i / K_i`.
    pub fn learned_proportions(&self) -> Option<Vec<f32>> {
        self.proportions.as_ref().map(|rows| {
            rows.iter()
                .map(|r| r.iter().zip(PROPORTION_KS).map(|(p, k)| p / k as f32).sum())
                .collect()
        })
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
    /// Softmaxed architecture weights of the normal (`reduce = false`) or reduction cell.
    pub fn weights(&self, reduce: bool, edge_norm: bool) -> CellArch<B> {
        let (a, b, p) = if reduce {
            (
                &self.alphas_reduce,
                &self.betas_reduce,
                &self.proportions_reduce,
            )
        } else {
            (
                &self.alphas_normal,
                &self.betas_normal,
                &self.proportions_normal,
            )
        };
        CellArch {
            alphas: softmax(a.val(), 1),
            betas: edge_norm.then(|| node_softmax(b.val())),
            proportions: p.as_ref().map(|p| softmax(p.val(), 1)),
        }
    }

    /// Softmaxed weights of the normal (`reduce = false`) or reduction cell.
    pub fn cell_weights(&self, reduce: bool, edge_norm: bool) -> CellWeights {
        let w = self.weights(reduce, edge_norm);
        let a: Vec<f32> = w.alphas.into_data().iter::<f32>().collect();
        let b: Vec<f32> = match w.betas {
            Some(b) => b.into_data().iter::<f32>().collect(),
            None => vec![1.0; EDGES],
        };
        let proportions = w.proportions.map(|p| {
            let v: Vec<f32> = p.into_data().iter::<f32>().collect();
            v.chunks(PROPORTION_KS.len()).map(|r| r.to_vec()).collect()
        });
        CellWeights {
            alphas: a.chunks(OPS).map(|r| r.to_vec()).collect(),
            betas: b,
            proportions,
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

#[cfg(test)]
mod tests {
    use super::*;

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
            proportions: None,
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
