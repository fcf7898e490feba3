//! Genotypes: which operation sits on which edge of the normal and reduction cells.
//!
//! JSON (what `splitnas genotype show` prints and `splitnas search` writes) mirrors the
//! DARTS namedtuple:
//! `{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], "reduce": [...], "reduce_concat": [...]}`.
//! DARTS notation is the Python text users paste from PyTorch repositories:
//! `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=range(2, 6))`.
//!
//! A genotype may also give one (normal, reduce) pair per stage (LFR-DARTS; a stage is
//! the cells between two reductions): JSON `{"stages": [{...}, {...}, {...}]}`, DARTS
//! notation `[Genotype(...), Genotype(...), Genotype(...)]`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The 8 DARTS candidate operations, in the reference order (index = position).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Primitive {
    /// Zeros (of the strided shape at stride 2).
    None,
    /// 3x3 max pooling, pad 1.
    #[serde(rename = "max_pool_3x3")]
    MaxPool3x3,
    /// 3x3 average pooling, pad 1, padding not counted.
    #[serde(rename = "avg_pool_3x3")]
    AvgPool3x3,
    /// Identity at stride 1, FactorizedReduce at stride 2.
    SkipConnect,
    /// Two stacked ReLU / depthwise 3x3 / pointwise / BN blocks.
    #[serde(rename = "sep_conv_3x3")]
    SepConv3x3,
    /// Two stacked ReLU / depthwise 5x5 / pointwise / BN blocks.
    #[serde(rename = "sep_conv_5x5")]
    SepConv5x5,
    /// ReLU / depthwise 3x3 dilation 2 / pointwise / BN.
    #[serde(rename = "dil_conv_3x3")]
    DilConv3x3,
    /// ReLU / depthwise 5x5 dilation 2 / pointwise / BN.
    #[serde(rename = "dil_conv_5x5")]
    DilConv5x5,
}

impl Primitive {
    /// All operations in the DARTS order.
    pub const ALL: [Primitive; 8] = [
        Primitive::None,
        Primitive::MaxPool3x3,
        Primitive::AvgPool3x3,
        Primitive::SkipConnect,
        Primitive::SepConv3x3,
        Primitive::SepConv5x5,
        Primitive::DilConv3x3,
        Primitive::DilConv5x5,
    ];

    /// The DARTS name (`sep_conv_3x3`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Primitive::None => "none",
            Primitive::MaxPool3x3 => "max_pool_3x3",
            Primitive::AvgPool3x3 => "avg_pool_3x3",
            Primitive::SkipConnect => "skip_connect",
            Primitive::SepConv3x3 => "sep_conv_3x3",
            Primitive::SepConv5x5 => "sep_conv_5x5",
            Primitive::DilConv3x3 => "dil_conv_3x3",
            Primitive::DilConv5x5 => "dil_conv_5x5",
        }
    }

    /// Parses a DARTS name.
    pub fn from_name(name: &str) -> Result<Self, GenotypeError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| GenotypeError::UnknownOp(name.to_string()))
    }

    /// Position in [`Primitive::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

impl fmt::Display for Primitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What can be wrong with a genotype.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenotypeError {
    /// An operation name that is not one of the 8 DARTS primitives.
    #[error("unknown operation '{0}' (known: none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5)")]
    UnknownOp(String),
    /// A cell whose edge list cannot be split into 2 edges per node.
    #[error("{cell} cell has {edges} edges: a cell needs 2 edges per intermediate node (8 for the usual 4 nodes)")]
    EdgeCount {
        /// `normal` or `reduce`.
        cell: String,
        /// Number of edges given.
        edges: usize,
    },
    /// An edge reading a state that does not exist yet.
    #[error("{cell} cell, node {node}, edge {edge}: input {input} is out of range (node {node} may read 0..={max}: s0, s1 and the earlier nodes)")]
    InputOutOfRange {
        /// `normal` or `reduce`.
        cell: String,
        /// Intermediate node (0-based).
        node: usize,
        /// Edge within the node (0 or 1).
        edge: usize,
        /// The input index given.
        input: usize,
        /// Largest valid index.
        max: usize,
    },
    /// A concat list naming a state that is not an intermediate node.
    #[error("{cell}_concat: {index} is not an intermediate node (valid: 2..={max})")]
    BadConcat {
        /// `normal` or `reduce`.
        cell: String,
        /// The bad index.
        index: usize,
        /// Largest valid index.
        max: usize,
    },
    /// Text that is not DARTS notation.
    #[error("cannot parse DARTS notation at character {pos}: {msg}")]
    Syntax {
        /// Character offset.
        pos: usize,
        /// What was expected.
        msg: String,
    },
    /// Malformed JSON.
    #[error("invalid genotype JSON: {0}")]
    Json(String),
    /// A name that is neither in the zoo nor a file.
    #[error(
        "'{0}' is neither a genotype in the zoo (DARTS_V1, DARTS_V2, PC_DARTS) nor a readable file"
    )]
    NotFound(String),
    /// A file that could not be read.
    #[error("cannot read genotype file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file whose content is neither JSON nor DARTS notation.
    #[error("genotype file {path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// The cause.
        source: Box<GenotypeError>,
    },
}

