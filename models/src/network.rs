//! The evaluation network: stem, cells (reductions at L/3 and 2L/3), optional auxiliary
//! head, global average pool and linear classifier.

use crate::bn::{BatchNorm2d, BatchNorm2dConfig};
use crate::cell::Cell;
use crate::fastconv::conv_forward;
use crate::genotype::Genotype;
use crate::ops::conv;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::module::avg_pool2d;
use burn::tensor::{backend::Backend, Tensor};

/// Invalid network configurations.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum NetworkError {
    /// A size that must be positive.
    #[error("{0} must be at least 1")]
    Zero(NetworkSize),
    /// Two reductions need an image side divisible by 4.
    #[error("image size {0} is not divisible by 4 (the network halves it twice)")]
    ImageSize(usize),
    /// Layers too few for two reduction cells.
    #[error("the network needs at least 3 layers (reductions at L/3 and 2L/3); got {0}")]
    Layers(usize),
    /// Auxiliary head on a map smaller than 6x6.
    #[error("the auxiliary head needs a map of at least 6x6 after the second reduction; image size {0} gives {1}x{1}")]
    AuxTooSmall(usize, usize),
    /// A per-stage genotype with the wrong number of stages.
    #[error("the genotype has {0} stages; the network has 3 (cells before, between and after the two reductions)")]
    Stages(usize),
}

/// A size of [`NetworkConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkSize {
    /// Initial channels C.
    Channels,
    /// Classes.
    Classes,
    /// Input channels.
    InChannels,
    /// Input image side.
    ImageSize,
}

impl std::fmt::Display for NetworkSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkSize::Channels => "the channel count",
            NetworkSize::Classes => "the class count",
            NetworkSize::InChannels => "the input channel count",
            NetworkSize::ImageSize => "the image size",
        })
    }
}

/// Configuration of the evaluation [`Network`].
#[derive(Config, Debug)]
pub struct NetworkConfig {
    /// The cells.
    pub genotype: Genotype,
    /// Initial channels C (36 in DARTS).
    #[config(default = 36)]
    pub channels: usize,
    /// Number of cells L (20 in DARTS).
    #[config(default = 20)]
    pub layers: usize,
    /// Number of classes.
    #[config(default = 10)]
    pub classes: usize,
    /// Input channels (1 gray, 3 RGB).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Input image side (square), e.g. 28 or 32.
    #[config(default = 32)]
    pub image_size: usize,
    /// Auxiliary head after cell 2L/3 (training only).
    #[config(default = false)]
    pub auxiliary: bool,
    /// CSC-DARTS identity connection in every cell.
    #[config(default = false)]
    pub identity: bool,
}

/// The reduction cell positions, L/3 and 2L/3.
pub fn reduction_layers(layers: usize) -> [usize; 2] {
    [layers / 3, 2 * layers / 3]
}

impl NetworkConfig {
    /// Checks the sizes before building.
    pub fn validate(&self) -> Result<(), NetworkError> {
        for (v, name) in [
            (self.channels, NetworkSize::Channels),
            (self.classes, NetworkSize::Classes),
            (self.in_channels, NetworkSize::InChannels),
            (self.image_size, NetworkSize::ImageSize),
        ] {
            if v == 0 {
                return Err(NetworkError::Zero(name));
            }
        }
        if self.layers < 3 {
            return Err(NetworkError::Layers(self.layers));
        }
        if self.image_size % 4 != 0 {
            return Err(NetworkError::ImageSize(self.image_size));
        }
        if self.auxiliary && self.image_size / 4 < 6 {
            return Err(NetworkError::AuxTooSmall(
                self.image_size,
                self.image_size / 4,
            ));
        }
        let stages = self.genotype.stages().len();
        if stages != 1 && stages != 3 {
            return Err(NetworkError::Stages(stages));
        }
        Ok(())
    }

