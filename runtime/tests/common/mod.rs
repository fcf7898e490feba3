//! A small ONNX graph writer for tests (onnx-protobuf), and tract as the reference on
//! x86_64 (the ARM test builds under qemu leave tract, the largest dev-dependency, out).
#![allow(dead_code)]

pub mod hand;
pub mod qdq;

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};
#[cfg(target_arch = "x86_64")]
use tract_onnx::prelude::*;

pub enum A {
    I(i64),
    Is(Vec<i64>),
    F(f32),
    S(&'static str),
}

pub struct G {
    pub g: GraphProto,
    seed: u64,
}

impl G {
    pub fn new(c: usize, h: usize, w: usize) -> Self {
        let mut g = GraphProto {
            name: "test".into(),
            ..Default::default()
        };
        g.input
            .push(value_info("input", &[None, Some(c), Some(h), Some(w)]));
        Self { g, seed: 1 }
    }

    fn rand(&mut self) -> f32 {
        // xorshift, values in [-1, 1)
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// A float initializer with pseudo-random values scaled by `scale` plus `offset`.
    pub fn weight(&mut self, name: &str, dims: &[i64], scale: f32, offset: f32) -> String {
        let n: i64 = dims.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| self.rand() * scale + offset).collect();
        self.floats(name, dims, &vals)
    }

    pub fn floats(&mut self, name: &str, dims: &[i64], vals: &[f32]) -> String {
        self.g.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            raw_data: vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    pub fn ints(&mut self, name: &str, vals: &[i64]) -> String {
        self.g.initializer.push(TensorProto {
            name: name.into(),
            dims: vec![vals.len() as i64],
            data_type: 7,
            int64_data: vals.to_vec(),
            ..Default::default()
        });
        name.into()
    }

    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<(&str, A)>,
    ) -> String {
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto {
                    name: name.into(),
                    ..Default::default()
                };
                match a {
                    A::I(v) => {
                        p.type_ = EnumOrUnknown::new(AttributeType::INT);
                        p.i = v;
                    }
                    A::Is(v) => {
                        p.type_ = EnumOrUnknown::new(AttributeType::INTS);
                        p.ints = v;
                    }
                    A::F(v) => {
                        p.type_ = EnumOrUnknown::new(AttributeType::FLOAT);
                        p.f = v;
                    }
                    A::S(v) => {
                        p.type_ = EnumOrUnknown::new(AttributeType::STRING);
                        p.s = v.as_bytes().to_vec();
                    }
                }
                p
            })
            .collect();
        self.g.node.push(NodeProto {
            op_type: op.into(),
            name: format!("{op}_{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
        output.into()
    }

    /// A `Constant` node holding int64 values.
    pub fn constant_ints(&mut self, output: &str, vals: &[i64]) -> String {
        let t = TensorProto {
            dims: vec![vals.len() as i64],
            data_type: 7,
            int64_data: vals.to_vec(),
            ..Default::default()
        };
        self.g.node.push(NodeProto {
            op_type: "Constant".into(),
            name: format!("Constant_{output}"),
            output: vec![output.into()],
            attribute: vec![AttributeProto {
                name: "value".into(),
                type_: EnumOrUnknown::new(AttributeType::TENSOR),
                t: MessageField::some(t),
                ..Default::default()
            }],
            ..Default::default()
        });
        output.into()
    }

    pub fn finish(mut self, output: &str, classes: usize, opset: i64) -> Vec<u8> {
        self.g
            .output
            .push(value_info(output, &[None, Some(classes)]));
        let m = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
                ..Default::default()
            }],
            producer_name: "pytorch-style test".into(),
            graph: MessageField::some(self.g),
            ..Default::default()
        };
        m.write_to_bytes().unwrap()
    }
}

pub fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| {
            let mut x = tensor_shape_proto::Dimension::new();
            match d {
                Some(v) => x.set_dim_value(*v as i64),
                None => x.set_dim_param("batch".into()),
            }
            x
        })
        .collect();
    let mut t = TypeProto::new();
    t.set_tensor_type(type_proto::Tensor {
        elem_type: 1,
        shape: MessageField::some(TensorShapeProto {
            dim,
            ..Default::default()
        }),
        ..Default::default()
    });
    ValueInfoProto {
        name: name.into(),
        type_: MessageField::some(t),
        ..Default::default()
    }
}

#[cfg(target_arch = "x86_64")]
pub fn tract_logits(bytes: &[u8], x: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::Array4::from_shape_vec(shape, x.to_vec())
        .unwrap()
        .into();
    let out = model.run(tvec!(input.into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

pub fn input(n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    (0..n * c * h * w)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 1.5)
        .collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Keeps the file, its input and the runtime's logits for `.ci/run`'s onnxruntime check.
pub fn keep_for_ci(stem: &str, bytes: &[u8], x: &[f32], shape: [usize; 4], logits: &[f32]) {
    keep_for_ci_tol(stem, bytes, x, shape, logits, 1e-4)
}

/// [`keep_for_ci`] with onnxruntime's logits allowed `tolerance` (max abs) away.
pub fn keep_for_ci_tol(
    stem: &str,
    bytes: &[u8],
    x: &[f32],
    shape: [usize; 4],
    logits: &[f32],
    tolerance: f32,
) {
    if let Ok(dir) = std::env::var("SPLITNAS_ONNX_CHECKS") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{stem}.onnx")), bytes).unwrap();
        let json = serde_json::json!({"input_shape": shape, "input": x, "logits": logits, "tolerance": tolerance});
        std::fs::write(dir.join(format!("{stem}.json")), json.to_string()).unwrap();
    }
}
