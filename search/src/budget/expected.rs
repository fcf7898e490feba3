//! The differentiable expected cost of the architecture and its budget penalty (see the
//! module notes of [`super`]).

use super::{Budget, Resource};
use crate::supernet::{node_edges, ArchParams, EDGES, NODES, OPS};
use burn::tensor::activation::{sigmoid, softmax};
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
    aim: bool,
}

/// Expected cost of every resource, in its units.
pub type Expected = Vec<(Resource, f64)>;

impl<B: Backend> CostTerm<B> {
    /// The term for `table`'s network; `weight` multiplies the penalty.
    pub fn new(table: &CostTable, budget: &Budget, weight: f64, device: &B::Device) -> Self {
        // the counted resources always (for the report), the measured ones when limited
        let parts = Resource::ALL
            .iter()
            .filter(|&&r| Resource::COUNTED.contains(&r) || budget.limit(r).is_some())
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
            aim: false,
        }
    }

    /// `aim`: the penalty is `|expected / limit - 1|`, a target at the limit (MnasNet's
    /// soft target), rather than the excess alone.
    pub fn aiming(mut self, aim: bool) -> Self {
        self.aim = aim;
        self
    }

    /// The expected cost of each resource divided by its scale, as `[1]` tensors, at
    /// temperature `tau` (see the module notes of [`super`]), each resource's fixed part
    /// moved by its `shift` (in its units).
    fn relative(
        &self,
        arch: &ArchParams<B>,
        edge_norm: bool,
        tau: f64,
        shift: &[(Resource, f64)],
    ) -> Vec<(Resource, Tensor<B, 1>)> {
        let cells = [
            arch.weights(false, edge_norm),
            arch.weights(true, edge_norm),
        ];
        // per cell type: the kept share of every edge (2 per node) and the op weights
        let per_cell: Vec<(Tensor<B, 1>, Tensor<B, 2>)> = cells
            .iter()
            .map(|w| {
                let ops = w.alphas.clone().slice([0..EDGES, 1..OPS]);
                let mut strength = ops.clone().max_dim(1).reshape([EDGES]).log();
                if let Some(b) = &w.betas {
                    strength = strength.add(b.clone().log());
                }
                // softmax(alpha / tau) over the ops other than `none`: the ratio of two
                // softmaxed weights is exp(difference of alphas)
                let q = softmax(ops.log().div_scalar(tau), 1);
                (kept_share(strength, tau), q)
            })
            .collect();
        self.parts
            .iter()
            .map(|(r, fixed, coef, scale)| {
                let moved: f64 = shift.iter().filter(|s| s.0 == *r).map(|s| s.1).sum();
                let fixed = fixed + moved / scale;
                let mut total = Tensor::<B, 1>::from_floats([fixed as f32], &coef[0].device());
                for ((kept, q), coef) in per_cell.iter().zip(coef) {
                    let edge_cost = q.clone().mul(coef.clone()).sum_dim(1).reshape([EDGES]);
                    total = total.add(kept.clone().mul(edge_cost).sum());
                }
                (*r, total)
            })
            .collect()
    }

    /// `weight * sum over the budget's resources of relu(expected / limit - 1)` (or
    /// `|expected / limit - 1|` when aiming) at temperature `tau`, `[1]`.
    pub fn penalty(&self, arch: &ArchParams<B>, edge_norm: bool, tau: f64) -> Tensor<B, 1> {
        self.penalty_shifted(arch, edge_norm, tau, &[])
    }

    /// [`Self::penalty`] with fixed parts moved by `shift`.
    pub fn penalty_shifted(
        &self,
        arch: &ArchParams<B>,
        edge_norm: bool,
        tau: f64,
        shift: &[(Resource, f64)],
    ) -> Tensor<B, 1> {
        let mut total: Option<Tensor<B, 1>> = None;
        for (r, rel) in self.relative(arch, edge_norm, tau, shift) {
            if self.budget.limit(r).is_some() {
                let off = rel.sub_scalar(1.0);
                let excess = if self.aim {
                    off.abs()
                } else {
                    off.clamp_min(0.0)
                };
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

    /// The expected cost of every resource at temperature `tau`, in its units
    /// (parameters, MACs).
    pub fn expected(&self, arch: &ArchParams<B>, edge_norm: bool, tau: f64) -> Expected {
        self.expected_shifted(arch, edge_norm, tau, &[])
    }

    /// [`Self::expected`] with fixed parts moved by `shift`.
    pub fn expected_shifted(
        &self,
        arch: &ArchParams<B>,
        edge_norm: bool,
        tau: f64,
        shift: &[(Resource, f64)],
    ) -> Expected {
        self.relative(arch, edge_norm, tau, shift)
            .into_iter()
            .zip(&self.parts)
            .map(|((r, t), part)| (r, t.into_scalar().elem::<f64>() * part.3))
            .collect()
    }
}

/// The share of every edge in its node's 2 kept edges, `[14]`, from the edges'
/// log-strengths: `sigmoid((ln s_e - theta) / tau)` with `theta` halfway between the
/// node's 2nd and 3rd strongest (a constant), scaled so that each node's shares sum to
/// 2. Nodes with 2 inputs keep both.
fn kept_share<B: Backend>(log_strength: Tensor<B, 1>, tau: f64) -> Tensor<B, 1> {
    let values: Vec<f32> = log_strength.clone().into_data().iter::<f32>().collect();
    let parts = (0..NODES)
        .map(|node| {
            let range = node_edges(node);
            let n = range.len();
            let ls = log_strength.clone().slice([range.clone()]);
            if n <= 2 {
                return ls.zeros_like().add_scalar(1.0);
            }
            let mut sorted: Vec<f32> = values[range].to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let theta = 0.5 * (sorted[1] as f64 + sorted[2] as f64);
            let p = sigmoid(ls.sub_scalar(theta).div_scalar(tau));
            p.clone().div(p.sum()).mul_scalar(2.0)
        })
        .collect();
    Tensor::cat(parts, 0)
}