    /// Builds the network with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Network<B>, NetworkError> {
        self.validate()?;
        let c_stem = 3 * self.channels;
        let stem_conv = conv(self.in_channels, c_stem, 3, 1, 1, 1, 1, device);
        let stem_bn = BatchNorm2dConfig::new(c_stem).init(device);
        let reductions = reduction_layers(self.layers);
        let sites = self.cell_sites();
        let mut cells = Vec::with_capacity(self.layers);
        for site in &sites {
            let pair = self.genotype.stage(site.stage);
            let g = pair.cell(site.shape.reduction);
            cells.push(Cell::new(g, site.shape, self.identity, device));
        }
        let out_channels = |s: &crate::cost::CellSite| s.shape.c * s.concat;
        let c_aux = out_channels(&sites[reductions[1]]);
        let c_p = sites.last().map_or(c_stem, out_channels);
        let aux = self
            .auxiliary
            .then(|| AuxiliaryHead::new(c_aux, self.classes, self.image_size / 4, device));
        let net = Network {
            stem_conv,
            stem_bn,
            cells,
            auxiliary: aux,
            aux_after: reductions[1],
            classifier: LinearConfig::new(c_p, self.classes).init(device),
        };
        crate::params::materialize(&net);
        Ok(net)
    }
}

/// The DARTS auxiliary classifier: ReLU, AvgPool 5x5 (count_include_pad false) to 2x2,
/// 1x1 conv to 128, BN, ReLU, 2x2 conv to 768, BN, ReLU, linear.
///
/// The reference pools 8x8 maps with stride 3. On the 7x7 maps of 28x28 inputs stride 3
/// would give 1x1, so the stride is `side - 5` (3 on 8x8, 2 on 7x7), giving 2x2 on both.
#[derive(Module, Debug)]
pub struct AuxiliaryHead<B: Backend> {
    /// Pooling stride (`side - 5`).
    pub pool_stride: usize,
    /// 1x1 convolution to 128 channels.
    pub conv1: Conv2d<B>,
    /// BN after conv1.
    pub bn1: BatchNorm2d<B>,
    /// 2x2 convolution to 768 channels.
    pub conv2: Conv2d<B>,
    /// BN after conv2.
    pub bn2: BatchNorm2d<B>,
    /// Linear 768 -> classes.
    pub classifier: Linear<B>,
}

impl<B: Backend> AuxiliaryHead<B> {
    /// Head on `c` channels of a `side`x`side` map (side >= 6).
    pub fn new(c: usize, classes: usize, side: usize, device: &B::Device) -> Self {
        Self {
            pool_stride: side.saturating_sub(5).max(1),
            conv1: conv(c, 128, 1, 1, 0, 1, 1, device),
            bn1: BatchNorm2dConfig::new(128).init(device),
            conv2: conv(128, 768, 2, 1, 0, 1, 1, device),
            bn2: BatchNorm2dConfig::new(768).init(device),
            classifier: LinearConfig::new(768, classes).init(device),
        }
    }

    /// # Shapes
    /// `[N, c, side, side] -> [N, classes]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let s = self.pool_stride;
        let x = avg_pool2d(relu(x), [5, 5], [s, s], [0, 0], false, false);
        let x = relu(self.bn1.forward(conv_forward(&self.conv1, x)));
        let x = relu(self.bn2.forward(conv_forward(&self.conv2, x)));
        let [n, c, h, w] = x.dims();
        self.classifier.forward(x.reshape([n, c * h * w]))
    }
}

/// The evaluation network.
#[derive(Module, Debug)]
pub struct Network<B: Backend> {
    /// Stem 3x3 convolution to 3C channels.
    pub stem_conv: Conv2d<B>,
    /// Stem BatchNorm.
    pub stem_bn: BatchNorm2d<B>,
    /// The L cells.
    pub cells: Vec<Cell<B>>,
    /// Optional auxiliary head.
    pub auxiliary: Option<AuxiliaryHead<B>>,
    /// Index of the cell whose output feeds the auxiliary head (2L/3).
    pub aux_after: usize,
    /// Final linear layer.
    pub classifier: Linear<B>,
}

impl<B: Backend> Network<B> {
    /// Logits and, when training (autodiff enabled) with an auxiliary head, its logits.
    /// `drop_prob > 0` applies drop path in every cell.
    ///
    /// # Shapes
    /// `[N, in_channels, H, W] -> ([N, classes], Option<[N, classes]>)`
    pub fn forward_train(
        &self,
        x: Tensor<B, 4>,
        drop_prob: f64,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let _tie = crate::graph::tie_parameters(self, &x.device());
        let s = self.stem_bn.forward(conv_forward(&self.stem_conv, x));
        let (mut s0, mut s1) = (s.clone(), s);
        let mut aux = None;
        let training = B::ad_enabled(&s0.device());
        for (i, cell) in self.cells.iter().enumerate() {
            let out = cell.forward(s0, s1.clone(), drop_prob);
            s0 = s1;
            s1 = out;
            if i == self.aux_after && training {
                if let Some(head) = &self.auxiliary {
                    aux = Some(head.forward(s1.clone()));
                }
            }
        }
        let [n, c, _, _] = s1.dims();
        let pooled = s1.mean_dim(3).mean_dim(2).reshape([n, c]);
        (self.classifier.forward(pooled), aux)
    }

