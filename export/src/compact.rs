//! The compact inference network: a flat, topologically ordered list of layers over
//! values, with every BatchNorm folded into the convolution before it, `none` edges and
//! the auxiliary head dropped, identity edges as plain wiring and one ReLU per value
//! shared by every op that reads it.
//!
//! Built from a Burn [`Network`] by [`compact`]; run with Burn by
//! [`CompactNetwork::forward`] (to check it against the network it came from) and written
//! to ONNX by [`crate::onnx`]. Value 0 is the network input; node `i` produces value
//! `i + 1`; the last node produces the logits.

use crate::fold::{fold_batch_norm, host_batch_norm, host_conv, FoldError, HostConv};
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{activation::relu, Tensor, TensorData};
use splitnas_models::bn::BatchNorm2d;
use splitnas_models::cell::{Cell, Preprocess, Shortcut};
use splitnas_models::network::reduction_layers;
use splitnas_models::ops::{FactorizedReduce, Op, ReluConvBn};
use splitnas_models::{CellGenotype, Network, NetworkConfig, Primitive};
use std::collections::HashMap;

/// Index of a value: 0 is the input, `i + 1` the output of node `i`.
pub type ValueId = usize;

/// A convolution with its (folded) weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    /// `[out, in / groups, k, k]`, row-major.
    pub weight: Vec<f32>,
    /// Weight shape.
    pub shape: [usize; 4],
    /// One value per output channel (None: no bias, e.g. depthwise convolutions).
    pub bias: Option<Vec<f32>>,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Dilation (both axes).
    pub dilation: usize,
    /// Groups (channels for depthwise).
    pub groups: usize,
}

/// One layer of the compact network.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// 2-D convolution (BatchNorm folded in).
    Conv(ConvLayer),
    /// ReLU.
    Relu,
    /// Max pooling with padding that never wins (-inf).
    MaxPool {
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on every side.
        padding: usize,
    },
    /// Average pooling over the real (non-padding) pixels (count_include_pad = 0).
    AvgPool {
        /// Kernel side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding on every side.
        padding: usize,
    },
    /// Element-wise sum of the two inputs.
    Add,
    /// Concatenation over channels.
    Concat,
    /// `x[:, :, 1:, 1:]`, FactorizedReduce's one-pixel shift.
    Shift,
    /// Mean over H and W, keeping `[N, C, 1, 1]`.
    GlobalAveragePool,
    /// `[N, C, 1, 1] -> [N, C]`.
    Flatten,
    /// `x W^T + b` with `weight` in `[outputs, inputs]` order.
    Gemm {
        /// Row-major `[outputs, inputs]`.
        weight: Vec<f32>,
        /// `outputs` values.
        bias: Vec<f32>,
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
    },
}

impl Layer {
    /// The ONNX operator this layer becomes.
    pub fn op_type(&self) -> &'static str {
        match self {
            Layer::Conv(_) => "Conv",
            Layer::Relu => "Relu",
            Layer::MaxPool { .. } => "MaxPool",
            Layer::AvgPool { .. } => "AveragePool",
            Layer::Add => "Add",
            Layer::Concat => "Concat",
            Layer::Shift => "Slice",
            Layer::GlobalAveragePool => "GlobalAveragePool",
            Layer::Flatten => "Flatten",
            Layer::Gemm { .. } => "Gemm",
        }
    }
}

/// A layer with its name, inputs and output shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where it comes from, e.g. `cell3/node1/edge0/sep_conv_3x3/dw1`.
    pub name: String,
    /// The layer.
    pub layer: Layer,
    /// Values read.
    pub inputs: Vec<ValueId>,
    /// Output shape without the batch dimension (`[C, H, W]`, or `[classes]` at the end).
    pub shape: Vec<usize>,
}

/// The compact inference network (see the module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct CompactNetwork {
    /// `[C, H, W]` of one input image.
    pub input_shape: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// Nodes in execution order.
    pub nodes: Vec<Node>,
}

