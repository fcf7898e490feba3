//! Calibration hook: a model loaded with every run-time value named and no ReLU -> Conv
//! folding, run op after op on the calling thread, handing each value's floats to a
//! callback. Post-training quantization (`splitnas quantize`) collects its activation
//! statistics through it; tensors folded at load time (initializers, constants, shape
//! subgraphs) are not run-time values and are not reported.
//!
//! ```no_run
//! use splitnas_runtime::Observed;
//! type B = burn::backend::Flex;
//! let bytes = std::fs::read("model.onnx").unwrap();
//! let model = Observed::<B>::from_bytes(&bytes, &Default::default()).unwrap();
//! let [c, h, w] = model.input_shape();
//! model
//!     .run(&vec![0.0; c * h * w], 1, |name, values| println!("{name}: {}", values.len()))
//!     .unwrap();
//! ```

use crate::error::RuntimeError;
use crate::exec::run_step;
use crate::{load, Model};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// A model whose run-time values can be watched (see the module documentation).
#[derive(Debug)]
pub struct Observed<B: Backend> {
    model: Model<B>,
    /// The names of each value id (the graph input is id 0; aliases share an id).
    names: Vec<Vec<String>>,
}

impl<B: Backend> Observed<B> {
    /// Loads the ONNX model in `bytes` for observation (the same checks as
    /// [`Model::from_bytes`]).
    pub fn from_bytes(bytes: &[u8], device: &B::Device) -> Result<Self, RuntimeError> {
        let (model, named) = load::load(bytes, device, false)?;
        let mut names = vec![vec![]; model.values];
        for (name, id) in named {
            if let Some(slot) = names.get_mut(id) {
                slot.push(name);
            }
        }
        Ok(Self { model, names })
    }

    /// The model (its input shape, metadata, ...). Running it directly runs the unfolded
    /// plan on the caller's thread or the workers, without reporting values.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// `[C, H, W]` of one input image.
    pub fn input_shape(&self) -> [usize; 3] {
        self.model.input_shape
    }

