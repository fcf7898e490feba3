//! Runtime: load an ONNX file and run inference with Burn on a chosen device. Depends on
//! neither `splitnas-models` nor `splitnas-search`, so an edge build links no training code.
//!
//! ```no_run
//! use splitnas_runtime::Model;
//! type B = burn::backend::Flex;
//! let model = Model::<B>::load("model.onnx".as_ref(), &Default::default()).unwrap();
//! let [c, h, w] = model.input_shape();
//! let logits = model.run_host(&vec![0.0; c * h * w], 1).unwrap();
//! println!("{:?} {:?}", logits, model.classes());
//! ```
//!
//! Loading walks the graph once: every node goes through the builder the registry
//! ([`ops`]) holds for its `op_type`, which checks attributes and shapes and either plans
//! a run-time step or, when its inputs are known at load time, computes a constant (shape
//! subgraphs are folded here). Running executes the plan with Burn tensors.
#![warn(missing_docs)]

pub mod device;
pub mod error;
mod host;
mod hostconv;
pub mod input;
mod ops;
mod plan;
pub mod value;

pub use device::{AnyModel, DeviceKind};
pub use error::RuntimeError;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use onnx_protobuf::{Message, ModelProto};
use ops::{Ctx, Known, Node};
use plan::Planned;
use std::collections::HashMap;
use std::path::Path;
use value::{from_proto, show, Dim};

/// Operator sets of the default domain this runtime accepts.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=18;

/// A loaded model, ready to run on a Burn device.
#[derive(Debug)]
pub struct Model<B: Backend> {
    plan: Vec<Planned<B>>,
    values: usize,
    output: usize,
    input_name: String,
    input_shape: [usize; 3],
    classes_count: usize,
    metadata: HashMap<String, String>,
    opset: i64,
    device: B::Device,
    /// One-thread rayon pools, one per core, on the CPU backends (see [`MAX_WORKERS`],
    /// [`IMAGE_BATCH`]); `None` on GPU backends.
    pools: Option<Pools>,
    graph: plan::Graph,
}

/// On the CPU backends a batch smaller than [`IMAGE_BATCH`] runs with one worker per
/// core, at most this many, each taking whole ops on one thread (the independent ops of
/// a cell side by side). On one 32x32 image a DARTS op is 0.3-1.3 M multiply-adds, too
/// little to split: on a 2-core x86 (DARTS_V2 C=36 L=20) rayon inside each op took
/// 22.8 ms per image, one thread 20.2-20.9 ms, two workers 13.7 ms (before the host
/// kernels of this release; see the README for today's figures).
pub const MAX_WORKERS: usize = 4;

/// On the CPU backends batches of this size and larger run image-parallel: one worker
/// per core, each running whole images op after op on one thread, so one image's values
/// stay in that core's cache and workers never wait for each other (DARTS_V2 C=36 L=20
/// batch 32 on a 2-core x86: 267-288 ms, against 391-517 ms for the graph workers
/// over the whole batch and 593-608 ms for ops spread over both cores).
pub const IMAGE_BATCH: usize = 4;

/// One-thread rayon pools, one per worker.
struct Pools(Vec<rayon::ThreadPool>);

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} one-thread pools", self.0.len())
    }
}

fn one_thread_pools() -> Option<Pools> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let pools = (0..cores)
        .map(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "splitnas-runtime".into())
                .build()
                .ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Pools(pools))
}

fn opset_of(model: &ModelProto) -> Result<i64, RuntimeError> {
    let default = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| RuntimeError::Model("no default-domain opset_import".into()))?;
    if !OPSETS.contains(&default) {
        return Err(RuntimeError::Opset(default));
    }
    Ok(default)
}

/// Walks the top-level protobuf fields and checks that the last one ends exactly at the end
/// of the bytes. rust-protobuf 3.4 accepts a message whose last length-delimited field is
/// cut short (a truncated file), so truncation is caught here.
fn check_wire(bytes: &[u8]) -> Result<(), RuntimeError> {
    let varint = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*i)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    let cut = || RuntimeError::Decode("the file ends inside a field (truncated)".into());
    let mut i = 0usize;
    while i < bytes.len() {
        let key = varint(&mut i).ok_or_else(cut)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut i).ok_or_else(cut)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut i).ok_or_else(cut)?).map_err(|_| cut())?,
            5 => 4,
            w => return Err(RuntimeError::Decode(format!("wire type {w} at byte {i}"))),
        };
        i = i.checked_add(skip).ok_or_else(cut)?;
    }
    if i != bytes.len() {
        return Err(cut());
    }
    Ok(())
}