/// The network's weights do not fit its genotype, or cannot be folded.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum CompactError {
    /// A convolution whose weight has another shape than the genotype needs.
    #[error("{node}: weight shape {found:?} does not match the genotype (expected {expected:?})")]
    Shape {
        /// Node name.
        node: String,
        /// What the genotype and the input shape require.
        expected: Vec<usize>,
        /// What the weights have.
        found: Vec<usize>,
    },
    /// The network's structure differs from its configuration.
    #[error("the weights do not match the genotype: {0}")]
    Structure(String),
    /// A node whose incoming edges are all `none` (its output is constant zero).
    #[error("{0}: every incoming edge is `none`, the node is constant zero; such genotypes cannot be exported")]
    AllNone(String),
    /// BatchNorm folding failed.
    #[error("{node}: {source}")]
    Fold {
        /// Node name.
        node: String,
        /// Why.
        source: FoldError,
    },
}

struct Builder {
    nodes: Vec<Node>,
    shapes: Vec<Vec<usize>>,
    names: Vec<String>,
    relus: HashMap<ValueId, ValueId>,
}

impl Builder {
    fn push(
        &mut self,
        name: String,
        layer: Layer,
        inputs: Vec<ValueId>,
        shape: Vec<usize>,
    ) -> ValueId {
        self.names.push(name.clone());
        self.shapes.push(shape.clone());
        self.nodes.push(Node {
            name,
            layer,
            inputs,
            shape,
        });
        self.nodes.len()
    }

    fn chw(&self, v: ValueId) -> [usize; 3] {
        let s = &self.shapes[v];
        [s[0], s[1], s[2]]
    }

    /// ReLU of `v`, one node per value however many ops read it.
    fn relu(&mut self, v: ValueId) -> ValueId {
        if let Some(&r) = self.relus.get(&v) {
            return r;
        }
        let name = format!("{}/relu", self.names[v]);
        let shape = self.shapes[v].clone();
        let r = self.push(name, Layer::Relu, vec![v], shape);
        self.relus.insert(v, r);
        r
    }

    /// A convolution from Burn weights, optionally with the BatchNorm after it folded in.
    fn conv<B: Backend>(
        &mut self,
        name: String,
        x: ValueId,
        conv: &Conv2d<B>,
        bn: Option<&BatchNorm2d<B>>,
        shape: ConvShape,
    ) -> Result<ValueId, CompactError> {
        let host = host_conv(conv);
        let host = match bn {
            Some(bn) => fold_batch_norm(&host, &host_batch_norm(bn)).map_err(|source| {
                CompactError::Fold {
                    node: name.clone(),
                    source,
                }
            })?,
            None => host,
        };
        self.conv_host(name, x, host, bn.is_some(), shape)
    }

    fn conv_host(
        &mut self,
        name: String,
        x: ValueId,
        host: HostConv,
        bias: bool,
        s: ConvShape,
    ) -> Result<ValueId, CompactError> {
        let [c, h, w] = self.chw(x);
        let groups = if s.depthwise { c } else { 1 };
        let expected = [s.out.unwrap_or(c), c / groups, s.kernel, s.kernel];
        if host.shape != expected || host.weight.len() != expected.iter().product::<usize>() {
            return Err(CompactError::Shape {
                node: name,
                expected: expected.to_vec(),
                found: host.shape.to_vec(),
            });
        }
        let span = s.dilation * (s.kernel - 1) + 1;
        let side = |n: usize| (n + 2 * s.padding).saturating_sub(span) / s.stride + 1;
        let shape = vec![expected[0], side(h), side(w)];
        let layer = Layer::Conv(ConvLayer {
            weight: host.weight,
            shape: expected,
            bias: bias.then_some(host.bias),
            stride: s.stride,
            padding: s.padding,
            dilation: s.dilation,
            groups,
        });
        Ok(self.push(name, layer, vec![x], shape))
    }

    /// ReLU, convolution, folded BatchNorm.
    fn relu_conv_bn<B: Backend>(
        &mut self,
        name: &str,
        x: ValueId,
        m: &ReluConvBn<B>,
        out: usize,
    ) -> Result<ValueId, CompactError> {
        let r = self.relu(x);
        let kernel = m.conv.weight.shape().dims::<4>()[2];
        let shape = ConvShape::dense(out, kernel, 1, 0);
        self.conv(format!("{name}/conv"), r, &m.conv, Some(&m.bn), shape)
    }

