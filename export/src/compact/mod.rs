//! The compact inference network: a flat, topologically ordered list of layers over
//! values, with every BatchNorm folded into the convolution before it, `none` edges and
//! the auxiliary head dropped, identity edges as plain wiring and one ReLU per value
//! shared by every op that reads it.
//!
//! Built from a Burn [`Network`] by [`compact`]; run with Burn by
//! [`CompactNetwork::forward`] (to check it against the network it came from) and written
//! to ONNX by [`crate::onnx`]. Value 0 is the network input; node `i` produces value
//! `i + 1`; the last node produces the logits.

mod build;
mod run;

use crate::fold::{fold_batch_norm, host_batch_norm, host_conv, FoldError, HostConv};
use build::{Builder, ConvShape};
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
