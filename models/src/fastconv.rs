//! 2-D convolution with a fast backward pass on the CPU backends.
//!
//! Burn 0.21's autodiff differentiates a convolution through the backend's
//! `conv_transpose2d` (input gradient) and a grouped convolution whose kernel is
//! the whole output map (weight gradient). On the CPU backends both are slow for
//! the shapes DARTS uses: flex's transposed convolution runs one small GEMM per
//! (image, group) on a single thread, so a depthwise 3x3 on [64, 4, 32, 32] spent
//! 17 ms in backward against 1 ms forward.
//!
//! [`conv2d`] keeps Burn's forward convolution and registers its own backward
//! step for `Autodiff<Flex>` and `Autodiff<NdArray>`, built only from forward
//! operations the backends are fast at:
//! * input gradient = convolution of the (zero-interleaved, for stride > 1)
//!   output gradient with the flipped kernel (transposed in the channel axes for
//!   dense convolutions), padding `dilation * (kernel - 1) - padding`;
//! * depthwise weight gradient = the host kernel
//!   `splitnas_kernels::conv::depthwise_weight_grad` (as a convolution it would have the
//!   whole output map as kernel, which flex runs 5x slower);
//! * 1x1 weight gradient = one batched matrix product.
//!
//! Other backends (CUDA, wgpu), convolutions with bias, groups other than 1 or
//! depthwise, and asymmetric options use Burn's own convolution unchanged.
//! `tests::backward_matches_burn` checks the gradients against Burn's.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;
use splitnas_host::kernels::{conv, Geom};
use splitnas_host::{from_float, route, same, tensor, HostFloats, Inner, Route};

/// The forward pass of `conv` on `x`, with the fast backward where available.
pub fn conv_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => t,
        PaddingConfig2d::Valid => 0,
        _ => return conv.forward(x),
    };
    if conv.bias.is_some() {
        return conv.forward(x);
    }
    let options = ConvOptions::new(conv.stride, [padding; 2], conv.dilation, conv.groups);
    conv2d(x, conv.weight.val(), options)
}

/// `burn::tensor::module::conv2d` without bias, with the fast backward where available.
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let w = weight.dims();
    if route::<B>() == Route::Generic
        && [w[2], w[3]] == [1, 1]
        && options.stride == [2, 2]
        && options.padding == [0, 0]
    {
        // Burn 0.21's CubeCL convolution (wgpu, and CUDA by the same kernels) gets the input
        // gradient of a 1x1 stride-2 convolution wrong (tests/gpu_ops.rs shows it). It reads
        // every second pixel only, so it is a 1x1 stride-1 convolution of those pixels:
        // the same sums, and a gradient that is right.
        let unit = ConvOptions::new([1, 1], [0, 0], options.dilation, options.groups);
        let x = crate::fastselect::subsample(x, 0);
        return burn::tensor::module::conv2d(x, weight, None, unit);
    }
    if !supported(&x.dims(), &weight.dims(), &options) {
        return burn::tensor::module::conv2d(x, weight, None, options);
    }
    match route::<B>() {
        Route::Autodiff(Inner::Flex) => via::<B, burn::backend::Flex>(x, weight, options),
        Route::Autodiff(Inner::NdArray) => via::<B, burn::backend::NdArray>(x, weight, options),
        Route::Host | Route::Generic => burn::tensor::module::conv2d(x, weight, None, options),
    }
}

/// Square options, dense or depthwise, and a non-negative transposed padding.
fn supported(x: &[usize; 4], w: &[usize; 4], o: &ConvOptions<2>) -> bool {
    let square = o.stride[0] == o.stride[1]
        && o.padding[0] == o.padding[1]
        && o.dilation[0] == o.dilation[1]
        && w[2] == w[3];
    let depthwise = o.groups == x[1] && w[0] == x[1] && w[1] == 1;
    let dense = o.groups == 1 && w[1] == x[1];
    square && (depthwise || dense) && o.dilation[0] * (w[2] - 1) >= o.padding[0]
}

fn via<B: Backend, I: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let x = same::<_, Tensor<Autodiff<I>, 4>>(x);
    let w = same::<_, Tensor<Autodiff<I>, 4>>(w);
    same(conv2d_autodiff::<I>(x, w, options))
}

#[derive(Debug)]
struct FastConv2d;

impl<I: Backend> Backward<I, 2> for FastConv2d {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let grad = from_float::<I, 4>(grads.consume::<I>(&ops.node));
        let (x_state, w_state, options) = ops.state;
        let x = from_float::<I, 4>(checkpointer.retrieve_node_output(x_state));
        let w = from_float::<I, 4>(checkpointer.retrieve_node_output(w_state));
        // The two gradients are independent: on the pool side by side (the backward pass
        // otherwise runs one step at a time on one thread).
        let x_dims = x.dims();
        let w_dims = w.dims();
        let (gx, gw) = rayon::join(
            || {
                node_x
                    .is_some()
                    .then(|| input_grad(&x_dims, w, grad.clone(), &options))
            },
            || {
                node_w
                    .is_some()
                    .then(|| weight_grad(x, &w_dims, grad.clone(), &options))
            },
        );
        if let (Some(node), Some(gx)) = (node_x, gx) {
            grads.register::<I>(node.id, gx.into_primitive().tensor());
        }
        if let (Some(node), Some(gw)) = (node_w, gw) {
            grads.register::<I>(node.id, gw.into_primitive().tensor());
        }
    }
}