impl<B: Backend> Model<B> {
    /// Loads the ONNX file at `path`.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, device)
    }

    /// Loads an ONNX model from its bytes.
    pub fn from_bytes(bytes: &[u8], device: &B::Device) -> Result<Self, RuntimeError> {
        check_wire(bytes)?;
        let model =
            ModelProto::parse_from_bytes(bytes).map_err(|e| RuntimeError::Decode(e.to_string()))?;
        let opset = opset_of(&model)?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| RuntimeError::Model("no graph".into()))?;
        let mut cx = Ctx::<B> {
            device,
            opset,
            known: HashMap::new(),
            plan: vec![],
            next_id: 1,
        };
        for t in &graph.initializer {
            let c = from_proto(t)
                .map_err(|e| RuntimeError::Model(format!("initializer '{}': {e}", t.name)))?;
            cx.known.insert(t.name.clone(), Known::Const(c));
        }
        // The one real input: a graph input that is not an initializer.
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !cx.known.contains_key(&i.name))
            .collect();
        let [input] = inputs[..] else {
            return Err(RuntimeError::Model(format!(
                "{} graph inputs besides the initializers; exactly one image input is supported",
                inputs.len()
            )));
        };
        let tensor = input.type_.tensor_type();
        if tensor.elem_type != 1 {
            return Err(RuntimeError::Model(format!(
                "input '{}' has element type {}, float32 (1) is supported",
                input.name, tensor.elem_type
            )));
        }
        let dims = &tensor.shape.dim;
        if dims.len() != 4 {
            return Err(RuntimeError::Model(format!(
                "input '{}' has rank {}, an NCHW image batch (rank 4) is expected",
                input.name,
                dims.len()
            )));
        }
        let mut chw = [0usize; 3];
        for (i, d) in dims.iter().enumerate().skip(1) {
            chw[i - 1] = usize::try_from(d.dim_value())
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 16)
                .ok_or_else(|| {
                    RuntimeError::Model(format!(
                        "input '{}' dimension {i} is not a fixed size (C, H and W must be)",
                        input.name
                    ))
                })?;
        }
        let shape = vec![
            Dim::Batch,
            Dim::Fixed(chw[0]),
            Dim::Fixed(chw[1]),
            Dim::Fixed(chw[2]),
        ];
        cx.known.insert(input.name.clone(), Known::Value(0, shape));

        let registry = ops::registry::<B>();
        for proto in &graph.node {
            let node = Node { proto };
            let domain = proto.domain.as_str();
            let builder = if domain.is_empty() || domain == "ai.onnx" {
                registry.get(proto.op_type.as_str())
            } else {
                None
            };
            let builder = builder.ok_or_else(|| RuntimeError::UnknownOp {
                op: proto.op_type.clone(),
                node: node.name(),
                domain: if domain.is_empty() {
                    String::new()
                } else {
                    format!("{domain}.")
                },
                opset,
            })?;
            builder(&mut cx, &node)?;
        }
        let out = graph
            .output
            .first()
            .ok_or_else(|| RuntimeError::Model("no graph output".into()))?;
        let (output, out_shape) = match cx.known.get(&out.name) {
            Some(Known::Value(v, s)) => (*v, s.clone()),
            Some(Known::Const(_)) => {
                return Err(RuntimeError::Model(format!(
                    "output '{}' does not depend on the input",
                    out.name
                )))
            }
            None => {
                return Err(RuntimeError::Model(format!(
                    "output '{}' is not produced by any node",
                    out.name
                )))
            }
        };
        let classes_count = match out_shape[..] {
            [Dim::Batch, Dim::Fixed(k)] => k,
            [Dim::Batch, Dim::Fixed(k), Dim::Fixed(1), Dim::Fixed(1)] => k,
            _ => {
                return Err(RuntimeError::Model(format!(
                    "output '{}' has shape {}, logits [N, classes] are expected",
                    out.name,
                    show(&out_shape)
                )))
            }
        };
        plan::fuse_relus(&mut cx.plan, output);
        // Free each value after its last reader.
        let mut last: HashMap<usize, usize> = HashMap::new();
        for (i, p) in cx.plan.iter().enumerate() {
            for v in p.step.inputs() {
                last.insert(v, i);
            }
        }
        for (v, i) in last {
            cx.plan[i].last_use.push(v);
        }
        let metadata = model
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let graph = plan::Graph::new(&cx.plan, cx.next_id);
        Ok(Self {
            graph,
            values: cx.next_id,
            plan: cx.plan,
            output,
            input_name: input.name.clone(),
            input_shape: chw,
            classes_count,
            metadata,
            opset,
            device: device.clone(),
            pools: if host::is_host::<B>() {
                one_thread_pools()
            } else {
                None
            },
        })
    }

    /// `[C, H, W]` of one input image.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// Number of logits per image.
    pub fn num_classes(&self) -> usize {
        self.classes_count
    }

    /// The default-domain operator set of the file.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// Run-time steps (nodes folded at load time or aliased are not counted).
    pub fn steps(&self) -> usize {
        self.plan.len()
    }

    /// All `metadata_props`.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.metadata
            .get(key)
            .and_then(|v| serde_json::from_str(v).ok())
    }

    /// Per-channel mean from the metadata (None when absent or malformed).
    pub fn mean(&self) -> Option<Vec<f32>> {
        self.json::<Vec<f32>>("mean")
            .filter(|m| m.len() == self.input_shape[0])
    }

    /// Per-channel standard deviation from the metadata.
    pub fn std(&self) -> Option<Vec<f32>> {
        self.json::<Vec<f32>>("std")
            .filter(|s| s.len() == self.input_shape[0] && s.iter().all(|v| *v > 0.0))
    }

    /// Class names from the metadata.
    pub fn classes(&self) -> Option<Vec<String>> {
        self.json::<Vec<String>>("classes")
            .filter(|c| c.len() == self.classes_count)
    }

    /// Genotype (DARTS notation) from the metadata.
    pub fn genotype(&self) -> Option<&str> {
        self.metadata.get("genotype").map(String::as_str)
    }

    /// Logits `[N, classes]` of a batch `[N, C, H, W]`.
    pub fn run(&self, input: Tensor<B, 4>) -> Result<Tensor<B, 2>, RuntimeError> {
        let [n, c, h, w] = input.dims();
        if [c, h, w] != self.input_shape || n == 0 {
            let [ec, eh, ew] = self.input_shape;
            return Err(RuntimeError::InputShape {
                expected: format!("[N, {ec}, {eh}, {ew}]"),
                found: vec![n, c, h, w],
                name: self.input_name.clone(),
            });
        }
        // SPLITNAS_PROFILE=1: op after op on the calling thread, timing each kind of op
        let profile = std::env::var_os("SPLITNAS_PROFILE").is_some();
        let y = match &self.pools {
            Some(Pools(pools)) if !profile && pools.len() > 1 && n >= IMAGE_BATCH => {
                plan::execute_images(&self.plan, self.values, input, self.output, pools)
            }
            Some(Pools(pools)) if !profile => plan::execute_parallel(
                &self.plan,
                &self.graph,
                self.values,
                input,
                self.output,
                n,
                &pools[..pools.len().min(MAX_WORKERS)],
            ),
            _ => plan::execute(&self.plan, self.values, input, self.output, n, profile),
        };
        Ok(y.reshape([n, self.classes_count]))
    }

    /// Logits of `n` images given as flat NCHW floats.
    pub fn run_host(&self, input: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let [c, h, w] = self.input_shape;
        if input.len() != n * c * h * w {
            return Err(RuntimeError::Input(format!(
                "{} values for {n} images of {c}x{h}x{w}",
                input.len()
            )));
        }
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(input.to_vec(), [n, c, h, w]), &self.device);
        let y = self.run(x)?;
        y.into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| RuntimeError::Input(format!("{e:?}")))
    }
}
