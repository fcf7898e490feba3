//! The 8 DARTS operations (see `shared/reference/darts.md`), as Burn modules.
//!
//! All convolutions are bias-free; `affine` selects BatchNorm with learnable gamma/beta
//! (evaluation network) or without (search supernet).

use crate::bn::{BatchNorm2d, BatchNorm2dConfig};
use crate::fastconv::{conv2d, conv_forward};
use crate::fastpool;
use crate::fastselect::{self, contiguous, subsample};
use crate::genotype::Primitive;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{backend::Backend, Tensor};

/// A bias-free 2-D convolution.
pub fn conv<B: Backend>(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_dilation([dilation, dilation])
        .with_groups(groups)
        .with_bias(false)
        .init(device)
}

fn bn<B: Backend>(c: usize, affine: bool, device: &B::Device) -> BatchNorm2d<B> {
    BatchNorm2dConfig::new(c).with_affine(affine).init(device)
}

/// ReLU, convolution, BatchNorm.
#[derive(Module, Debug)]
pub struct ReluConvBn<B: Backend> {
    /// The convolution.
    pub conv: Conv2d<B>,
    /// The BatchNorm after it.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> ReluConvBn<B> {
    /// A ReLUConvBN block with a `kernel`x`kernel` convolution.
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        affine: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            conv: conv(c_in, c_out, kernel, stride, padding, 1, 1, device),
            bn: bn(c_out, affine, device),
        }
    }

    /// # Shapes
    /// `[N, c_in, H, W] -> [N, c_out, H', W']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn.forward(conv_forward(&self.conv, relu(x)))
    }
}

/// ReLU, then two 1x1 stride-2 convolutions (the second on the input shifted by one
/// pixel) concatenated over channels, then BatchNorm. Halves the resolution.
#[derive(Module, Debug)]
pub struct FactorizedReduce<B: Backend> {
    /// 1x1 stride-2 convolution on the input.
    pub conv1: Conv2d<B>,
    /// 1x1 stride-2 convolution on `x[:, :, 1:, 1:]`.
    pub conv2: Conv2d<B>,
    /// BatchNorm over the concatenation.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> FactorizedReduce<B> {
    /// `c_out` must be even.
    pub fn new(c_in: usize, c_out: usize, affine: bool, device: &B::Device) -> Self {
        Self {
            conv1: conv(c_in, c_out / 2, 1, 2, 0, 1, 1, device),
            conv2: conv(c_in, c_out - c_out / 2, 1, 2, 0, 1, 1, device),
            bn: bn(c_out, affine, device),
        }
    }

    /// # Shapes
    /// `[N, c_in, H, W] -> [N, c_out, H/2, W/2]` (H and W even)
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = relu(x);
        let [n, c, h, w] = x.dims();
        let (a, b) = if fastselect::on_host::<B>() {
            // 1x1 stride 2 = 1x1 stride 1 on every second pixel (see `fastselect::subsample`)
            let unit = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
            let a = conv2d(
                subsample(x.clone(), 0),
                self.conv1.weight.val(),
                unit.clone(),
            );
            let b = conv2d(subsample(x, 1), self.conv2.weight.val(), unit);
            (a, b)
        } else {
            let shifted = x.clone().slice([0..n, 0..c, 1..h, 1..w]);
            (
                conv_forward(&self.conv1, x),
                conv_forward(&self.conv2, shifted),
            )
        };
        self.bn
            .forward(Tensor::cat(vec![contiguous(a), contiguous(b)], 1))
    }
}

/// Separable convolution: (ReLU, depthwise kxk stride s, 1x1, BN) then
/// (ReLU, depthwise kxk stride 1, 1x1, BN).
#[derive(Module, Debug)]
pub struct SepConv<B: Backend> {
    /// First depthwise convolution (carries the stride).
    pub dw1: Conv2d<B>,
    /// First pointwise convolution.
    pub pw1: Conv2d<B>,
    /// First BatchNorm.
    pub bn1: BatchNorm2d<B>,
    /// Second depthwise convolution.
    pub dw2: Conv2d<B>,
    /// Second pointwise convolution.
    pub pw2: Conv2d<B>,
    /// Second BatchNorm.
    pub bn2: BatchNorm2d<B>,
}