/// The inner backend's forward convolution; a 1x1, stride-1, unpadded dense one as one
/// batched matrix product `w [O, I] x [N, I, HW]` (flex lowers it through im2col and
/// writes the product back element by element, 14% of a K=4 search step).
fn forward<I: Backend>(
    x: I::FloatTensorPrimitive,
    w: I::FloatTensorPrimitive,
    o: &ConvOptions<2>,
) -> I::FloatTensorPrimitive {
    let (x, w) = (from_float::<I, 4>(x), from_float::<I, 4>(w));
    let [n, c_in, h, wd] = x.dims();
    let [c_out, wc, kh, kw] = w.dims();
    if o.groups == 1
        && [kh, kw] == [1, 1]
        && o.stride == [1, 1]
        && o.padding == [0, 0]
        && wc == c_in
    {
        let y = w
            .reshape([1, c_out, c_in])
            .matmul(x.reshape([n, c_in, h * wd]));
        return y.reshape([n, c_out, h, wd]).into_primitive().tensor();
    }
    I::conv2d(
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        None,
        o.clone(),
    )
}

fn conv2d_autodiff<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    w: Tensor<Autodiff<I>, 4>,
    options: ConvOptions<2>,
) -> Tensor<Autodiff<I>, 4> {
    let x = x.into_primitive().tensor();
    let w = w.into_primitive().tensor();
    let out = match FastConv2d
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let w_state = prep.checkpoint(&w);
            let out = forward::<I>(x.primitive, w.primitive, &options);
            prep.finish((x_state, w_state, options), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward::<I>(x.primitive, w.primitive, &options)),
    };
    from_float(out)
}

/// d loss / d x: the output gradient, zero-interleaved by the stride, convolved
/// with the flipped kernel; rows and columns past the input size are cut.
fn input_grad<I: Backend>(
    x_dims: &[usize; 4],
    w: Tensor<I, 4>,
    grad: Tensor<I, 4>,
    o: &ConvOptions<2>,
) -> Tensor<I, 4> {
    let [_, _, h, wd] = *x_dims;
    let [n, c_out, ho, wo] = grad.dims();
    let (s, p, d, k) = (o.stride[0], o.padding[0], o.dilation[0], w.dims()[2]);
    let grad = if s > 1 {
        let device = grad.device();
        let g = grad.reshape([n, c_out, ho, 1, wo, 1]);
        let g = Tensor::cat(
            vec![g, Tensor::zeros([n, c_out, ho, 1, wo, s - 1], &device)],
            5,
        );
        let g = Tensor::cat(
            vec![g, Tensor::zeros([n, c_out, ho, s - 1, wo, s], &device)],
            3,
        );
        g.reshape([n, c_out, ho * s, wo * s])
    } else {
        grad
    };
    let flipped = if o.groups == 1 {
        w.swap_dims(0, 1).flip([2, 3])
    } else {
        w.flip([2, 3])
    };
    let pt = d * (k - 1) - p;
    let out = forward::<I>(
        grad.into_primitive().tensor(),
        flipped.into_primitive().tensor(),
        &ConvOptions::new([1, 1], [pt, pt], [d, d], o.groups),
    );
    let out = from_float::<I, 4>(out);
    let [_, _, oh, ow] = out.dims();
    if oh == h && ow == wd {
        out
    } else {
        out.slice([0..n, 0..x_dims[1], 0..h, 0..wd])
    }
}

/// d loss / d weight.
fn weight_grad<I: Backend>(
    x: Tensor<I, 4>,
    w_dims: &[usize; 4],
    grad: Tensor<I, 4>,
    o: &ConvOptions<2>,
) -> Tensor<I, 4> {
    let [n, c_in, _, _] = x.dims();
    let [_, c_out, ho, wo] = grad.dims();
    let (s, p, d, k) = (o.stride[0], o.padding[0], o.dilation[0], w_dims[2]);
    if o.groups == 1 && k == 1 && p == 0 {
        // 1x1: sum over images of grad [O, HW] x input^T [HW, I].
        let xs = if s > 1 {
            let (eh, ew) = ((ho - 1) * s + 1, (wo - 1) * s + 1);
            x.slice(burn::tensor::s![.., .., 0..eh;s, 0..ew;s])
        } else {
            x
        };
        let g = grad.reshape([n, c_out, ho * wo]);
        let xt = xs.reshape([n, c_in, ho * wo]).swap_dims(1, 2);
        return g.matmul(xt).sum_dim(0).reshape([c_out, c_in, 1, 1]);
    }
    // Correlate input with output gradient: the gradient plays the kernel,
    // stride and dilation swap roles.
    let corr = |input: Tensor<I, 4>, kernel: Tensor<I, 4>, groups: usize| {
        from_float::<I, 4>(I::conv2d(
            input.into_primitive().tensor(),
            kernel.into_primitive().tensor(),
            None,
            ConvOptions::new([d, d], [p, p], [s, s], groups),
        ))
    };
    if o.groups == 1 {
        // [I, N, H, W] (*) [O, N, Ho, Wo] -> [I, O, k, k]
        let out = corr(x.swap_dims(0, 1), grad.swap_dims(0, 1), 1);
        out.slice([0..c_in, 0..c_out, 0..k, 0..k]).swap_dims(0, 1)
    } else {
        depthwise_weight_grad(x, grad, k, s, p, d)
    }
}

