//! Latency tables (`lut.json`): the measured time of every op on the edges of each cell
//! of one evaluation network (C, L, input size), at stride 1 and, in reduction cells,
//! stride 2, and of the rest of the network (stem, preprocessing, additions, classifier).
//! `splitnas bench ops` writes one on the device it runs on; `search --latency-table`
//! prices the searched edges with it ([`crate::CostTable::apply_latency`]), so that the
//! network's latency is `fixed_ns + sum over its edges`: an additive model (FBNet's), whose
//! error against whole-network timings the file records in `checks`.

use crate::genotype::Primitive;
use crate::network::NetworkConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `format` of the files this version writes and reads.
pub const LATENCY_FORMAT: &str = "splitnas-latency/1";

/// The evaluation network a table was measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyNetwork {
    /// Initial channels C.
    pub channels: usize,
    /// Cells L.
    pub layers: usize,
    /// Input side.
    pub image_size: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub classes: usize,
    /// CSC-DARTS identity connection.
    pub identity: bool,
}

impl LatencyNetwork {
    /// The sizes of `cfg`.
    pub fn of(cfg: &NetworkConfig) -> Self {
        LatencyNetwork {
            channels: cfg.channels,
            layers: cfg.layers,
            image_size: cfg.image_size,
            in_channels: cfg.in_channels,
            classes: cfg.classes,
            identity: cfg.identity,
        }
    }
}

/// One op's time on one edge of a cell, nanoseconds (`None`: no such edge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpLatency {
    /// An edge from an input at the cell's resolution (every edge of a normal cell; the
    /// edges from intermediate nodes in a reduction cell).
    pub stride1_ns: Option<u64>,
    /// An edge from s0 or s1 of a reduction cell.
    pub stride2_ns: Option<u64>,
}

/// A measured network against the table's prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyCheck {
    /// The genotype (DARTS notation).
    pub genotype: String,
    /// `fixed_ns + sum of its edges`.
    pub predicted_ns: u64,
    /// Sum of its steps, measured.
    pub measured_ns: u64,
}

/// A latency table (see the module notes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    /// [`LATENCY_FORMAT`].
    pub format: String,
    /// Where it was measured (engine, backend, threads, host).
    pub device: String,
    /// The network.
    pub network: LatencyNetwork,
    /// Timed runs per network (the median step time is kept).
    pub repeats: usize,
    /// Everything but the searched edges.
    pub fixed_ns: u64,
    /// Per cell in network order: per op name (DARTS', `none` left out) its times.
    pub cells: Vec<BTreeMap<String, OpLatency>>,
    /// Whole networks timed against the prediction.
    #[serde(default)]
    pub checks: Vec<LatencyCheck>,
}

/// Why a latency table does not price a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LatencyError {
    /// Another format.
    #[error("format {found:?}, expected {LATENCY_FORMAT:?}")]
    Format {
        /// The file's.
        found: String,
    },
    /// Measured on other sizes.
    #[error("measured on C={} L={} {}x{}x{} ({} classes, identity={}), the network is C={} L={} {}x{}x{} ({} classes, identity={})", .table.channels, .table.layers, .table.in_channels, .table.image_size, .table.image_size, .table.classes, .table.identity, .network.channels, .network.layers, .network.in_channels, .network.image_size, .network.image_size, .network.classes, .network.identity)]
    Network {
        /// The table's.
        table: LatencyNetwork,
        /// The one priced.
        network: LatencyNetwork,
    },
    /// A cell or op without a time.
    #[error("no time for {op} at stride {stride} in cell {cell}")]
    Missing {
        /// Cell index.
        cell: usize,
        /// Op name.
        op: String,
        /// 1 or 2.
        stride: usize,
    },
}

impl LatencyTable {
    /// An error unless the table was measured on `cfg`'s sizes, in this format, with a
    /// cell per layer.
    pub fn check_network(&self, cfg: &NetworkConfig) -> Result<(), LatencyError> {
        if self.format != LATENCY_FORMAT {
            return Err(LatencyError::Format {
                found: self.format.clone(),
            });
        }
        let network = LatencyNetwork::of(cfg);
        if self.network != network || self.cells.len() != cfg.layers {
            return Err(LatencyError::Network {
                table: self.network,
                network,
            });
        }
        Ok(())
    }

    /// The time of `op` on an edge of cell `cell` at `stride` (`none` and a stride-1
    /// skip: 0, they run nothing).
    pub fn edge_ns(&self, cell: usize, op: Primitive, stride: usize) -> Result<u64, LatencyError> {
        if op == Primitive::None || (op == Primitive::SkipConnect && stride == 1) {
            return Ok(0);
        }
        let t = self.cells.get(cell).and_then(|c| c.get(op.name()));
        let v = match stride {
            1 => t.and_then(|t| t.stride1_ns),
            _ => t.and_then(|t| t.stride2_ns),
        };
        v.ok_or_else(|| LatencyError::Missing {
            cell,
            op: op.name().into(),
            stride,
        })
    }

