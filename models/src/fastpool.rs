//! Square max and average pooling on the host kernels (`splitnas_kernels::pool`), with their
//! backward pass as one autodiff step.
//!
//! Burn 0.21's flex backend pools by walking every window element by element with a bounds
//! check and an `i64` argmax per output, and its backward scatters through those indices;
//! on a search step that was about a quarter of the time. Here the forward pass runs the
//! window kernels (the max pool of a tracked step also keeps each maximum's `u32` index for
//! the backward pass) and the backward pass the pooling gradient kernels.
//!
//! [`max_pool2d`] and [`avg_pool2d`] (average over the window's elements inside the image,
//! PyTorch's `count_include_pad=False`) serve the backends `splitnas_host::route` sends to
//! the host kernels; other backends (CUDA, wgpu) and options the kernels do not cover
//! (padding above half the kernel) use Burn's pooling unchanged. The tests compare outputs
//! and gradients with Burn's own pooling.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use splitnas_host::kernels::{pool, Geom};
use splitnas_host::{
    dispatch, fresh_tensor, from_float, into_float, same, step, tensor, HostFloats,
};

/// `kernel x kernel` max pooling with `stride` and `padding` (padding counts as minus
/// infinity), as `burn::tensor::module::max_pool2d` without dilation or ceil mode.
pub fn max_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    pool2d::<B>(x, kernel, stride, padding, Kind::Max)
}

/// `kernel x kernel` average pooling over the window's elements inside the image
/// (`count_include_pad = false`), as `burn::tensor::module::avg_pool2d`.
pub fn avg_pool2d<B: Backend>(
    x: Tensor<B, 4>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    pool2d::<B>(x, kernel, stride, padding, Kind::Avg)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Max,
    Avg,
}

/// The window of a square pool over `x`, when the kernels cover it.
fn window(dims: [usize; 4], k: usize, s: usize, p: usize) -> Option<Geom> {
    let [_, c, h, w] = dims;
    Geom::try_square(c, [h, w], k, s, p, 1).filter(pool::supported)
}

fn pool2d<B: Backend>(x: Tensor<B, 4>, k: usize, s: usize, p: usize, kind: Kind) -> Tensor<B, 4> {
    let burn_pool = |x: Tensor<B, 4>| match kind {
        Kind::Max => burn::tensor::module::max_pool2d(x, [k, k], [s, s], [p, p], [1, 1], false),
        Kind::Avg => burn::tensor::module::avg_pool2d(x, [k, k], [s, s], [p, p], false, false),
    };
    let Some(g) = window(x.dims(), k, s, p) else {
        return burn_pool(x);
    };
    dispatch!(B {
        autodiff I => same(pool_autodiff::<I>(same(x), g, kind)),
        host => pool_forward(x, &g, kind, false).0,
        generic => burn_pool(x),
    })
}

/// Forward kernel on host memory; with `argmax` (a tracked max pool) the index of each
/// maximum comes back for the backward pass.
fn pool_forward<B: Backend>(
    x: Tensor<B, 4>,
    g: &Geom,
    kind: Kind,
    argmax: bool,
) -> (Tensor<B, 4>, Vec<u32>) {
    let device = x.device();
    let n = x.dims()[0];
    let shape = [n, g.c, g.oh, g.ow];
    let xs = HostFloats::new(x);
    match kind {
        Kind::Max if argmax => {
            let len = shape.iter().product();
            let (mut out, mut arg) = (vec![0f32; len], vec![0u32; len]);
            pool::max_with_argmax(&xs, n, g, &mut out, &mut arg);
            (tensor(out, shape, &device), arg)
        }
        Kind::Max => (
            fresh_tensor(shape, &device, |o| pool::max(&xs, n, g, o)),
            Vec::new(),
        ),
        Kind::Avg => (
            fresh_tensor(shape, &device, |o| pool::avg(&xs, n, g, false, o)),
            Vec::new(),
        ),
    }
}

#[derive(Debug)]
struct PoolBackward;

impl<I: Backend> Backward<I, 1> for PoolBackward {
    /// Batch size, window, kind and (max pooling) the argmax of every output.
    type State = (usize, Geom, Kind, Arc<Vec<u32>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad: Tensor<I, 4> = from_float(grads.consume::<I>(&ops.node));
        let Some(node) = node else { return };
        let (n, g, kind, arg) = ops.state;
        let device = grad.device();
        let gs = HostFloats::new(grad);
        let shape = [n, g.c, g.h, g.w];
        let mut gx = vec![0f32; shape.iter().product()];
        match kind {
            Kind::Max => pool::max_backward(&gs, &arg, n, &g, &mut gx),
            Kind::Avg => pool::avg_backward(&gs, n, &g, &mut gx),
        }
        grads.register::<I>(node.id, into_float(tensor::<I, 4>(gx, shape, &device)));
    }
}

