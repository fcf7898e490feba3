//! Export: genotype + trained weights -> compact network (BatchNorm folded, training-only
//! parts removed) -> one self-contained ONNX file.
//!
//! Not implemented yet: see the export issue. The crate exists so the workspace layout
//! and the dependency direction (`export -> models`) are fixed from the start.
#![warn(missing_docs)]