    /// ReLU, two 1x1 stride-2 convolutions (the second on the shifted input), concat; the
    /// BatchNorm over the concatenation folds into the two halves.
    fn factorized_reduce<B: Backend>(
        &mut self,
        name: &str,
        x: ValueId,
        m: &FactorizedReduce<B>,
        out: usize,
    ) -> Result<ValueId, CompactError> {
        let r = self.relu(x);
        let bn = host_batch_norm(&m.bn);
        let half = out / 2;
        let part = |lo: usize, hi: usize| {
            let cut = |v: &Vec<f32>| v.get(lo..hi).map(<[f32]>::to_vec);
            let structure = || CompactError::Structure(format!("{name}/bn"));
            Ok::<_, CompactError>(crate::fold::HostBatchNorm {
                gamma: bn
                    .gamma
                    .as_ref()
                    .map(|g| cut(g).ok_or_else(structure))
                    .transpose()?,
                beta: bn
                    .beta
                    .as_ref()
                    .map(|b| cut(b).ok_or_else(structure))
                    .transpose()?,
                mean: cut(&bn.mean).ok_or_else(structure)?,
                var: cut(&bn.var).ok_or_else(structure)?,
                epsilon: bn.epsilon,
            })
        };
        let mut branches = vec![];
        for (i, (conv, lo, hi, input)) in
            [(&m.conv1, 0, half, r), (&m.conv2, half, out, usize::MAX)]
                .into_iter()
                .enumerate()
        {
            let input = if input == usize::MAX {
                let [c, h, w] = self.chw(r);
                self.push(
                    format!("{name}/shift"),
                    Layer::Shift,
                    vec![r],
                    vec![c, h.saturating_sub(1), w.saturating_sub(1)],
                )
            } else {
                input
            };
            let node = format!("{name}/conv{}", i + 1);
            let folded = fold_batch_norm(&host_conv(conv), &part(lo, hi)?).map_err(|source| {
                CompactError::Fold {
                    node: node.clone(),
                    source,
                }
            })?;
            branches.push(self.conv_host(
                node,
                input,
                folded,
                true,
                ConvShape::dense(hi - lo, 1, 2, 0),
            )?);
        }
        let [_, h, w] = self.chw(branches[0]);
        if self.chw(branches[1])[1..] != [h, w] {
            return Err(CompactError::Structure(format!(
                "{name}: odd input side {} (FactorizedReduce needs an even one)",
                self.chw(r)[1]
            )));
        }
        Ok(self.push(
            format!("{name}/concat"),
            Layer::Concat,
            branches,
            vec![out, h, w],
        ))
    }

    /// One edge op; None for `none`.
    fn edge<B: Backend>(
        &mut self,
        name: &str,
        x: ValueId,
        op: &Op<B>,
        primitive: Primitive,
    ) -> Result<Option<ValueId>, CompactError> {
        let [c, h, w] = self.chw(x);
        let pooled = |s: usize| vec![c, (h - 1) / s + 1, (w - 1) / s + 1];
        let mismatch = || CompactError::Structure(format!("{name}: op {op:?}"));
        Ok(Some(match (op, primitive) {
            (Op::Zero(_), Primitive::None) => return Ok(None),
            (Op::MaxPool(s), Primitive::MaxPool3x3) => self.push(
                name.to_string(),
                Layer::MaxPool {
                    kernel: 3,
                    stride: *s,
                    padding: 1,
                },
                vec![x],
                pooled(*s),
            ),
            (Op::AvgPool(s), Primitive::AvgPool3x3) => self.push(
                name.to_string(),
                Layer::AvgPool {
                    kernel: 3,
                    stride: *s,
                    padding: 1,
                },
                vec![x],
                pooled(*s),
            ),
            (Op::Identity(_), Primitive::SkipConnect) => x,
            (Op::Reduce(m), Primitive::SkipConnect) => self.factorized_reduce(name, x, m, c)?,
            (Op::Sep(m), Primitive::SepConv3x3 | Primitive::SepConv5x5) => {
                let k = kernel(primitive);
                let s = sep_stride(&m.dw1);
                let r = self.relu(x);
                let d = self.conv(
                    format!("{name}/dw1"),
                    r,
                    &m.dw1,
                    None,
                    ConvShape::depthwise(k, s, k / 2, 1),
                )?;
                let p = self.conv(
                    format!("{name}/pw1"),
                    d,
                    &m.pw1,
                    Some(&m.bn1),
                    ConvShape::dense(c, 1, 1, 0),
                )?;
                let r = self.relu(p);
                let d = self.conv(
                    format!("{name}/dw2"),
                    r,
                    &m.dw2,
                    None,
                    ConvShape::depthwise(k, 1, k / 2, 1),
                )?;
                self.conv(
                    format!("{name}/pw2"),
                    d,
                    &m.pw2,
                    Some(&m.bn2),
                    ConvShape::dense(c, 1, 1, 0),
                )?
            }
            (Op::Dil(m), Primitive::DilConv3x3 | Primitive::DilConv5x5) => {
                let k = kernel(primitive);
                let s = sep_stride(&m.dw);
                let r = self.relu(x);
                let d = self.conv(
                    format!("{name}/dw"),
                    r,
                    &m.dw,
                    None,
                    ConvShape::depthwise(k, s, (k / 2) * 2, 2),
                )?;
                self.conv(
                    format!("{name}/pw"),
                    d,
                    &m.pw,
                    Some(&m.bn),
                    ConvShape::dense(c, 1, 1, 0),
                )?
            }
            _ => return Err(mismatch()),
        }))
    }