/// Depthwise weight gradient on host memory (this path only serves the CPU backends):
/// `splitnas_kernels::conv::depthwise_weight_grad`.
fn depthwise_weight_grad<I: Backend>(
    x: Tensor<I, 4>,
    grad: Tensor<I, 4>,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> Tensor<I, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let [_, _, oh, ow] = grad.dims();
    // the output size of the forward convolution, which ran with these options
    let g = Geom {
        oh,
        ow,
        ..Geom::square(c, [h, w], k, s, p, d)
    };
    let xs = HostFloats::new(x);
    let gs = HostFloats::new(grad);
    let mut out = vec![0f32; c * k * k];
    conv::depthwise_weight_grad(&xs, &gs, n, &g, &mut out);
    tensor(out, [c, 1, k, k], &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tolerance};

    type A = Autodiff<Flex>;

    /// Gradients of sum(conv(x, w) * r) from the fast path against Burn's own
    /// convolution backward (an independent implementation).
    fn compare(x_dims: [usize; 4], w_dims: [usize; 4], o: ConvOptions<2>) {
        let dev = Default::default();
        let x = Tensor::<A, 4>::random(x_dims, Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<A, 4>::random(w_dims, Distribution::Normal(0.0, 1.0), &dev);
        assert!(
            supported(&x_dims, &w_dims, &o),
            "{x_dims:?} {w_dims:?} {o:?}"
        );
        let reference =
            burn::tensor::module::conv2d(x.clone().detach(), w.clone().detach(), None, o.clone());
        let r = Tensor::<A, 4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &dev);
        let run = |fast: bool| {
            let (x, w) = (
                x.clone().detach().require_grad(),
                w.clone().detach().require_grad(),
            );
            let y = if fast {
                conv2d(x.clone(), w.clone(), o.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), None, o.clone())
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        let (y1, gx1, gw1) = run(true);
        let (y0, gx0, gw0) = run(false);
        let tol = Tolerance::<f32>::absolute(1e-3);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        gx1.into_data().assert_approx_eq(&gx0.into_data(), tol);
        gw1.into_data().assert_approx_eq(&gw0.into_data(), tol);
    }

    #[test]
    fn backward_matches_burn_for_every_darts_convolution() {
        let _serial = crate::backward_lock();
        let opts =
            |s: usize, p: usize, d: usize, g: usize| ConvOptions::new([s, s], [p, p], [d, d], g);
        for &(h, s) in &[(8usize, 1usize), (8, 2), (7, 2), (5, 1)] {
            // depthwise 3x3 / 5x5, plain and dilated
            compare([3, 4, h, h], [4, 1, 3, 3], opts(s, 1, 1, 4));
            compare([3, 4, h, h], [4, 1, 5, 5], opts(s, 2, 1, 4));
            compare([3, 4, h, h], [4, 1, 3, 3], opts(s, 2, 2, 4));
            compare([3, 4, h, h], [4, 1, 5, 5], opts(s, 4, 2, 4));
            // 1x1 (pointwise, FactorizedReduce) and a dense 3x3 (stem)
            compare([3, 4, h, h], [6, 4, 1, 1], opts(s, 0, 1, 1));
            compare([3, 3, h, h], [5, 3, 3, 3], opts(s, 1, 1, 1));
        }
    }

    #[test]
    fn unsupported_shapes_fall_back() {
        // grouped (not depthwise) and asymmetric options keep Burn's convolution
        assert!(!supported(
            &[1, 4, 8, 8],
            &[4, 2, 3, 3],
            &ConvOptions::new([1, 1], [1, 1], [1, 1], 2)
        ));
        assert!(!supported(
            &[1, 4, 8, 8],
            &[4, 4, 3, 3],
            &ConvOptions::new([1, 2], [1, 1], [1, 1], 1)
        ));
        let dev = Default::default();
        let x = Tensor::<A, 4>::ones([1, 4, 8, 8], &dev);
        let w = Tensor::<A, 4>::ones([4, 2, 3, 3], &dev);
        assert_eq!(
            conv2d(x, w, ConvOptions::new([1, 1], [1, 1], [1, 1], 2)).dims(),
            [1, 4, 8, 8]
        );
    }
}
