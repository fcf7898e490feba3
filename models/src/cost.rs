//! What an evaluation network costs: learnable parameters and multiply-accumulates per
//! image, per operation on each edge and for the whole network, from the shapes
//! [`NetworkConfig::init`] builds (one walk over the cells: [`NetworkConfig::cell_sites`]).
//!
//! Conventions (the deployed network, as papers report it):
//! - parameters: learnable tensors of the Burn network, BatchNorm gamma/beta included,
//!   running statistics not ([`crate::count_parameters`]); the auxiliary head (training
//!   only, not exported) is not counted;
//! - MACs: one per multiply-add of a convolution or the classifier, per image; pooling,
//!   additions, ReLU and BatchNorm (folded into the convolutions on export) count 0.
//!
//! [`CostTable`] is what a search needs: the cost of every (cell type, node, input, op)
//! summed over the cells that use the searched cell pair, and the fixed rest, so that the
//! network's cost is `fixed + sum over the chosen edges`.

use crate::cell::CellShape;
use crate::genotype::{CellPair, Primitive};
use crate::latency::{LatencyError, LatencyTable};
use crate::network::{reduction_layers, NetworkConfig, NetworkError};
use std::ops::{Add, AddAssign, Sub};

/// Parameters and MACs (per image), and the two costs measured rather than counted:
/// SRAM bytes and latency, which this module leaves 0 (a search fills them in from the
/// microcontroller plan and a latency table, `splitnas_search::budget`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    /// Learnable scalars.
    pub params: u64,
    /// Multiply-accumulates of one image.
    pub macs: u64,
    /// Bytes of SRAM (the int8 plan's arena), or its share in an additive model.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sram: u64,
    /// Nanoseconds per image on the measured device.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_ns: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Cost {
    /// A counted cost: parameters and MACs (SRAM and latency 0).
    pub const fn counted(params: u64, macs: u64) -> Cost {
        Cost {
            params,
            macs,
            sram: 0,
            latency_ns: 0,
        }
    }
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            params: self.params + o.params,
            macs: self.macs + o.macs,
            sram: self.sram + o.sram,
            latency_ns: self.latency_ns + o.latency_ns,
        }
    }
}

/// Saturating: a part taken from the whole it belongs to.
impl Sub for Cost {
    type Output = Cost;
    fn sub(self, o: Cost) -> Cost {
        Cost {
            params: self.params.saturating_sub(o.params),
            macs: self.macs.saturating_sub(o.macs),
            sram: self.sram.saturating_sub(o.sram),
            latency_ns: self.latency_ns.saturating_sub(o.latency_ns),
        }
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), Add::add)
    }
}

/// A bias-free `c_in -> c_out` 1x1 convolution with BatchNorm, on an output map of side
/// `side` (ReLUConvBN 1x1, and FactorizedReduce: two 1x1 convolutions to `c_out / 2`).
fn pointwise_bn(c_in: usize, c_out: usize, side: usize) -> Cost {
    Cost::counted(
        (c_in * c_out + 2 * c_out) as u64,
        (c_in * c_out * side * side) as u64,
    )
}

/// Output side of a 3x3 pool, a (dilated) depthwise convolution with DARTS' padding or a
/// FactorizedReduce at `stride` (all `ceil(side / stride)`).
fn out_side(side: usize, stride: usize) -> usize {
    side.div_ceil(stride)
}

/// The cost of operation `p` on `c` channels at `stride`, reading a `side`x`side` map.
pub fn op_cost(p: Primitive, c: usize, stride: usize, side: usize) -> Cost {
    let so = out_side(side, stride);
    let area = (so * so) as u64;
    // depthwise k x k + pointwise + BN
    let dw_pw = |k: usize| {
        Cost::counted(
            (c * k * k + c * c + 2 * c) as u64,
            (c * k * k + c * c) as u64 * area,
        )
    };
    match p {
        Primitive::None | Primitive::MaxPool3x3 | Primitive::AvgPool3x3 => Cost::default(),
        Primitive::SkipConnect if stride == 1 => Cost::default(),
        Primitive::SkipConnect => pointwise_bn(c, c, so),
        Primitive::SepConv3x3 => dw_pw(3) + dw_pw(3),
        Primitive::SepConv5x5 => dw_pw(5) + dw_pw(5),
        Primitive::DilConv3x3 => dw_pw(3),
        Primitive::DilConv5x5 => dw_pw(5),
    }
}