    fn cell<B: Backend>(
        &mut self,
        index: usize,
        s0: ValueId,
        s1: ValueId,
        cell: &Cell<B>,
        genotype: &CellGenotype,
        c: usize,
    ) -> Result<ValueId, CompactError> {
        let prefix = format!("cell{index}");
        let inputs: Vec<usize> = genotype.edges.iter().map(|e| e.1).collect();
        if cell.ops.len() != genotype.edges.len()
            || cell.inputs != inputs
            || cell.concat != genotype.concat
        {
            return Err(CompactError::Structure(format!(
                "{prefix}: the weights have edges from states {:?} and concat {:?}, the genotype {:?} and {:?}",
                cell.inputs, cell.concat, inputs, genotype.concat
            )));
        }
        let p0 = match &cell.preprocess0 {
            Preprocess::Reduce(m) => self.factorized_reduce(&format!("{prefix}/pre0"), s0, m, c)?,
            Preprocess::Conv(m) => self.relu_conv_bn(&format!("{prefix}/pre0"), s0, m, c)?,
        };
        let p1 = self.relu_conv_bn(&format!("{prefix}/pre1"), s1, &cell.preprocess1, c)?;
        let mut states = vec![p0, p1];
        for (j, (ops, edges)) in cell.ops.chunks(2).zip(genotype.edges.chunks(2)).enumerate() {
            let mut outs = vec![];
            for (e, (op, &(primitive, input))) in ops.iter().zip(edges).enumerate() {
                let x = *states.get(input).ok_or_else(|| {
                    CompactError::Structure(format!("{prefix}/node{j}/edge{e}: input {input}"))
                })?;
                let name = format!("{prefix}/node{j}/edge{e}/{}", primitive.name());
                if let Some(v) = self.edge(&name, x, op, primitive)? {
                    outs.push(v);
                }
            }
            let node = match outs[..] {
                [] => return Err(CompactError::AllNone(format!("{prefix}/node{j}"))),
                [v] => v,
                [a, b] => {
                    let shape = self.shapes[a].clone();
                    if self.shapes[b] != shape {
                        return Err(CompactError::Structure(format!("{prefix}/node{j}")));
                    }
                    self.push(
                        format!("{prefix}/node{j}/add"),
                        Layer::Add,
                        vec![a, b],
                        shape,
                    )
                }
                _ => return Err(CompactError::Structure(format!("{prefix}/node{j}"))),
            };
            states.push(node);
        }
        let parts: Vec<ValueId> = genotype.concat.iter().map(|&i| states[i]).collect();
        let out = if parts.len() == 1 {
            parts[0]
        } else {
            let [_, h, w] = self.chw(parts[0]);
            let channels = parts.iter().map(|&p| self.chw(p)[0]).sum();
            self.push(
                format!("{prefix}/concat"),
                Layer::Concat,
                parts,
                vec![channels, h, w],
            )
        };
        let Some(shortcut) = &cell.shortcut else {
            return Ok(out);
        };
        let out_c = self.chw(out)[0];
        let sc = match shortcut {
            Shortcut::Plain(_) => s1,
            Shortcut::Reduce(m) => {
                self.factorized_reduce(&format!("{prefix}/identity"), s1, m, out_c)?
            }
            Shortcut::Project(m) => {
                self.relu_conv_bn(&format!("{prefix}/identity"), s1, m, out_c)?
            }
        };
        let shape = self.shapes[out].clone();
        if self.shapes[sc] != shape {
            return Err(CompactError::Structure(format!("{prefix}/identity")));
        }
        Ok(self.push(
            format!("{prefix}/identity/add"),
            Layer::Add,
            vec![out, sc],
            shape,
        ))
    }
}

