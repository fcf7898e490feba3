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
    parts: Vec<Part<B>>,
    budget: Budget,
    weight: f64,
    aim: bool,
}

/// One resource's costs, divided by `scale` (its limit, else 1).
#[derive(Clone, Debug)]
struct Part<B: Backend> {
    resource: Resource,
    fixed: f64,
    coef: [Tensor<B, 2>; 2],
    scale: f64,
    /// The expected cost of the uniform architecture (every edge the mean of its ops,
    /// every node's edges an equal share of its 2 kept ones) less the fixed part.
    uniform: f64,
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
                let mut uniform = 0.0;
                let coef = std::array::from_fn(|t| {
                    let mut v = Vec::with_capacity(EDGES * (OPS - 1));
                    for node in 0..NODES {
                        let share = 2.0 / node_edges(node).len().max(2) as f64;
                        for input in node_edges(node).map(|e| e - node_edges(node).start) {
                            let ops: &[Cost; 8] = &table.edges[t][node][input];
                            let rel = ops[1..].iter().map(|c| r.of(c) as f64 / scale);
                            uniform += share * rel.clone().sum::<f64>() / (OPS - 1) as f64;
                            v.extend(rel.map(|x| x as f32));
                        }
                    }
                    Tensor::from_data(TensorData::new(v, [EDGES, OPS - 1]), device)
                });
                Part {
                    resource: r,
                    fixed: r.of(&table.fixed) as f64 / scale,
                    coef,
                    scale,
                    uniform,
                }
            })
            .collect();
        CostTerm {
            parts,
            budget: *budget,
            weight,
            aim: false,
        }
    }

    /// `aim`: below the limit the penalty also pushes back, once the expected cost falls
    /// under the lesser of the limit and the uniform architecture's expected cost (see
    /// [`Self::penalty`]); otherwise it is the excess alone.
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
            .map(|p| {
                let fixed = p.fixed + moved(shift, p.resource) / p.scale;
                let mut total = Tensor::<B, 1>::from_floats([fixed as f32], &p.coef[0].device());
                for ((kept, q), coef) in per_cell.iter().zip(&p.coef) {
                    let edge_cost = q.clone().mul(coef.clone()).sum_dim(1).reshape([EDGES]);
                    total = total.add(kept.clone().mul(edge_cost).sum());
                }
                (p.resource, total)
            })
            .collect()
    }

    /// `weight * sum over the budget's resources r` of `relu(E_r / B_r - 1)` at
    /// temperature `tau`, `[1]`; when aiming, plus `relu(floor_r - E_r / B_r)` with
    /// `floor_r = min(1, U_r / B_r)`, `U_r` the uniform architecture's expected cost: the
    /// push back from below counters the drift to parameter-free ops that a tight budget's
    /// pressure starts, and never drives a loose budget's cell above the uniform mixture
    /// (aiming at a loose limit filled every edge with dil_conv_5x5).
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
        for ((r, rel), p) in self
            .relative(arch, edge_norm, tau, shift)
            .into_iter()
            .zip(&self.parts)
        {
            if self.budget.limit(r).is_some() {
                let mut excess = rel.clone().sub_scalar(1.0).clamp_min(0.0);
                if self.aim {
                    let floor = self.floor(p, shift);
                    excess = excess.add(rel.neg().add_scalar(floor).clamp_min(0.0));
                }
                total = Some(match total {
                    Some(t) => t.add(excess),
                    None => excess,
                });
            }
        }
        match total {
            Some(t) => t.mul_scalar(self.weight),
            None => Tensor::zeros([1], &self.parts[0].coef[0].device()),
        }
    }

    /// `min(1, U / B)` of `p` (relative units), its fixed part moved by `shift`.
    fn floor(&self, p: &Part<B>, shift: &[(Resource, f64)]) -> f64 {
        let fixed = p.fixed + moved(shift, p.resource) / p.scale;
        (fixed + p.uniform).min(1.0)
    }

    /// The uniform architecture's expected cost of every resource, in its units.
    pub fn uniform(&self) -> Expected {
        self.parts
            .iter()
            .map(|p| (p.resource, (p.fixed + p.uniform) * p.scale))
            .collect()
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
            .map(|((r, t), part)| (r, t.into_scalar().elem::<f64>() * part.scale))
            .collect()
    }
}

/// The move of `r`'s fixed part in `shift`, in its units.
fn moved(shift: &[(Resource, f64)], r: Resource) -> f64 {
    shift.iter().filter(|s| s.0 == r).map(|s| s.1).sum()
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