/// One cell of the evaluation network as [`NetworkConfig::init`] builds it.
#[derive(Clone, Copy, Debug)]
pub struct CellSite {
    /// Stage (0 before the first reduction, 1 from it, 2 from the second).
    pub stage: usize,
    /// Channels and reductions.
    pub shape: CellShape,
    /// Side of the cell's input s1 (s0 is twice as large after a reduction cell).
    pub side: usize,
    /// States concatenated into the output.
    pub concat: usize,
}

impl CellSite {
    /// Stride of an edge from `input` (0 = s0, 1 = s1, k >= 2 = node k - 2).
    pub fn stride(&self, input: usize) -> usize {
        if self.shape.reduction && input < 2 {
            2
        } else {
            1
        }
    }

    /// Side of the intermediate nodes and of the output.
    pub fn out_side(&self) -> usize {
        if self.shape.reduction {
            out_side(self.side, 2)
        } else {
            self.side
        }
    }

    /// The cost of the cell's fixed parts: the two preprocessing blocks and the CSC-DARTS
    /// identity connection (`identity`).
    pub fn fixed_cost(&self, identity: bool) -> Cost {
        let CellShape {
            c_prev_prev,
            c_prev,
            c,
            reduction,
            ..
        } = self.shape;
        // preprocess0 is FactorizedReduce after a reduction cell (s0 twice as large) and
        // ReLUConvBN 1x1 otherwise: the same count at the output side.
        let mut cost = pointwise_bn(c_prev_prev, c, self.side) + pointwise_bn(c_prev, c, self.side);
        let out = c * self.concat;
        if identity && (reduction || c_prev != out) {
            cost += pointwise_bn(c_prev, out, self.out_side());
        }
        cost
    }

    /// The cost of `op` on an edge from `input`.
    pub fn edge_cost(&self, op: Primitive, input: usize) -> Cost {
        let side = if input < 2 {
            self.side
        } else {
            self.out_side()
        };
        op_cost(op, self.shape.c, self.stride(input), side)
    }
}

impl NetworkConfig {
    /// The cells `init` builds, in order; `concat(stage, reduction)` is the number of
    /// states each cell concatenates (the genotype's, or 4 for a derived cell).
    fn walk(&self, concat: impl Fn(usize, bool) -> usize) -> Vec<CellSite> {
        let c_stem = 3 * self.channels;
        let (mut c_pp, mut c_p, mut c_curr) = (c_stem, c_stem, self.channels);
        let reductions = reduction_layers(self.layers);
        let (mut reduction_prev, mut stage, mut side) = (false, 0, self.image_size);
        let mut sites = Vec::with_capacity(self.layers);
        for i in 0..self.layers {
            let reduction = reductions.contains(&i);
            if reduction {
                c_curr *= 2;
                stage += 1;
            }
            let site = CellSite {
                stage,
                shape: CellShape {
                    c_prev_prev: c_pp,
                    c_prev: c_p,
                    c: c_curr,
                    reduction,
                    reduction_prev,
                },
                side,
                concat: concat(stage, reduction),
            };
            sites.push(site);
            reduction_prev = reduction;
            side = site.out_side();
            c_pp = c_p;
            c_p = c_curr * site.concat;
        }
        sites
    }

    /// The cells of this network, in order (the genotype's concat sizes).
    pub fn cell_sites(&self) -> Vec<CellSite> {
        self.walk(|stage, reduction| {
            let pair = self.genotype.stage(stage);
            if reduction {
                pair.reduce.concat.len()
            } else {
                pair.normal.concat.len()
            }
        })
    }

    /// Stem and classifier (the classifier reads the last cell's `c_last` channels).
    fn ends_cost(&self, c_last: usize) -> Cost {
        let c_stem = 3 * self.channels;
        let s = self.image_size;
        Cost::counted(
            (self.in_channels * c_stem * 9 + 2 * c_stem) as u64,
            (self.in_channels * c_stem * 9 * s * s) as u64,
        ) + Cost::counted(
            (c_last * self.classes + self.classes) as u64,
            (c_last * self.classes) as u64,
        )
    }

    /// Parameters and MACs of the network `init` builds (auxiliary head not counted).
    pub fn cost(&self) -> Result<Cost, NetworkError> {
        self.validate()?;
        let sites = self.cell_sites();
        let mut total = Cost::default();
        for s in &sites {
            total += s.fixed_cost(self.identity);
            let pair = self.genotype.stage(s.stage);
            let g = pair.cell(s.shape.reduction);
            total += g
                .edges
                .iter()
                .map(|&(op, input)| s.edge_cost(op, input))
                .sum();
        }
        let last = sites.last().map_or(0, |s| s.shape.c * s.concat);
        Ok(total + self.ends_cost(last))
    }
}