    /// Every name [`Self::run`] reports, in the order it reports them (the graph input
    /// first, then node outputs in plan order; aliases of one value together).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().flatten().map(String::as_str)
    }

    /// Runs `n` images given as flat NCHW floats and calls `f(name, values)` for the graph
    /// input and each run-time value as soon as it is computed, once per name (a value
    /// with several names is reported under each). `values` is the whole batch in the
    /// tensor's ONNX layout (row-major, batch first).
    pub fn run(
        &self,
        input: &[f32],
        n: usize,
        mut f: impl FnMut(&str, &[f32]),
    ) -> Result<(), RuntimeError> {
        let [c, h, w] = self.model.input_shape;
        if n == 0 || input.len() != n * c * h * w {
            return Err(RuntimeError::Input(format!(
                "{} values for {n} images of {c}x{h}x{w}",
                input.len()
            )));
        }
        let model = &self.model;
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(input.to_vec(), [n, c, h, w]), &model.device);
        let mut values: Vec<Option<Tensor<B, 4>>> = vec![None; model.values];
        self.report(0, &x, &mut f)?;
        values[0] = Some(x);
        for p in &model.plan {
            let mut get = |v: usize| {
                values[v]
                    .clone()
                    .expect("the plan defines every value before its use")
            };
            let y = run_step(&p.step, &mut get, n, model.on_host);
            self.report(p.out, &y, &mut f)?;
            values[p.out] = Some(y);
            for &v in &p.last_use {
                values[v] = None;
            }
        }
        Ok(())
    }

    fn report(
        &self,
        id: usize,
        t: &Tensor<B, 4>,
        f: &mut impl FnMut(&str, &[f32]),
    ) -> Result<(), RuntimeError> {
        let Some(names) = self.names.get(id).filter(|n| !n.is_empty()) else {
            return Ok(());
        };
        let floats = t
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| RuntimeError::Input(format!("{e:?}")))?;
        for name in names {
            f(name, &floats);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::{
        attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
        Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
        TypeProto, ValueInfoProto,
    };
    use protobuf::{EnumOrUnknown, MessageField};
    use std::collections::BTreeMap;

    type B = burn::backend::Flex;

    fn info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| {
                let mut x = tensor_shape_proto::Dimension::new();
                match d {
                    Some(v) => x.set_dim_value(*v),
                    None => x.set_dim_param("N".into()),
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

    fn node(op: &str, inputs: &[&str], output: &str, ints: &[(&str, i64)]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: ints
                .iter()
                .map(|(k, v)| AttributeProto {
                    name: k.to_string(),
                    type_: EnumOrUnknown::new(AttributeType::INT),
                    i: *v,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn floats(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    /// `x [N,1,1,2] -> Relu -> r -> Conv 1x1 (w = [2], b = [-1]) -> c -> Identity -> i
    /// -> Flatten -> f -> Gemm (W = [[1], [-1]], transB) -> y [N, 2]`, with a shape
    /// subgraph (`Shape`) on the side that is folded at load time.
    fn small() -> Vec<u8> {
        let g = GraphProto {
            node: vec![
                node("Relu", &["x"], "r", &[]),
                node("Conv", &["r", "w", "b"], "c", &[]),
                node("Identity", &["c"], "i", &[]),
                node("Shape", &["i"], "shape", &[]),
                node("Flatten", &["i"], "f", &[("axis", 1)]),
                node("Gemm", &["f", "fw"], "y", &[("transB", 1)]),
            ],
            initializer: vec![
                floats("w", &[1, 1, 1, 1], &[2.0]),
                floats("b", &[1], &[-1.0]),
                floats("fw", &[2, 2], &[1.0, 0.0, 0.0, -1.0]),
            ],
            input: vec![info("x", &[None, Some(1), Some(1), Some(2)])],
            output: vec![info("y", &[None, Some(2)])],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                version: 17,
                ..Default::default()
            }],
            graph: MessageField::some(g),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    #[test]
    fn every_run_time_value_is_reported_under_each_name() {
        let m = Observed::<B>::from_bytes(&small(), &Default::default()).unwrap();
        let names: Vec<&str> = m.names().collect();
        // "i" aliases "c" (same id, names sorted); "shape" is a load-time constant
        assert_eq!(names, ["x", "r", "c", "i", "f", "y"]);
        let mut seen = BTreeMap::new();
        let mut order = vec![];
        // two images: [-1, 3] and [2, -0.5]
        m.run(&[-1.0, 3.0, 2.0, -0.5], 2, |name, v| {
            order.push(name.to_string());
            seen.insert(name.to_string(), v.to_vec());
        })
        .unwrap();
        assert_eq!(order, names);
        // by hand: relu, then 2 * r - 1, then [f0, f1] @ [[1, 0], [0, -1]]
        assert_eq!(seen["x"], [-1.0, 3.0, 2.0, -0.5]);
        assert_eq!(seen["r"], [0.0, 3.0, 2.0, 0.0]);
        assert_eq!(seen["c"], [-1.0, 5.0, 3.0, -1.0]);
        assert_eq!(seen["i"], seen["c"]);
        assert_eq!(seen["f"], seen["c"]);
        assert_eq!(seen["y"], [-1.0, -5.0, 3.0, 1.0]);
        // the same model, folded and run normally, gives the same logits
        let model = Model::<B>::from_bytes(&small(), &Default::default()).unwrap();
        assert_eq!(model.steps(), 3, "Relu folded into the Conv");
        assert_eq!(m.model().steps(), 4, "nothing folded for observation");
        let y = model.run_host(&[-1.0, 3.0, 2.0, -0.5], 2).unwrap();
        assert_eq!(y, seen["y"]);
    }

    #[test]
    fn a_wrong_input_length_is_an_error() {
        let m = Observed::<B>::from_bytes(&small(), &Default::default()).unwrap();
        let e = m.run(&[1.0; 3], 2, |_, _| {}).unwrap_err();
        assert!(matches!(e, RuntimeError::Input(_)), "{e}");
        assert!(m.run(&[], 0, |_, _| {}).is_err());
    }
}