impl<B: Backend> SepConv<B> {
    /// `kernel` 3 or 5; padding `kernel / 2`.
    pub fn new(c: usize, kernel: usize, stride: usize, affine: bool, device: &B::Device) -> Self {
        let p = kernel / 2;
        Self {
            dw1: conv(c, c, kernel, stride, p, 1, c, device),
            pw1: conv(c, c, 1, 1, 0, 1, 1, device),
            bn1: bn(c, affine, device),
            dw2: conv(c, c, kernel, 1, p, 1, c, device),
            pw2: conv(c, c, 1, 1, 0, 1, 1, device),
            bn2: bn(c, affine, device),
        }
    }

    /// # Shapes
    /// `[N, C, H, W] -> [N, C, H/s, W/s]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self
            .bn1
            .forward(conv_forward(&self.pw1, conv_forward(&self.dw1, relu(x))));
        self.bn2
            .forward(conv_forward(&self.pw2, conv_forward(&self.dw2, relu(x))))
    }
}

/// Dilated separable convolution: ReLU, depthwise kxk dilation 2, 1x1, BN.
#[derive(Module, Debug)]
pub struct DilConv<B: Backend> {
    /// Depthwise dilated convolution (carries the stride).
    pub dw: Conv2d<B>,
    /// Pointwise convolution.
    pub pw: Conv2d<B>,
    /// BatchNorm.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> DilConv<B> {
    /// `kernel` 3 (padding 2) or 5 (padding 4), dilation 2.
    pub fn new(c: usize, kernel: usize, stride: usize, affine: bool, device: &B::Device) -> Self {
        let p = (kernel / 2) * 2;
        Self {
            dw: conv(c, c, kernel, stride, p, 2, c, device),
            pw: conv(c, c, 1, 1, 0, 1, 1, device),
            bn: bn(c, affine, device),
        }
    }

    /// # Shapes
    /// `[N, C, H, W] -> [N, C, H/s, W/s]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn
            .forward(conv_forward(&self.pw, conv_forward(&self.dw, relu(x))))
    }
}

/// One instantiated operation on an edge. Pooling and zero variants carry their stride.
#[derive(Module, Debug)]
pub enum Op<B: Backend> {
    /// `none`: zeros of the strided shape.
    Zero(usize),
    /// `max_pool_3x3`.
    MaxPool(usize),
    /// `avg_pool_3x3` (count_include_pad = false).
    AvgPool(usize),
    /// `skip_connect` at stride 1.
    Identity(usize),
    /// `skip_connect` at stride 2.
    Reduce(FactorizedReduce<B>),
    /// `sep_conv_3x3` / `sep_conv_5x5`.
    Sep(SepConv<B>),
    /// `dil_conv_3x3` / `dil_conv_5x5`.
    Dil(DilConv<B>),
}

impl<B: Backend> Op<B> {
    /// Builds `primitive` on `c` channels at `stride` (1 or 2).
    pub fn new(
        primitive: Primitive,
        c: usize,
        stride: usize,
        affine: bool,
        device: &B::Device,
    ) -> Self {
        match primitive {
            Primitive::None => Op::Zero(stride),
            Primitive::MaxPool3x3 => Op::MaxPool(stride),
            Primitive::AvgPool3x3 => Op::AvgPool(stride),
            Primitive::SkipConnect if stride == 1 => Op::Identity(1),
            Primitive::SkipConnect => Op::Reduce(FactorizedReduce::new(c, c, affine, device)),
            Primitive::SepConv3x3 => Op::Sep(SepConv::new(c, 3, stride, affine, device)),
            Primitive::SepConv5x5 => Op::Sep(SepConv::new(c, 5, stride, affine, device)),
            Primitive::DilConv3x3 => Op::Dil(DilConv::new(c, 3, stride, affine, device)),
            Primitive::DilConv5x5 => Op::Dil(DilConv::new(c, 5, stride, affine, device)),
        }
    }

    /// True for the plain identity (drop path skips it).
    pub fn is_identity(&self) -> bool {
        matches!(self, Op::Identity(_))
    }

