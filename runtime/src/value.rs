//! What the loader knows about values: shapes with a symbolic batch dimension, and
//! constants (initializers, `Constant` nodes, folded shape arithmetic) on the host.
//!
//! Every run-time tensor is a Burn `Tensor<B, 4>`: a value of rank r <= 4 is stored with
//! its shape padded by trailing 1s (`[N, K]` as `[N, K, 1, 1]`), which keeps axis indices
//! unchanged, so Concat, Slice, ReduceMean and broadcasting need no rank bookkeeping.

use crate::error::RuntimeError;
use onnx_protobuf::{tensor_proto::DataType, TensorProto};

/// One dimension: the symbolic batch size N, or a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The batch size, known only when the model runs.
    Batch,
    /// A fixed size.
    Fixed(usize),
}

impl Dim {
    /// The size with batch size `n`.
    pub fn at(self, n: usize) -> usize {
        match self {
            Dim::Batch => n,
            Dim::Fixed(v) => v,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Batch => f.write_str("N"),
            Dim::Fixed(v) => write!(f, "{v}"),
        }
    }
}

/// Formats a shape like `[N, 3, 32, 32]`.
pub fn show(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// An integer that may be the batch size (shape arithmetic on `Shape` outputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymInt {
    /// A plain value.
    Val(i64),
    /// The batch size N.
    Batch,
}

/// Element type of an integer tensor of a quantized model: the data and zero points of
/// `QuantizeLinear` / `DequantizeLinear` (int8, uint8) and quantized biases (int32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QType {
    /// int8.
    I8,
    /// uint8.
    U8,
    /// int32.
    I32,
}

impl QType {
    /// Smallest and largest value.
    pub fn range(self) -> (i32, i32) {
        match self {
            QType::I8 => (i8::MIN.into(), i8::MAX.into()),
            QType::U8 => (0, u8::MAX.into()),
            QType::I32 => (i32::MIN, i32::MAX),
        }
    }

    /// The ONNX name: `int8`, `uint8`, `int32`.
    pub fn name(self) -> &'static str {
        match self {
            QType::I8 => "int8",
            QType::U8 => "uint8",
            QType::I32 => "int32",
        }
    }
}

/// A value known at load time.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    /// Float tensor (row-major).
    F32 {
        /// Shape.
        dims: Vec<usize>,
        /// Values.
        data: Vec<f32>,
    },
    /// Integer tensor (int64 in the file, or shape arithmetic; may hold the symbolic batch
    /// size).
    Int {
        /// Shape.
        dims: Vec<usize>,
        /// Values.
        data: Vec<SymInt>,
    },
    /// int8, uint8 or int32 tensor, its element type kept (quantized weights, zero points,
    /// biases; int32 shape operands are read through [`Const::ints`] like int64 ones).
    Quant {
        /// Element type.
        ty: QType,
        /// Shape.
        dims: Vec<usize>,
        /// Values (in `ty`'s range).
        data: Vec<i32>,
    },
}

impl Const {
    /// Shape.
    pub fn dims(&self) -> &[usize] {
        match self {
            Const::F32 { dims, .. } | Const::Int { dims, .. } | Const::Quant { dims, .. } => dims,
        }
    }

    /// The same values with shape `dims` (same element count; reshapes of constants).
    pub fn with_dims(self, dims: Vec<usize>) -> Const {
        match self {
            Const::F32 { data, .. } => Const::F32 { dims, data },
            Const::Int { data, .. } => Const::Int { dims, data },
            Const::Quant { ty, data, .. } => Const::Quant { ty, dims, data },
        }
    }

    /// An integer tensor of any width as [`Const::Int`] (shape arithmetic); others as they are.
    pub fn widened(self) -> Const {
        match self {
            Const::Quant { dims, data, .. } => Const::Int {
                dims,
                data: data.into_iter().map(|v| SymInt::Val(v.into())).collect(),
            },
            c => c,
        }
    }