    /// The predicted latency of `cfg`'s network: `fixed_ns` plus its edges.
    pub fn network_ns(&self, cfg: &NetworkConfig) -> Result<u64, LatencyError> {
        self.check_network(cfg)?;
        let mut total = self.fixed_ns;
        for (i, s) in cfg.cell_sites().iter().enumerate() {
            let g = cfg.genotype.stage(s.stage).cell(s.shape.reduction);
            for &(op, input) in &g.edges {
                total += self.edge_ns(i, op, s.stride(input))?;
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    //! A hand-made table priced three ways: by hand, by `network_ns` and through the
    //! search's cost table.
    use super::*;
    use crate::genotype::{CellGenotype, CellPair, Genotype};
    use crate::{zoo, CostTable};

    fn shape() -> NetworkConfig {
        NetworkConfig::new(zoo::by_name("DARTS_V2").unwrap())
            .with_channels(8)
            .with_layers(5)
            .with_in_channels(1)
            .with_image_size(28)
    }

    /// Cell i, op k, stride s: 1000 i + 10 k + s nanoseconds (reduction cells: layers 1
    /// and 3 of 5 have stride-2 times).
    fn table() -> LatencyTable {
        let cells = (0..5)
            .map(|i| {
                Primitive::ALL[1..]
                    .iter()
                    .map(|&op| {
                        let v = |s: u64| 1000 * i as u64 + 10 * op.index() as u64 + s;
                        let t = OpLatency {
                            stride1_ns: Some(v(1)),
                            stride2_ns: (i == 1 || i == 3).then(|| v(2)),
                        };
                        (op.name().to_string(), t)
                    })
                    .collect()
            })
            .collect();
        LatencyTable {
            format: LATENCY_FORMAT.into(),
            device: "hand-made".into(),
            network: LatencyNetwork::of(&shape()),
            repeats: 1,
            fixed_ns: 7,
            cells,
            checks: vec![],
        }
    }

    #[test]
    fn a_one_op_network_is_priced_by_hand() {
        let op = Primitive::MaxPool3x3;
        let cell = CellGenotype {
            edges: (0..4).flat_map(|_| [(op, 0), (op, 1)]).collect(),
            concat: vec![2, 3, 4, 5],
        };
        let mut cfg = shape();
        cfg.genotype = Genotype::uniform(cell.clone(), cell).unwrap();
        // normal cells 0, 2, 4 at stride 1; reduction cells 1, 3 at stride 2 (all edges
        // read s0 or s1); 8 edges per cell
        let k = op.index() as u64;
        let want = 7 + 8 * [(0, 1), (1, 2), (2, 1), (3, 2), (4, 1)]
            .iter()
            .map(|&(i, s)| 1000 * i + 10 * k + s)
            .sum::<u64>();
        assert_eq!(table().network_ns(&cfg).unwrap(), want);
    }

    #[test]
    fn the_cost_table_prices_as_the_table_does() {
        let lut = table();
        let mut costs = CostTable::new(&shape(), &[]).unwrap();
        costs.apply_latency(&shape(), &[], &lut).unwrap();
        for seed in 1..20 {
            let g = zoo::random(seed);
            let mut cfg = shape();
            cfg.genotype = g.clone();
            assert_eq!(
                costs.pair_cost(g.stage(0)).latency_ns,
                lut.network_ns(&cfg).unwrap()
            );
        }
        // a frozen first stage moves into the fixed part
        let frozen: Vec<CellPair> = vec![zoo::random(99).stage(0).clone()];
        let mut costs = CostTable::new(&shape(), &frozen).unwrap();
        costs.apply_latency(&shape(), &frozen, &lut).unwrap();
        let pair = zoo::random(5).stage(0).clone();
        let mut cfg = shape();
        cfg.genotype = Genotype::new(vec![frozen[0].clone(), pair.clone()]).unwrap();
        assert_eq!(
            costs.pair_cost(&pair).latency_ns,
            lut.network_ns(&cfg).unwrap()
        );
    }

    #[test]
    fn a_table_of_other_sizes_or_with_a_gap_is_refused() {
        let lut = table();
        let other = shape().with_channels(16);
        let e = lut.network_ns(&other).unwrap_err();
        assert!(e.to_string().contains("measured on C=8 L=5"), "{e}");
        let mut gap = lut.clone();
        gap.cells[3].remove("sep_conv_3x3");
        let mut costs = CostTable::new(&shape(), &[]).unwrap();
        let e = costs.apply_latency(&shape(), &[], &gap).unwrap_err();
        assert_eq!(
            e,
            LatencyError::Missing {
                cell: 3,
                op: "sep_conv_3x3".into(),
                // cell 3 is a reduction cell: its edges from s0 are priced first
                stride: 2
            }
        );
        let mut old = lut;
        old.format = "splitnas-latency/0".into();
        assert!(matches!(
            old.check_network(&shape()),
            Err(LatencyError::Format { .. })
        ));
    }
}