/// Kernel side of a separable or dilated convolution primitive.
fn kernel(p: Primitive) -> usize {
    match p {
        Primitive::SepConv5x5 | Primitive::DilConv5x5 => 5,
        _ => 3,
    }
}

fn sep_stride<B: Backend>(conv: &Conv2d<B>) -> usize {
    conv.stride[0]
}

#[derive(Clone, Copy)]
struct ConvShape {
    out: Option<usize>,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    depthwise: bool,
}

impl ConvShape {
    fn dense(out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            out: Some(out),
            kernel,
            stride,
            padding,
            dilation: 1,
            depthwise: false,
        }
    }
    fn depthwise(kernel: usize, stride: usize, padding: usize, dilation: usize) -> Self {
        Self {
            out: None,
            kernel,
            stride,
            padding,
            dilation,
            depthwise: true,
        }
    }
}

/// Builds the compact network of `net`, which was built from `cfg` (see the module
/// documentation). Checks every weight shape against what the genotype needs.
pub fn compact<B: Backend>(
    net: &Network<B>,
    cfg: &NetworkConfig,
) -> Result<CompactNetwork, CompactError> {
    let input_shape = [cfg.in_channels, cfg.image_size, cfg.image_size];
    let mut b = Builder {
        nodes: vec![],
        shapes: vec![input_shape.to_vec()],
        names: vec!["input".into()],
        relus: HashMap::new(),
    };
    let c_stem = 3 * cfg.channels;
    let stem = b.conv(
        "stem/conv".into(),
        0,
        &net.stem_conv,
        Some(&net.stem_bn),
        ConvShape::dense(c_stem, 3, 1, 1),
    )?;
    if net.cells.len() != cfg.layers {
        return Err(CompactError::Structure(format!(
            "{} cells for a configuration of {} layers",
            net.cells.len(),
            cfg.layers
        )));
    }
    let reductions = reduction_layers(cfg.layers);
    let (mut s0, mut s1) = (stem, stem);
    let (mut c, mut stage) = (cfg.channels, 0);
    for (i, cell) in net.cells.iter().enumerate() {
        let reduction = reductions.contains(&i);
        if reduction {
            c *= 2;
            stage += 1;
        }
        let pair = cfg.genotype.stage(stage);
        let g = if reduction {
            &pair.reduce
        } else {
            &pair.normal
        };
        let out = b.cell(i, s0, s1, cell, g, c)?;
        s0 = s1;
        s1 = out;
    }
    let [ch, _, _] = b.chw(s1);
    let gap = b.push(
        "head/global_avg_pool".into(),
        Layer::GlobalAveragePool,
        vec![s1],
        vec![ch, 1, 1],
    );
    let flat = b.push("head/flatten".into(), Layer::Flatten, vec![gap], vec![ch]);
    // Burn's Linear stores [inputs, outputs]; ONNX Gemm (transB = 1) wants [outputs, inputs].
    let [inputs, outputs] = net.classifier.weight.shape().dims::<2>();
    if inputs != ch || outputs != cfg.classes {
        return Err(CompactError::Shape {
            node: "head/classifier".into(),
            expected: vec![ch, cfg.classes],
            found: vec![inputs, outputs],
        });
    }
    let w = host(net.classifier.weight.val());
    let mut weight = vec![0f32; inputs * outputs];
    for i in 0..inputs {
        for o in 0..outputs {
            weight[o * inputs + i] = w[i * outputs + o];
        }
    }
    let bias = net
        .classifier
        .bias
        .as_ref()
        .map_or_else(|| vec![0.0; outputs], |b| host(b.val()));
    b.push(
        "head/classifier".into(),
        Layer::Gemm {
            weight,
            bias,
            inputs,
            outputs,
        },
        vec![flat],
        vec![outputs],
    );
    Ok(CompactNetwork {
        input_shape,
        classes: cfg.classes,
        nodes: b.nodes,
    })
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

impl CompactNetwork {
    /// Number of weights and biases.
    pub fn parameters(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match &n.layer {
                Layer::Conv(c) => c.weight.len() + c.bias.as_ref().map_or(0, Vec::len),
                Layer::Gemm { weight, bias, .. } => weight.len() + bias.len(),
                _ => 0,
            })
            .sum()
    }

    /// Multiply-accumulates per image in convolutions and the classifier.
    pub fn macs(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match &n.layer {
                Layer::Conv(c) => {
                    let [out, per_group, kh, kw] = c.shape;
                    (out * per_group * kh * kw * n.shape[1] * n.shape[2]) as u64
                }
                Layer::Gemm {
                    inputs, outputs, ..
                } => (inputs * outputs) as u64,
                _ => 0,
            })
            .sum()
    }

    /// Runs the network with Burn (inference).
    ///
    /// # Shapes
    /// `[N, C, H, W]` (as `input_shape`) -> `[N, classes]`
    pub fn forward<B: Backend>(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let device = x.device();
        let mut values: Vec<Tensor<B, 4>> = vec![x];
        let mut logits = None;
        for node in &self.nodes {
            let arg = |i: usize| values[node.inputs[i]].clone();
            let y = match &node.layer {
                Layer::Conv(c) => {
                    let w = Tensor::from_data(TensorData::new(c.weight.clone(), c.shape), &device);
                    let b = c
                        .bias
                        .as_ref()
                        .map(|b| Tensor::from_data(TensorData::new(b.clone(), [b.len()]), &device));
                    let options =
                        ConvOptions::new([c.stride; 2], [c.padding; 2], [c.dilation; 2], c.groups);
                    conv2d(arg(0), w, b, options)
                }
                Layer::Relu => relu(arg(0)),
                Layer::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => max_pool2d(
                    arg(0),
                    [*kernel; 2],
                    [*stride; 2],
                    [*padding; 2],
                    [1, 1],
                    false,
                ),
                Layer::AvgPool {
                    kernel,
                    stride,
                    padding,
                } => avg_pool2d(
                    arg(0),
                    [*kernel; 2],
                    [*stride; 2],
                    [*padding; 2],
                    false,
                    false,
                ),
                Layer::Add => arg(0).add(arg(1)),
                Layer::Concat => {
                    Tensor::cat(node.inputs.iter().map(|&i| values[i].clone()).collect(), 1)
                }
                Layer::Shift => {
                    let [n, c, h, w] = arg(0).dims();
                    arg(0).slice([0..n, 0..c, 1..h, 1..w])
                }
                Layer::GlobalAveragePool => arg(0).mean_dim(3).mean_dim(2),
                Layer::Flatten => arg(0),
                Layer::Gemm {
                    weight,
                    bias,
                    inputs,
                    outputs,
                } => {
                    let [n, c, _, _] = arg(0).dims();
                    let w = Tensor::<B, 2>::from_data(
                        TensorData::new(weight.clone(), [*outputs, *inputs]),
                        &device,
                    );
                    let b = Tensor::<B, 2>::from_data(
                        TensorData::new(bias.clone(), [1, *outputs]),
                        &device,
                    );
                    let y = arg(0).reshape([n, c]).matmul(w.transpose()).add(b);
                    logits = Some(y.clone());
                    y.reshape([n, *outputs, 1, 1])
                }
            };
            values.push(y);
        }
        let n = values[0].dims()[0];
        logits.unwrap_or_else(|| Tensor::zeros([n, self.classes], &device))
    }
}
