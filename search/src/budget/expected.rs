//! The differentiable expected cost of the architecture and its budget penalty (see the
//! module notes of [`super`]).

use super::{Budget, Resource};
use crate::supernet::{node_edges, ArchParams, EDGES, NODES, OPS};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use splitnas_models::{Cost, CostTable};

/// Expected cost of the architecture parameters, per resource, and the penalty for
/// exceeding a budget.
#[derive(Clone, Debug)]
pub struct CostTerm<B: Backend> {
    /// Per resource: the fixed part and, per cell type, `[14, 7]` op costs (ops 1..8),
    /// both divided by `scale`.
    parts: Vec<(Resource, f64, [Tensor<B, 2>; 2], f64)>,
    budget: Budget,
    weight: f64,
}

/// Expected cost of every resource, in its units.
pub type Expected = Vec<(Resource, f64)>;

impl<B: Backend> CostTerm<B> {
    /// The term for `table`'s network; `weight` multiplies the penalty.
    pub fn new(table: &CostTable, budget: &Budget, weight: f64, device: &B::Device) -> Self {
        let parts = Resource::ALL
            .iter()
            .map(|&r| {
                // costs relative to the limit (the penalty's units), raw otherwise
                let scale = budget.limit(r).map_or(1.0, |l| l.max(1) as f64);
                let coef = std::array::from_fn(|t| {
                    let mut v = Vec::with_capacity(EDGES * (OPS - 1));
                    for node in 0..NODES {
                        for input in node_edges(node).map(|e| e - node_edges(node).start) {
                            let ops: &[Cost; 8] = &table.edges[t][node][input];
                            v.extend(ops[1..].iter().map(|c| (r.of(c) as f64 / scale) as f32));
                        }
                    }
                    Tensor::from_data(TensorData::new(v, [EDGES, OPS - 1]), device)
                });
                (r, r.of(&table.fixed) as f64 / scale, coef, scale)
            })
            .collect();
        CostTerm {
            parts,
            budget: *budget,
            weight,
        }
    }

    /// The expected cost of each resource divided by its scale, as `[1]` tensors.
    fn relative(&self, arch: &ArchParams<B>, edge_norm: bool) -> Vec<(Resource, Tensor<B, 1>)> {
        let cells = [
            arch.weights(false, edge_norm),
            arch.weights(true, edge_norm),
        ];
        // per cell type: edge strength and renormalized op weights over ops 1..8
        let per_cell: Vec<(Tensor<B, 1>, Tensor<B, 2>)> = cells
            .iter()
            .map(|w| {
                let ops = w.alphas.clone().slice([0..EDGES, 1..OPS]);
                let mass = ops.clone().sum_dim(1);
                let mut strength = ops.clone().max_dim(1).reshape([EDGES]);
                if let Some(b) = &w.betas {
                    strength = strength.mul(b.clone());
                }
                (strength, ops.div(mass))
            })
            .collect();
        self.parts
            .iter()
            .map(|(r, fixed, coef, _)| {
                let mut total: Option<Tensor<B, 1>> = None;
                for ((strength, q), coef) in per_cell.iter().zip(coef) {
                    let edge_cost = q.clone().mul(coef.clone()).sum_dim(1).reshape([EDGES]);
                    for node in 0..NODES {
                        let range = node_edges(node);
                        let s = strength.clone().slice([range.clone()]);
                        let p = s.clone().div(s.sum());
                        let node_cost = p
                            .mul(edge_cost.clone().slice([range]))
                            .sum()
                            .mul_scalar(2.0);
                        total = Some(match total {
                            Some(t) => t.add(node_cost),
                            None => node_cost,
                        });
                    }
                }
                let total = total.map_or_else(
                    || Tensor::from_floats([*fixed as f32], &coef[0].device()),
                    |t| t.add_scalar(*fixed),
                );
                (*r, total)
            })
            .collect()
    }

    /// `weight * sum over the budget's resources of relu(expected / limit - 1)`, `[1]`.
    pub fn penalty(&self, arch: &ArchParams<B>, edge_norm: bool) -> Tensor<B, 1> {
        let mut total: Option<Tensor<B, 1>> = None;
        for (r, rel) in self.relative(arch, edge_norm) {
            if self.budget.limit(r).is_some() {
                let excess = rel.sub_scalar(1.0).clamp_min(0.0);
                total = Some(match total {
                    Some(t) => t.add(excess),
                    None => excess,
                });
            }
        }
        match total {
            Some(t) => t.mul_scalar(self.weight),
            None => Tensor::zeros([1], &self.parts[0].2[0].device()),
        }
    }

    /// The expected cost of every resource, in its units (parameters, MACs).
    pub fn expected(&self, arch: &ArchParams<B>, edge_norm: bool) -> Expected {
        self.relative(arch, edge_norm)
            .into_iter()
            .zip(&self.parts)
            .map(|((r, t), part)| (r, t.into_scalar().elem::<f64>() * part.3))
            .collect()
    }
}