    /// # Shapes
    /// `[N, C, H, W] -> [N, C, ceil(H/s), ceil(W/s)]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Op::Zero(s) => {
                let [n, c, h, w] = x.dims();
                Tensor::zeros([n, c, h.div_ceil(*s), w.div_ceil(*s)], &x.device())
            }
            Op::MaxPool(s) => fastpool::max_pool2d(x, 3, *s, 1),
            Op::AvgPool(s) => fastpool::avg_pool2d(x, 3, *s, 1),
            Op::Identity(_) => x,
            Op::Reduce(m) => m.forward(x),
            Op::Sep(m) => m.forward(x),
            Op::Dil(m) => m.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;
    use burn::tensor::{Distribution, TensorData};

    fn dev() -> burn::backend::flex::FlexDevice {
        Default::default()
    }

    #[test]
    fn every_op_has_the_right_shape_at_stride_1_and_2() {
        let x =
            Tensor::<TestBackend, 4>::random([2, 8, 8, 8], Distribution::Normal(0.0, 1.0), &dev());
        for p in Primitive::ALL {
            for (stride, out) in [(1, 8), (2, 4)] {
                let op = Op::new(p, 8, stride, true, &dev());
                assert_eq!(
                    op.forward(x.clone()).dims(),
                    [2, 8, out, out],
                    "{p} stride {stride}"
                );
            }
        }
    }

    #[test]
    fn avg_pool_excludes_padding_at_the_border() {
        // 3x3 input 1..=9; corner output averages the 4 real values 1,2,4,5 = 3.0,
        // the top edge middle averages 1,2,3,4,5,6 = 3.5 (hand-computed).
        let x = Tensor::<TestBackend, 4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &dev(),
        );
        let y: Vec<f32> = Op::<TestBackend>::AvgPool(1)
            .forward(x.clone())
            .into_data()
            .to_vec()
            .unwrap();
        assert!((y[0] - 3.0).abs() < 1e-6, "{y:?}");
        assert!((y[1] - 3.5).abs() < 1e-6, "{y:?}");
        assert!((y[4] - 5.0).abs() < 1e-6, "{y:?}");
        let y: Vec<f32> = Op::<TestBackend>::AvgPool(2)
            .forward(x)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(y.len(), 4);
        // stride-2 outputs at (0,0), (0,2), (2,0), (2,2): means of the real neighbours.
        assert!(
            (y[0] - 3.0).abs() < 1e-6
                && (y[1] - 4.0).abs() < 1e-6
                && (y[2] - 6.0).abs() < 1e-6
                && (y[3] - 7.0).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn max_pool_pads_with_minus_infinity() {
        let x = Tensor::<TestBackend, 4>::from_data(
            TensorData::new(vec![-1.0f32, -2.0, -3.0, -4.0], [1, 1, 2, 2]),
            &dev(),
        );
        let y: Vec<f32> = Op::<TestBackend>::MaxPool(1)
            .forward(x)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(y, vec![-1.0, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn factorized_reduce_shifted_branch_reads_odd_pixels() {
        // One input channel, two output channels: conv1 sees x[0::2, 0::2], conv2 sees
        // x[1::2, 1::2]. With both weights set to 1 and BN at its initial running
        // statistics (inference), output = relu(x) / sqrt(1 + eps) at those pixels.
        let device = dev();
        let mut fr = FactorizedReduce::<TestBackend>::new(1, 2, true, &device);
        fr.conv1.weight = fr.conv1.weight.map(|w| w.ones_like());
        fr.conv2.weight = fr.conv2.weight.map(|w| w.ones_like());
        let vals: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let x = Tensor::<TestBackend, 4>::from_data(TensorData::new(vals, [1, 1, 4, 4]), &device);
        let y: Vec<f32> = fr.forward(x).into_data().to_vec().unwrap();
        let s = (1.0f32 + 1e-5).sqrt();
        let expect = [0.0, 2.0, 8.0, 10.0, 5.0, 7.0, 13.0, 15.0].map(|v: f32| v / s);
        for (a, b) in y.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
    }

    #[test]
    fn parameter_counts_match_pytorch_definitions() {
        // sep_conv_3x3 on C=16 with affine BN: 2 * (16*9 + 16*16 + 2*16) = 864.
        assert_eq!(
            crate::count_parameters(&Op::<TestBackend>::new(
                Primitive::SepConv3x3,
                16,
                1,
                true,
                &dev()
            )),
            864
        );
        // dil_conv_5x5: 16*25 + 16*16 + 32 = 688.
        assert_eq!(
            crate::count_parameters(&Op::<TestBackend>::new(
                Primitive::DilConv5x5,
                16,
                1,
                true,
                &dev()
            )),
            688
        );
        // skip_connect at stride 2 = FactorizedReduce: 2 * 16*8 + 32 = 288.
        assert_eq!(
            crate::count_parameters(&Op::<TestBackend>::new(
                Primitive::SkipConnect,
                16,
                2,
                true,
                &dev()
            )),
            288
        );
        assert_eq!(
            crate::count_parameters(&Op::<TestBackend>::new(
                Primitive::MaxPool3x3,
                16,
                2,
                true,
                &dev()
            )),
            0
        );
    }
}