    /// Inference logits.
    ///
    /// # Shapes
    /// `[N, in_channels, H, W] -> [N, classes]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_train(x, 0.0).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{zoo, TestBackend};
    use burn::backend::Autodiff;
    use burn::tensor::Distribution;

    fn count(name: &str, c: usize, l: usize, aux: bool) -> usize {
        let cfg = NetworkConfig::new(zoo::by_name(name).unwrap())
            .with_channels(c)
            .with_layers(l)
            .with_auxiliary(aux);
        crate::count_parameters(&cfg.init::<TestBackend>(&Default::default()).unwrap())
    }

    /// Reference figures: the PyTorch DARTS `NetworkCIFAR` (10 classes, 3 input channels),
    /// BatchNorm affine weights counted, running statistics not.
    #[test]
    fn parameter_counts_equal_the_pytorch_reference() {
        assert_eq!(count("DARTS_V2", 36, 20, false), 3_349_342);
        assert_eq!(count("DARTS_V2", 36, 20, true), 3_825_768);
        assert_eq!(count("PC_DARTS", 36, 20, false), 3_634_678);
        assert_eq!(count("DARTS_V1", 36, 20, false), 3_169_414);
        assert_eq!(count("DARTS_V2", 16, 8, false), 246_106);
    }

    #[test]
    fn forward_shapes_for_gray_and_rgb_inputs_with_aux_and_identity() {
        let device = Default::default();
        for (in_c, side) in [(1, 28), (3, 32)] {
            for identity in [false, true] {
                let cfg = NetworkConfig::new(zoo::by_name("PC_DARTS").unwrap())
                    .with_channels(4)
                    .with_layers(5)
                    .with_classes(7)
                    .with_in_channels(in_c)
                    .with_image_size(side)
                    .with_auxiliary(true)
                    .with_identity(identity);
                let net = cfg.init::<Autodiff<TestBackend>>(&device).unwrap();
                let x = Tensor::random(
                    [2, in_c, side, side],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let (logits, aux) = net.forward_train(x, 0.2);
                assert_eq!(logits.dims(), [2, 7]);
                assert_eq!(aux.expect("aux in training").dims(), [2, 7]);
            }
        }
    }

    #[test]
    fn identity_connection_adds_parameters_only_where_shapes_differ() {
        let g = zoo::by_name("DARTS_V2").unwrap();
        let base = NetworkConfig::new(g.clone())
            .with_channels(8)
            .with_layers(5);
        let plain =
            crate::count_parameters(&base.init::<TestBackend>(&Default::default()).unwrap());
        let with = crate::count_parameters(
            &base
                .clone()
                .with_identity(true)
                .init::<TestBackend>(&Default::default())
                .unwrap(),
        );
        // Cell 0: 1x1 projection 24 -> 32 (768 + BN 64); reductions at cells 1 and 3:
        // FactorizedReduce 32 -> 64 (2*32*32 + 128) and 64 -> 128 (2*64*64 + 256).
        assert_eq!(
            with - plain,
            (24 * 32 + 64) + (2 * 32 * 32 + 128) + (2 * 64 * 64 + 256)
        );
    }

    #[test]
    fn bad_sizes_are_rejected() {
        let g = zoo::by_name("DARTS_V2").unwrap();
        let e = NetworkConfig::new(g.clone())
            .with_image_size(30)
            .validate()
            .unwrap_err();
        assert_eq!(e, NetworkError::ImageSize(30));
        let e = NetworkConfig::new(g.clone())
            .with_layers(2)
            .validate()
            .unwrap_err();
        assert_eq!(e, NetworkError::Layers(2));
        let e = NetworkConfig::new(g)
            .with_image_size(16)
            .with_auxiliary(true)
            .validate()
            .unwrap_err();
        assert_eq!(e, NetworkError::AuxTooSmall(16, 4));
    }
}