    /// Plain integer values (error if one is symbolic or the tensor is float).
    pub fn ints(&self, what: &str) -> Result<Vec<i64>, String> {
        match self {
            Const::Int { data, .. } => data
                .iter()
                .map(|v| match v {
                    SymInt::Val(v) => Ok(*v),
                    SymInt::Batch => Err(format!("{what} depends on the batch size")),
                })
                .collect(),
            Const::Quant { data, .. } => Ok(data.iter().map(|&v| v.into()).collect()),
            Const::F32 { .. } => Err(format!("{what} must be an integer tensor")),
        }
    }
}

/// Element count of `dims`, None on overflow.
pub fn numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Reads an initializer or `Constant` value: float32, int64, and (as [`Const::Quant`])
/// int32, int8 and uint8, from `raw_data` or the typed fields (int8/uint8 values one per
/// `int32_data` entry, each checked to lie in its type's range).
pub fn from_proto(t: &TensorProto) -> Result<Const, String> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n = numel(&dims).ok_or("dimensions overflow")?;
    if !t.external_data.is_empty() {
        return Err("external data is not supported (the file must be self-contained)".into());
    }
    let raw = &t.raw_data;
    let bad_len = |have: usize| format!("{have} values for shape {dims:?} ({n} needed)");
    match t.data_type {
        x if x == DataType::FLOAT as i32 => {
            let data: Vec<f32> = if !raw.is_empty() {
                if raw.len() != n.checked_mul(4).ok_or("size overflow")? {
                    return Err(bad_len(raw.len() / 4));
                }
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            } else {
                t.float_data.clone()
            };
            if data.len() != n {
                return Err(bad_len(data.len()));
            }
            Ok(Const::F32 { dims, data })
        }
        x if x == DataType::INT64 as i32 => {
            let data: Vec<i64> = if !raw.is_empty() {
                if raw.len() != n.checked_mul(8).ok_or("size overflow")? {
                    return Err(bad_len(raw.len() / 8));
                }
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .collect()
            } else {
                t.int64_data.clone()
            };
            if data.len() != n {
                return Err(bad_len(data.len()));
            }
            Ok(Const::Int {
                dims,
                data: data.into_iter().map(SymInt::Val).collect(),
            })
        }
        x if x == DataType::INT32 as i32
            || x == DataType::INT8 as i32
            || x == DataType::UINT8 as i32 =>
        {
            let ty = match x {
                x if x == DataType::INT8 as i32 => QType::I8,
                x if x == DataType::UINT8 as i32 => QType::U8,
                _ => QType::I32,
            };
            let data: Vec<i32> = match (ty, raw.is_empty()) {
                (QType::I32, false) => {
                    if raw.len() != n.checked_mul(4).ok_or("size overflow")? {
                        return Err(bad_len(raw.len() / 4));
                    }
                    raw.chunks_exact(4)
                        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                }
                (QType::I8, false) => raw.iter().map(|&b| b as i8 as i32).collect(),
                (_, false) => raw.iter().map(|&b| b as i32).collect(),
                (_, true) => t.int32_data.clone(),
            };
            if data.len() != n {
                return Err(bad_len(data.len()));
            }
            let (lo, hi) = ty.range();
            if let Some(v) = data.iter().find(|v| !(lo..=hi).contains(*v)) {
                return Err(format!("value {v} is out of the {} range", ty.name()));
            }
            Ok(Const::Quant { ty, dims, data })
        }
        other => Err(format!(
            "tensor data type {other} is not supported (float32, int64, int32, int8, uint8 are)"
        )),
    }
}

/// The shape a rank <= 4 value has in its `Tensor<B, 4>` (trailing 1s).
pub fn physical(shape: &[usize]) -> Result<[usize; 4], RuntimeError> {
    if shape.len() > 4 {
        return Err(RuntimeError::Model(format!(
            "a tensor of rank {} (at most 4 are supported)",
            shape.len()
        )));
    }
    let mut p = [1; 4];
    p[..shape.len()].copy_from_slice(shape);
    Ok(p)
}
