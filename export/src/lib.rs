//! Export: genotype + trained weights -> compact network (BatchNorm folded, training-only
//! parts removed) -> one self-contained ONNX file.
//!
//! Done so far: [`fold`], BatchNorm folding on host weights. The compact network, the
//! ONNX writer and `splitnas export` follow (see the export issue). Dependency
//! direction: `export -> models`.
#![warn(missing_docs)]

pub mod fold;
