//! QDQ graph pieces for tests: integer initializers, `QuantizeLinear` /
//! `DequantizeLinear` pairs on activations (the layout `splitnas quantize` writes: one
//! scale and one int8 zero point shared by the pair), int8 weights quantized per output
//! channel and int32 biases in accumulator units.

use super::G;
use onnx_protobuf::TensorProto;

/// A quantized weight: the name of its `DequantizeLinear` output, the int8 values and
/// the per-channel scales.
pub struct QWeight {
    pub name: String,
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
}

impl G {
    fn typed(&mut self, name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> String {
        self.g.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type,
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }

    /// A float32 scalar (shape `[]`).
    pub fn scalar(&mut self, name: &str, v: f32) -> String {
        self.typed(name, &[], 1, v.to_le_bytes().to_vec())
    }

    /// An int8 initializer (`raw_data`).
    pub fn int8s(&mut self, name: &str, dims: &[i64], vals: &[i8]) -> String {
        self.typed(name, dims, 3, vals.iter().map(|&v| v as u8).collect())
    }

    /// A uint8 initializer (`raw_data`).
    pub fn uint8s(&mut self, name: &str, dims: &[i64], vals: &[u8]) -> String {
        self.typed(name, dims, 2, vals.to_vec())
    }

    /// An int32 initializer (`raw_data`).
    pub fn int32s(&mut self, name: &str, dims: &[i64], vals: &[i32]) -> String {
        let raw = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.typed(name, dims, 6, raw)
    }

    /// An initializer of `data_type` whose values sit in `int32_data` (the form ONNX
    /// uses for int8 / uint8 without `raw_data`).
    pub fn int32_data(&mut self, name: &str, dims: &[i64], data_type: i32, vals: &[i32]) -> String {
        self.g.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type,
            int32_data: vals.to_vec(),
            ..Default::default()
        });
        name.into()
    }

    /// `QuantizeLinear(t, s, z) -> tq`, `DequantizeLinear(tq, s, z) -> td` with a shared
    /// float scale and int8 zero point; returns `td`.
    pub fn qdq(&mut self, t: &str, scale: f32, zero: i8) -> String {
        let s = self.scalar(&format!("{t}s"), scale);
        let z = self.int8s(&format!("{t}z"), &[], &[zero]);
        let q = self.node("QuantizeLinear", &[t, &s, &z], &format!("{t}q"), vec![]);
        self.node("DequantizeLinear", &[&q, &s, &z], &format!("{t}d"), vec![])
    }

    /// Pseudo-random int8 weights of `dims` in [-127, 127], one scale per index of
    /// `axis` (`base` times 1, 1.25, 1.5, ...), zero point omitted, behind a
    /// `DequantizeLinear` with that axis.
    pub fn qweight(&mut self, name: &str, dims: &[i64], axis: usize, base: f32) -> QWeight {
        let len: i64 = dims.iter().product();
        let q: Vec<i8> = (0..len)
            .map(|_| (self.rand() * 127.0).round() as i8)
            .collect();
        let c = dims[axis] as usize;
        let scale: Vec<f32> = (0..c)
            .map(|i| base * (1.0 + 0.25 * (i % 5) as f32))
            .collect();
        let w = self.int8s(&format!("{name}q"), dims, &q);
        let s = self.floats(&format!("{name}s"), &[c as i64], &scale);
        let a = vec![("axis", super::A::I(axis as i64))];
        let name = self.node("DequantizeLinear", &[&w, &s], name, a);
        QWeight { name, q, scale }
    }

    /// An int32 bias `[m]` of pseudo-random values in ±`range`, scale `s_x s_w[c]`, behind
    /// a `DequantizeLinear` (axis 0); returns the name and the values.
    pub fn qbias(&mut self, name: &str, s_x: f32, s_w: &[f32], range: f32) -> (String, Vec<i32>) {
        let m = s_w.len();
        let b: Vec<i32> = (0..m)
            .map(|_| (self.rand() * range).round() as i32)
            .collect();
        let q = self.int32s(&format!("{name}q"), &[m as i64], &b);
        let sb: Vec<f32> = s_w.iter().map(|&s| s_x * s).collect();
        let s = self.floats(&format!("{name}s"), &[m as i64], &sb);
        let a = vec![("axis", super::A::I(0))];
        (self.node("DequantizeLinear", &[&q, &s], name, a), b)
    }
}