/// One cell: two `(operation, input)` edges per intermediate node, in node order, and
/// the states concatenated into the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellGenotype {
    /// `(op, input)` with input 0 = s0, 1 = s1, k >= 2 = intermediate node k - 2.
    pub edges: Vec<(Primitive, usize)>,
    /// States concatenated into the cell output (usually `[2, 3, 4, 5]`).
    pub concat: Vec<usize>,
}

impl CellGenotype {
    /// Number of intermediate nodes.
    pub fn nodes(&self) -> usize {
        self.edges.len() / 2
    }

    fn validate(&self, cell: &str) -> Result<(), GenotypeError> {
        if self.edges.is_empty() || self.edges.len() % 2 != 0 {
            return Err(GenotypeError::EdgeCount {
                cell: cell.into(),
                edges: self.edges.len(),
            });
        }
        for (j, &(_, input)) in self.edges.iter().enumerate() {
            let node = j / 2;
            if input > node + 1 {
                return Err(GenotypeError::InputOutOfRange {
                    cell: cell.into(),
                    node,
                    edge: j % 2,
                    input,
                    max: node + 1,
                });
            }
        }
        let max = self.nodes() + 1;
        if self.concat.is_empty() {
            return Err(GenotypeError::BadConcat {
                cell: cell.into(),
                index: 0,
                max,
            });
        }
        for &index in &self.concat {
            if !(2..=max).contains(&index) {
                return Err(GenotypeError::BadConcat {
                    cell: cell.into(),
                    index,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// A (normal, reduction) cell pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellPair {
    /// Cell used at stride 1.
    pub normal: CellGenotype,
    /// Cell used where the resolution halves.
    pub reduce: CellGenotype,
}

impl CellPair {
    /// The reduction cell (`reduction`) or the normal one.
    pub fn cell(&self, reduction: bool) -> &CellGenotype {
        if reduction {
            &self.reduce
        } else {
            &self.normal
        }
    }
}

/// A genotype: one cell pair for the whole network, or one per stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "GenotypeJson")]
pub struct Genotype {
    stages: Vec<CellPair>,
}

#[derive(Serialize, Deserialize)]
struct PairJson {
    normal: Vec<(Primitive, usize)>,
    normal_concat: Vec<usize>,
    reduce: Vec<(Primitive, usize)>,
    reduce_concat: Vec<usize>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum GenotypeJson {
    Staged { stages: Vec<PairJson> },
    Uniform(PairJson),
}

impl From<PairJson> for CellPair {
    fn from(p: PairJson) -> Self {
        CellPair {
            normal: CellGenotype {
                edges: p.normal,
                concat: p.normal_concat,
            },
            reduce: CellGenotype {
                edges: p.reduce,
                concat: p.reduce_concat,
            },
        }
    }
}

impl From<&CellPair> for PairJson {
    fn from(p: &CellPair) -> Self {
        PairJson {
            normal: p.normal.edges.clone(),
            normal_concat: p.normal.concat.clone(),
            reduce: p.reduce.edges.clone(),
            reduce_concat: p.reduce.concat.clone(),
        }
    }
}

impl TryFrom<serde_json::Value> for Genotype {
    type Error = GenotypeError;
    fn try_from(mut v: serde_json::Value) -> Result<Self, GenotypeError> {
        let json = |e: serde_json::Error| GenotypeError::Json(e.to_string());
        let stages: Vec<PairJson> = match v.get_mut("stages") {
            Some(stages) => serde_json::from_value(stages.take()).map_err(json)?,
            None => vec![serde_json::from_value(v).map_err(json)?],
        };
        Genotype::new(stages.into_iter().map(Into::into).collect())
    }
}

impl From<Genotype> for GenotypeJson {
    fn from(g: Genotype) -> Self {
        if g.stages.len() == 1 {
            GenotypeJson::Uniform((&g.stages[0]).into())
        } else {
            GenotypeJson::Staged {
                stages: g.stages.iter().map(Into::into).collect(),
            }
        }
    }
}

impl Genotype {
    /// A genotype from one cell pair (uniform) or one pair per stage; validated.
    pub fn new(stages: Vec<CellPair>) -> Result<Self, GenotypeError> {
        if stages.is_empty() {
            return Err(GenotypeError::Syntax {
                pos: 0,
                msg: "a genotype needs at least one cell pair".into(),
            });
        }
        for pair in &stages {
            pair.normal.validate("normal")?;
            pair.reduce.validate("reduce")?;
        }
        Ok(Genotype { stages })
    }

    /// A uniform genotype from one normal and one reduction cell.
    pub fn uniform(normal: CellGenotype, reduce: CellGenotype) -> Result<Self, GenotypeError> {
        Self::new(vec![CellPair { normal, reduce }])
    }

    /// All cell pairs (one for a uniform genotype).
    pub fn stages(&self) -> &[CellPair] {
        &self.stages
    }

    /// The cell pair used in `stage` (0 before the first reduction, 1 from the first
    /// reduction cell, 2 from the second). A uniform genotype returns its only pair.
    pub fn stage(&self, stage: usize) -> &CellPair {
        &self.stages[stage.min(self.stages.len() - 1)]
    }

    /// The first stage's normal cell.
    pub fn normal(&self) -> &CellGenotype {
        &self.stages[0].normal
    }

    /// The first stage's reduction cell.
    pub fn reduce(&self) -> &CellGenotype {
        &self.stages[0].reduce
    }

    /// Pretty JSON, as `genotype show` prints and `search` writes.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<Self, GenotypeError> {
        // Through `Value`, so a bad cell comes back as the error `try_from` gives, not wrapped
        // in serde's message (which said "invalid genotype JSON" twice).
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| GenotypeError::Json(e.to_string()))?;
        Genotype::try_from(value)
    }

    /// DARTS notation (`Genotype(normal=[...], normal_concat=[...], ...)`).
    pub fn to_darts(&self) -> String {
        let one = |p: &CellPair| {
            let edges = |c: &CellGenotype| {
                c.edges
                    .iter()
                    .map(|(op, i)| format!("('{}', {})", op.name(), i))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let concat = |c: &CellGenotype| {
                c.concat
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "Genotype(normal=[{}], normal_concat=[{}], reduce=[{}], reduce_concat=[{}])",
                edges(&p.normal),
                concat(&p.normal),
                edges(&p.reduce),
                concat(&p.reduce)
            )
        };
        if self.stages.len() == 1 {
            one(&self.stages[0])
        } else {
            format!(
                "[{}]",
                self.stages.iter().map(one).collect::<Vec<_>>().join(", ")
            )
        }
    }

    /// Parses DARTS notation, optionally preceded by `NAME =`.
    pub fn from_darts(text: &str) -> Result<Self, GenotypeError> {
        crate::notation::parse(text)
    }

    /// Resolves a zoo name (case-insensitive) or reads a file holding JSON or DARTS notation.
    pub fn resolve(name_or_path: &str) -> Result<Self, GenotypeError> {
        if let Some(g) = crate::zoo::by_name(name_or_path) {
            return Ok(g);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(GenotypeError::NotFound(name_or_path.to_string()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| GenotypeError::Io {
            path: name_or_path.to_string(),
            source,
        })?;
        Self::parse_any(&text).map_err(|e| GenotypeError::InFile {
            path: name_or_path.to_string(),
            source: Box::new(e),
        })
    }

    /// Parses JSON if the text starts with `{`, DARTS notation otherwise.
    pub fn parse_any(text: &str) -> Result<Self, GenotypeError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_darts(text)
        }
    }
}

impl fmt::Display for Genotype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_darts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo;

    #[test]
    fn darts_notation_round_trips_for_the_zoo() {
        for name in zoo::NAMES {
            let g = zoo::by_name(name).unwrap();
            let text = g.to_darts();
            assert_eq!(Genotype::from_darts(&text).unwrap(), g, "{name}");
            let json = g.to_json();
            assert_eq!(Genotype::from_json(&json).unwrap(), g, "{name}");
        }
    }

    #[test]
    fn json_matches_the_darts_namedtuple_layout() {
        let g = zoo::by_name("darts_v2").unwrap();
        let v: serde_json::Value = serde_json::from_str(&g.to_json()).unwrap();
        assert_eq!(v["normal"][0], serde_json::json!(["sep_conv_3x3", 0]));
        assert_eq!(v["normal_concat"], serde_json::json!([2, 3, 4, 5]));
        assert_eq!(v["reduce"][7], serde_json::json!(["max_pool_3x3", 1]));
    }

    #[test]
    fn staged_genotype_round_trips() {
        let a = zoo::by_name("DARTS_V1").unwrap().stages()[0].clone();
        let b = zoo::by_name("DARTS_V2").unwrap().stages()[0].clone();
        let c = zoo::by_name("PC_DARTS").unwrap().stages()[0].clone();
        let g = Genotype::new(vec![a, b.clone(), c]).unwrap();
        assert_eq!(g.stage(1), &b);
        assert_eq!(Genotype::from_darts(&g.to_darts()).unwrap(), g);
        assert_eq!(Genotype::from_json(&g.to_json()).unwrap(), g);
    }

    #[test]
    fn json_rejects_invalid_cells() {
        let bad = r#"{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 5]], "normal_concat": [2],
                      "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}"#;
        let err = Genotype::from_json(bad).unwrap_err().to_string();
        assert!(err.contains("input 5 is out of range"), "{err}");
        let bad_op = bad.replace("\"sep_conv_3x3\", 0", "\"conv_7x7\", 0");
        let err = Genotype::from_json(&bad_op).unwrap_err().to_string();
        assert!(err.contains("conv_7x7"), "{err}");
        let err = Genotype::from_json(r#"{"normal": 3}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err.matches("invalid genotype JSON").count(), 1, "{err}");
        assert!(err.contains("expected a sequence"), "{err}");
        let err = Genotype::from_json("{").unwrap_err().to_string();
        assert!(err.starts_with("invalid genotype JSON: EOF"), "{err}");
    }
}
