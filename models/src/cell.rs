//! A DARTS cell of the evaluation network, built from a [`CellGenotype`].

use crate::fastselect::contiguous;
use crate::genotype::CellGenotype;
use crate::ops::{FactorizedReduce, Op, ReluConvBn};
use burn::module::Module;
use burn::tensor::{backend::Backend, Distribution, Tensor};

/// How s0 is brought to the cell's channel count.
#[derive(Module, Debug)]
pub enum Preprocess<B: Backend> {
    /// After a reduction cell: FactorizedReduce (halves the resolution).
    Reduce(FactorizedReduce<B>),
    /// Otherwise: ReLUConvBN 1x1.
    Conv(ReluConvBn<B>),
}

impl<B: Backend> Preprocess<B> {
    /// Builds the preprocessing of s0.
    pub fn new(
        c_in: usize,
        c_out: usize,
        reduction_prev: bool,
        affine: bool,
        device: &B::Device,
    ) -> Self {
        if reduction_prev {
            Preprocess::Reduce(FactorizedReduce::new(c_in, c_out, affine, device))
        } else {
            Preprocess::Conv(ReluConvBn::new(c_in, c_out, 1, 1, 0, affine, device))
        }
    }

    /// # Shapes
    /// `[N, c_in, H, W] -> [N, c_out, H', W']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Preprocess::Reduce(m) => m.forward(x),
            Preprocess::Conv(m) => m.forward(x),
        }
    }
}

/// The CSC-DARTS identity connection: the cell input s1 added to the cell output.
///
/// A plain identity where the shapes match; FactorizedReduce in a reduction cell; a
/// ReLUConvBN 1x1 projection where only the channel count differs (the first cell,
/// whose s1 is the 3C-channel stem).
#[derive(Module, Debug)]
pub enum Shortcut<B: Backend> {
    /// Shapes match.
    Plain(usize),
    /// Reduction cell.
    Reduce(FactorizedReduce<B>),
    /// Channel count differs.
    Project(ReluConvBn<B>),
}

impl<B: Backend> Shortcut<B> {
    /// The shortcut from `c_in` channels to `c_out`, halving the resolution if `reduction`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        reduction: bool,
        affine: bool,
        device: &B::Device,
    ) -> Self {
        if reduction {
            Shortcut::Reduce(FactorizedReduce::new(c_in, c_out, affine, device))
        } else if c_in != c_out {
            Shortcut::Project(ReluConvBn::new(c_in, c_out, 1, 1, 0, affine, device))
        } else {
            Shortcut::Plain(c_in)
        }
    }

    /// # Shapes
    /// `[N, c_in, H, W] -> [N, c_out, H', W']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Shortcut::Plain(_) => x,
            Shortcut::Reduce(m) => m.forward(x),
            Shortcut::Project(m) => m.forward(x),
        }
    }
}

/// Drop path: each sample is zeroed with probability `p`, the kept ones scaled by 1/(1-p).
///
/// # Shapes
/// `[N, C, H, W] -> [N, C, H, W]`
pub fn drop_path<B: Backend>(x: Tensor<B, 4>, p: f64) -> Tensor<B, 4> {
    if p <= 0.0 {
        return x;
    }
    let n = x.dims()[0];
    let keep = 1.0 - p;
    let mask = Tensor::<B, 4>::random([n, 1, 1, 1], Distribution::Bernoulli(keep), &x.device());
    x.mul(mask.div_scalar(keep))
}

/// Where the cell sits and how wide it is.
#[derive(Clone, Copy, Debug)]
pub struct CellShape {
    /// Channels of s0.
    pub c_prev_prev: usize,
    /// Channels of s1.
    pub c_prev: usize,
    /// Channels of each intermediate node.
    pub c: usize,
    /// This cell halves the resolution.
    pub reduction: bool,
    /// The previous cell halved the resolution.
    pub reduction_prev: bool,
}

/// One evaluation-network cell.
#[derive(Module, Debug)]
pub struct Cell<B: Backend> {
    /// s0 preprocessing.
    pub preprocess0: Preprocess<B>,
    /// s1 preprocessing (ReLUConvBN 1x1).
    pub preprocess1: ReluConvBn<B>,
    /// One op per genotype edge, in genotype order.
    pub ops: Vec<Op<B>>,
    /// The state each op reads (0 = s0, 1 = s1, k >= 2 = node k - 2).
    pub inputs: Vec<usize>,
    /// States concatenated into the output.
    pub concat: Vec<usize>,
    /// Optional CSC-DARTS identity connection from s1 to the output.
    pub shortcut: Option<Shortcut<B>>,
}

impl<B: Backend> Cell<B> {
    /// Builds a cell; `identity` adds the CSC-DARTS identity connection.
    pub fn new(
        genotype: &CellGenotype,
        shape: CellShape,
        identity: bool,
        device: &B::Device,
    ) -> Self {
        let CellShape {
            c_prev_prev,
            c_prev,
            c,
            reduction,
            reduction_prev,
        } = shape;
        let ops = genotype
            .edges
            .iter()
            .map(|&(p, input)| {
                let stride = if reduction && input < 2 { 2 } else { 1 };
                Op::new(p, c, stride, true, device)
            })
            .collect();
        let out_channels = c * genotype.concat.len();
        Self {
            preprocess0: Preprocess::new(c_prev_prev, c, reduction_prev, true, device),
            preprocess1: ReluConvBn::new(c_prev, c, 1, 1, 0, true, device),
            ops,
            inputs: genotype.edges.iter().map(|e| e.1).collect(),
            concat: genotype.concat.clone(),
            shortcut: identity
                .then(|| Shortcut::new(c_prev, out_channels, reduction, true, device)),
        }
    }

    /// Runs the cell; `drop_prob > 0` applies drop path to every non-identity edge.
    ///
    /// # Shapes
    /// `s0: [N, c_prev_prev, H0, W0]`, `s1: [N, c_prev, H, W]` ->
    /// `[N, c * concat.len(), H', W']` (H' = H/2 in a reduction cell)
    pub fn forward(&self, s0: Tensor<B, 4>, s1: Tensor<B, 4>, drop_prob: f64) -> Tensor<B, 4> {
        let mut states = vec![
            self.preprocess0.forward(s0),
            self.preprocess1.forward(s1.clone()),
        ];
        for (node_ops, node_inputs) in self.ops.chunks(2).zip(self.inputs.chunks(2)) {
            let mut sum: Option<Tensor<B, 4>> = None;
            for (op, &input) in node_ops.iter().zip(node_inputs) {
                let mut h = op.forward(states[input].clone());
                if drop_prob > 0.0 && !op.is_identity() {
                    h = drop_path(h, drop_prob);
                }
                sum = Some(match sum {
                    Some(s) => s.add(h),
                    None => h,
                });
            }
            if let Some(s) = sum {
                states.push(s);
            }
        }
        // `contiguous`: the gradients `cat` hands back are strided views; copy each once
        // instead of every later element-wise step walking it element by element.
        let out = Tensor::cat(
            self.concat
                .iter()
                .map(|&i| contiguous(states[i].clone()))
                .collect(),
            1,
        );
        match &self.shortcut {
            Some(sc) => out.add(sc.forward(s1)),
            None => out,
        }
    }
}
