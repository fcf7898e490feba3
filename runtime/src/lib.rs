//! Runtime: load an ONNX file and run inference with Burn on a chosen device. Depends on
//! neither `splitnas-models` nor `splitnas-search`, so an edge build links no training code.
//!
//! Not implemented yet: see the runtime issue.
#![warn(missing_docs)]