fn pool_autodiff<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    g: Geom,
    kind: Kind,
) -> Tensor<Autodiff<I>, 4> {
    let n = x.dims()[0];
    step::unary(x, PoolBackward, |x, tracked| {
        let (y, arg) = pool_forward(x, &g, kind, tracked && kind == Kind::Max);
        (y, tracked.then(|| (n, g, kind, Arc::new(arg))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type A = Autodiff<Flex>;

    /// Outputs and input gradients of sum(pool(x) * r) against Burn's own pooling.
    fn compare(dims: [usize; 4], k: usize, s: usize, p: usize, kind: Kind, ties: bool) {
        let dev = Default::default();
        let mut x = Tensor::<A, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
        if ties {
            // few distinct values: windows hold equal maxima, argmax order matters
            x = x.mul_scalar(2.0).round();
        }
        let burn_pool = |x: Tensor<A, 4>| match kind {
            Kind::Max => burn::tensor::module::max_pool2d(x, [k, k], [s, s], [p, p], [1, 1], false),
            Kind::Avg => burn::tensor::module::avg_pool2d(x, [k, k], [s, s], [p, p], false, false),
        };
        let reference = burn_pool(x.clone().detach());
        let r = Tensor::<A, 4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &dev);
        let run = |fast: bool| {
            let x = x.clone().detach().require_grad();
            let y = match (fast, kind) {
                (true, Kind::Max) => max_pool2d(x.clone(), k, s, p),
                (true, Kind::Avg) => avg_pool2d(x.clone(), k, s, p),
                (false, _) => burn_pool(x.clone()),
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let (y1, gx1) = run(true);
        let (y0, gx0) = run(false);
        assert_eq!(y1.dims(), y0.dims(), "{dims:?} k{k} s{s} p{p} {kind:?}");
        let tol = Tolerance::<f32>::absolute(1e-5);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        gx1.into_data().assert_approx_eq(&gx0.into_data(), tol);
    }

    #[test]
    fn matches_burn_pooling_and_its_gradients() {
        let _serial = crate::backward_lock();
        for &dims in &[[2, 3, 8, 8], [1, 2, 7, 5], [2, 1, 1, 1], [1, 70, 16, 16]] {
            for &(k, s, p) in &[(3, 1, 1), (3, 2, 1), (2, 2, 0), (5, 1, 2)] {
                if dims[2] + 2 * p < k || dims[3] + 2 * p < k {
                    continue;
                }
                for kind in [Kind::Max, Kind::Avg] {
                    compare(dims, k, s, p, kind, false);
                    compare(dims, k, s, p, kind, true);
                }
            }
        }
        // large enough to split the planes over threads
        for kind in [Kind::Max, Kind::Avg] {
            compare([4, 32, 32, 32], 3, 1, 1, kind, true);
            compare([4, 32, 31, 31], 3, 2, 1, kind, false);
        }
    }

    #[test]
    fn hand_worked_border_windows() {
        // 3x3 input 1..9, 3x3 window, stride 2, padding 1: outputs at (0,0), (0,2), (2,0), (2,2)
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &dev,
        );
        let avg: Vec<f32> = avg_pool2d(x.clone(), 3, 2, 1).into_data().to_vec().unwrap();
        // top-left window {1,2,4,5} -> 3; top-right {2,3,5,6} -> 4; bottom-left {4,5,7,8} -> 6; {5,6,8,9} -> 7
        assert_eq!(avg, vec![3.0, 4.0, 6.0, 7.0]);
        let max: Vec<f32> = max_pool2d(x, 3, 2, 1).into_data().to_vec().unwrap();
        assert_eq!(max, vec![5.0, 6.0, 8.0, 9.0]);
    }

    #[test]
    fn plain_backend_and_unsupported_padding_fall_back() {
        let dev = Default::default();
        let x = Tensor::<NdArray, 4>::random([1, 2, 5, 5], Distribution::Default, &dev);
        let fast = avg_pool2d(x.clone(), 3, 1, 1);
        let burn =
            burn::tensor::module::avg_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], false, false);
        fast.into_data()
            .assert_approx_eq::<f32>(&burn.into_data(), Tolerance::absolute(1e-6));
        assert!(window([1, 2, 5, 5], 3, 1, 2).is_none());
    }
}