/// Cost of every choice of a searched cell pair of 4-node cells (concat of the 4 nodes).
///
/// `edges[t][node][input][op]` (t = 0 normal, 1 reduction) is the cost of `op` on the edge
/// from `input` into `node`, summed over the cells of type `t` that use the searched pair;
/// `fixed` is the rest of the network (stem, preprocessing, identity connections,
/// classifier, and the cells of the stages given as `frozen`).
#[derive(Clone, Debug, PartialEq)]
pub struct CostTable {
    /// Everything that does not depend on the searched pair's edges.
    pub fixed: Cost,
    /// `[cell type][node][input][op]`.
    pub edges: [Vec<Vec<[Cost; 8]>>; 2],
}

/// Intermediate nodes of a searched cell.
pub const NODES: usize = 4;

impl CostTable {
    /// The table of `shape` (its genotype is ignored) when the stages before
    /// `frozen.len()` use the `frozen` pairs and the searched pair fills every later
    /// stage (a plain search: `frozen` empty).
    pub fn new(shape: &NetworkConfig, frozen: &[CellPair]) -> Result<CostTable, NetworkError> {
        shape.validate()?;
        let sites = shape.walk(|_, _| NODES);
        let mut fixed = Cost::default();
        let mut edges: [Vec<Vec<[Cost; 8]>>; 2] = std::array::from_fn(|_| {
            (0..NODES)
                .map(|n| vec![[Cost::default(); 8]; n + 2])
                .collect()
        });
        for s in &sites {
            fixed += s.fixed_cost(shape.identity);
            let t = usize::from(s.shape.reduction);
            if let Some(pair) = frozen.get(s.stage) {
                let g = pair.cell(s.shape.reduction);
                fixed += g
                    .edges
                    .iter()
                    .map(|&(op, input)| s.edge_cost(op, input))
                    .sum();
                continue;
            }
            for (node, inputs) in edges[t].iter_mut().enumerate() {
                for (input, ops) in inputs.iter_mut().enumerate() {
                    for (k, &op) in Primitive::ALL.iter().enumerate() {
                        ops[k] += s.edge_cost(op, input);
                    }
                    debug_assert!(input < node + 2);
                }
            }
        }
        let last = sites.last().map_or(0, |s| s.shape.c * s.concat);
        fixed += shape.ends_cost(last);
        Ok(CostTable { fixed, edges })
    }

    /// Sets every entry's `latency_ns` from `lut` (measured on `shape`'s sizes), the
    /// frozen stages' edges and the rest of the network into `fixed` (see
    /// [`crate::latency`]).
    pub fn apply_latency(
        &mut self,
        shape: &NetworkConfig,
        frozen: &[CellPair],
        lut: &LatencyTable,
    ) -> Result<(), LatencyError> {
        lut.check_network(shape)?;
        let sites = shape.walk(|_, _| NODES);
        let mut fixed = lut.fixed_ns;
        for row in self.edges.iter_mut().flatten().flatten() {
            for c in row.iter_mut() {
                c.latency_ns = 0;
            }
        }
        for (i, s) in sites.iter().enumerate() {
            let t = usize::from(s.shape.reduction);
            if let Some(pair) = frozen.get(s.stage) {
                for &(op, input) in &pair.cell(s.shape.reduction).edges {
                    fixed += lut.edge_ns(i, op, s.stride(input))?;
                }
                continue;
            }
            for inputs in self.edges[t].iter_mut() {
                for (input, ops) in inputs.iter_mut().enumerate() {
                    for (k, &op) in Primitive::ALL.iter().enumerate() {
                        ops[k].latency_ns += lut.edge_ns(i, op, s.stride(input))?;
                    }
                }
            }
        }
        self.fixed.latency_ns = fixed;
        Ok(())
    }

    /// The cost of the network with `pair` as the searched pair (4-node cells).
    pub fn pair_cost(&self, pair: &CellPair) -> Cost {
        let mut total = self.fixed;
        for (t, g) in [&pair.normal, &pair.reduce].into_iter().enumerate() {
            for (j, &(op, input)) in g.edges.iter().enumerate() {
                total += self.edges[t][j / 2][input][op.index()];
            }
        }
        total
    }
}

#[cfg(test)]
#[path = "cost_tests.rs"]
mod tests;
