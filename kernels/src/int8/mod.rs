//! Integer (int8) kernels for quantized inference, after the ONNX `QLinearConv` /
//! `QuantizeLinear` semantics and the TFLite reference kernels: a tensor holds
//! `real = scale (q - zero)`; products are summed exactly in int32 and brought to the
//! output's scale by a fixed-point multiplier ([`Requant`]), then the output zero point is
//! added and the result clamped ([`OutQ`]).
//!
//! - [`quant`]: `QuantizeLinear` / `DequantizeLinear`, per tensor or per channel.
//! - [`conv`]: convolution (dense, grouped, depthwise; any kernel, stride, padding,
//!   dilation) and the fully connected layer ([`conv::gemm`]). Activations are i8 with a
//!   zero point, weights i8 symmetric per output channel, biases i32.
//! - [`pool`]: max, average and global average pooling.
//! - [`add`]: the sum of two tensors of different scales, and channel concatenation
//!   (TFLite's fixed-point arithmetic).
//! - [`elementwise`]: the int8 engine's requantization, Relu, Add, Concat, per-channel
//!   affine, Slice and Pad (`Q(f(DQ(x)))` in the float path's f32 operations).
//!
//! Every kernel has an entry point that allocates nothing (`conv::conv_into`,
//! `pool::avg_into`, ...: outputs and scratch in caller-owned slices, one thread, the
//! portable loops), the only ones built without the crate's `alloc` feature; the
//! allocating ones (packed SIMD products, rayon) give the same integers.
//!
//! The int32 sums are exact, so every SIMD build (AVX2, AVX-512 VNNI, NEON) gives the
//! portable build's result exactly; the tests compare with `==`. Activations are signed;
//! a `u8` tensor of zero point `z` holds the same reals as i8 `q ^ 0x80` with zero point
//! `z - 128` ([`quant::u8_to_i8`]).

pub mod add;
pub mod conv;
pub mod elementwise;
#[cfg(feature = "alloc")]
pub(crate) mod gemm;
pub mod pool;
pub mod quant;
mod requant;

pub use requant::{doubling_high_mul, rounding_shift, Requant};

/// A quantized tensor's parameters: `real = scale (q - zero)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    /// Scale (positive).
    pub scale: f32,
    /// Zero point.
    pub zero: i8,
}

impl Quant {
    /// Scale `scale`, zero point `zero`.
    pub fn new(scale: f32, zero: i8) -> Self {
        Self { scale, zero }
    }
}

/// Zero point and clamp range of an int8 output: a result `v` (already in output units)
/// is stored as `clamp(v + zero, min, max)`. A fused ReLU is `min = zero`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutQ {
    /// Output zero point.
    pub zero: i8,
    /// Smallest stored value.
    pub min: i8,
    /// Largest stored value.
    pub max: i8,
}

impl OutQ {
    /// Zero point `zero`, the whole i8 range.
    pub fn new(zero: i8) -> Self {
        Self {
            zero,
            min: i8::MIN,
            max: i8::MAX,
        }
    }

    /// Zero point `zero` with a fused ReLU: nothing below the zero point (real 0).
    pub fn relu(zero: i8) -> Self {
        Self {
            zero,
            min: zero,
            max: i8::MAX,
        }
    }

    /// [`OutQ::relu`] when `relu`, else [`OutQ::new`].
    pub fn with_relu(zero: i8, relu: bool) -> Self {
        if relu {
            Self::relu(zero)
        } else {
            Self::new(zero)
        }
    }

    /// `v` (output units, relative to the zero point) stored: `clamp(v + zero, min, max)`.
    #[inline(always)]
    pub fn store(self, v: i32) -> i8 {
        v.saturating_add(self.zero as i32)
            .clamp(self.min as i32, self.max as i32) as i8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_clamps_after_the_zero_point() {
        let o = OutQ::new(-10);
        assert_eq!((o.store(5), o.store(200), o.store(-200)), (-5, 127, -128));
        let r = OutQ::relu(-10);
        assert_eq!((r.store(-3), r.store(3), r.store(i32::MAX)), (-10, -7, 127));
        assert_eq!(OutQ::with_relu(3, false), OutQ::new(3));
    }
}
