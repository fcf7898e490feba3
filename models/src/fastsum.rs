//! `sum_i w[i] * y_i`: a weighted sum of equal-shaped tensors as one operation, with a
//! host kernel and its backward pass on the CPU backends. The supernet uses it for an
//! edge's 7 operation outputs (weights softmax(alpha)), a node's incoming edges (betas)
//! and an edge's proportion branches (`--learn-proportion`).
//!
//! Written with Burn tensors, an edge's sum is 7 slices of the weight vector, 7
//! broadcast multiplications and 6 additions, forward and backward, each its own
//! autodiff node and its own full-size buffer; the gradient of each weight is a
//! full-size product followed by a sum. With the channel split (K = 4) the
//! tensors are small and those fixed costs are a large part of the search step.
//! Here the forward pass reads every output once and writes one sum; the backward
//! pass writes one gradient per tracked output (`w[i] * g`) and, when the weights
//! are tracked, takes the dot product of each output with `g`.
//!
//! Flex has a second reason: when a multiplication's input is shared (as the output
//! gradient is in the multiplication's own backward step, which needs it twice), flex
//! skips its SIMD paths and walks both operands with a per-element strided iterator,
//! 6% of a K=16 search step. The terms are read in place (`HostFloats`), not copied.
//!
//! The arithmetic is `splitnas_kernels::elementwise`'s. [`weighted_sum`] serves the
//! backends `splitnas_host::route` sends to the host kernels (under `Autodiff` for up to
//! [`MAX_TERMS`] terms); other backends (CUDA, wgpu) and longer sums use the tensor
//! expression. The tests compare values and gradients with it.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use splitnas_host::kernels::elementwise;
use splitnas_host::{from_float, into_float, route, same, tensor, HostFloats, Inner, Route};

/// The most terms the host kernel takes (the 7 non-`none` DARTS operations fit).
pub const MAX_TERMS: usize = 8;

/// `sum_i w[i] * ys[i]`.
///
/// # Shapes
/// `ys: M x [N, C, H, W]` (all equal), `w: [M]` -> `[N, C, H, W]`. An empty `ys`, a
/// length of `w` other than M or unequal shapes are bugs of the caller and panic.
pub fn weighted_sum<B: Backend>(ys: Vec<Tensor<B, 4>>, w: Tensor<B, 1>) -> Tensor<B, 4> {
    assert!(!ys.is_empty(), "weighted_sum of no tensors");
    assert_eq!(w.dims()[0], ys.len(), "weighted_sum: one weight per tensor");
    let dims = ys[0].dims();
    assert!(
        ys.iter().all(|y| y.dims() == dims),
        "weighted_sum: tensors of different shapes"
    );
    match route::<B>() {
        Route::Autodiff(Inner::Flex) if ys.len() <= MAX_TERMS => {
            same(autodiff_dispatch::<burn::backend::Flex>(same(ys), same(w)))
        }
        Route::Autodiff(Inner::NdArray) if ys.len() <= MAX_TERMS => same(autodiff_dispatch::<
            burn::backend::NdArray,
        >(
            same(ys), same(w)
        )),
        Route::Host => sum_forward(ys, w, false).0,
        _ => burn_sum(ys, w),
    }
}

/// The tensor expression the kernel replaces.
fn burn_sum<B: Backend>(ys: Vec<Tensor<B, 4>>, w: Tensor<B, 1>) -> Tensor<B, 4> {
    let mut sum: Option<Tensor<B, 4>> = None;
    for (i, y) in ys.into_iter().enumerate() {
        let y = y.mul(w.clone().slice([i..i + 1]).reshape([1, 1, 1, 1]));
        sum = Some(match sum {
            Some(s) => s.add(y),
            None => y,
        });
    }
    sum.expect("checked non-empty")
}

/// Forward kernel. Returns the sum and, when `keep` is set, the terms (read in place,
/// for the weights' gradient), with the weights.
fn sum_forward<B: Backend>(
    ys: Vec<Tensor<B, 4>>,
    w: Tensor<B, 1>,
    keep: bool,
) -> (Tensor<B, 4>, Terms<B>) {
    let device = w.device();
    let dims = ys[0].dims();
    let weights = HostFloats::new(w).to_vec();
    let values: Vec<HostFloats<B>> = ys.into_iter().map(HostFloats::new).collect();
    let mut out = vec![0f32; dims.iter().product()];
    elementwise::add_weighted(&values, &weights, &mut out);
    let out = tensor(out, dims, &device);
    let values = if keep { values } else { Vec::new() };
    (out, (Arc::new(weights), Arc::new(values)))
}

/// Weights and (when the weights are tracked) the terms.
type Terms<B> = (Arc<Vec<f32>>, Arc<Vec<HostFloats<B>>>);

/// Parents: the `N - 1` terms, then the weights.
#[derive(Debug)]
struct SumBackward<const N: usize>;

impl<I: Backend, const N: usize> Backward<I, N> for SumBackward<N> {
    /// Shape of every term, the weights, the terms' values (empty unless the weights
    /// are tracked).
    type State = ([usize; 4], Terms<I>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad: Tensor<I, 4> = from_float(grads.consume::<I>(&ops.node));
        if ops.parents.iter().all(Option::is_none) {
            return;
        }
        let (dims, (weights, values)) = ops.state;
        let device = grad.device();
        let g = HostFloats::new(grad);
        let (terms, w_node) = ops.parents.split_at(N - 1);
        // One scaled copy of g per tracked term.
        let wanted: Vec<bool> = terms.iter().map(Option::is_some).collect();
        let gys = elementwise::scaled_copies(&g, &weights, &wanted);
        for (node, gy) in terms.iter().zip(gys) {
            if let (Some(node), Some(gy)) = (node, gy) {
                grads.register::<I>(node.id, into_float(tensor::<I, 4>(gy, dims, &device)));
            }
        }
        if let Some(node) = &w_node[0] {
            let gw: Vec<f32> = values
                .iter()
                .map(|y| elementwise::dot(y, &g) as f32)
                .collect();
            grads.register::<I>(node.id, into_float(tensor::<I, 1>(gw, [N - 1], &device)));
        }
    }
}

/// Picks the parent count `N = ys.len() + 1` at compile time.
fn autodiff_dispatch<I: Backend>(
    ys: Vec<Tensor<Autodiff<I>, 4>>,
    w: Tensor<Autodiff<I>, 1>,
) -> Tensor<Autodiff<I>, 4> {
    match ys.len() {
        1 => sum_autodiff::<I, 2>(ys, w),
        2 => sum_autodiff::<I, 3>(ys, w),
        3 => sum_autodiff::<I, 4>(ys, w),
        4 => sum_autodiff::<I, 5>(ys, w),
        5 => sum_autodiff::<I, 6>(ys, w),
        6 => sum_autodiff::<I, 7>(ys, w),
        7 => sum_autodiff::<I, 8>(ys, w),
        8 => sum_autodiff::<I, 9>(ys, w),
        _ => burn_sum(ys, w),
    }
}

fn sum_autodiff<I: Backend, const N: usize>(
    ys: Vec<Tensor<Autodiff<I>, 4>>,
    w: Tensor<Autodiff<I>, 1>,
) -> Tensor<Autodiff<I>, 4> {
    let dims = ys[0].dims();
    let ys: Vec<_> = ys
        .into_iter()
        .map(|y| y.into_primitive().tensor())
        .collect();
    let w = w.into_primitive().tensor();
    let w_tracked = w.is_tracked();
    let parents: [_; N] = std::array::from_fn(|i| match ys.get(i) {
        Some(y) => y.node.clone(),
        None => w.node.clone(),
    });
    let inner_ys: Vec<Tensor<I, 4>> = ys.into_iter().map(|y| from_float(y.primitive)).collect();
    let inner_w = from_float::<I, 1>(w.primitive);
    let out = match SumBackward::<N>
        .prepare::<NoCheckpointing>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, terms) = sum_forward(inner_ys, inner_w, w_tracked);
            prep.finish((dims, terms), y.into_primitive().tensor())
        }
        OpsKind::UnTracked(prep) => {
            let (y, _) = sum_forward(inner_ys, inner_w, false);
            prep.finish(y.into_primitive().tensor())
        }
    };
    from_float(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    /// Values and gradients of sum(weighted_sum(ys, w) * r) against the tensor
    /// expression, with the terms `tracked[i]` and the weights `w_tracked` requiring
    /// gradients (the others constants, as in the search's untracked halves).
    fn compare<B: AutodiffBackend>(dims: [usize; 4], tracked: &[bool], w_tracked: bool) {
        let dev = Default::default();
        let m = tracked.len();
        let ys: Vec<Tensor<B, 4>> = (0..m)
            .map(|_| Tensor::random(dims, Distribution::Normal(0.0, 1.0), &dev))
            .collect();
        let w = Tensor::<B, 1>::random([m], Distribution::Uniform(0.0, 1.0), &dev);
        let r = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
        let run = |fast: bool| {
            let ys: Vec<Tensor<B, 4>> = ys
                .iter()
                .zip(tracked)
                .map(|(y, &t)| {
                    if t {
                        y.clone().detach().require_grad()
                    } else {
                        y.clone().detach()
                    }
                })
                .collect();
            let w = if w_tracked {
                w.clone().detach().require_grad()
            } else {
                w.clone().detach()
            };
            let out = if fast {
                weighted_sum(ys.clone(), w.clone())
            } else {
                burn_sum(ys.clone(), w.clone())
            };
            let grads = (out.clone() * r.clone()).sum().backward();
            let gys: Vec<_> = ys.iter().map(|y| y.grad(&grads)).collect();
            (out.inner(), gys, w.grad(&grads))
        };
        let (y1, gy1, gw1) = run(true);
        let (y0, gy0, gw0) = run(false);
        assert_eq!(y1.dims(), dims);
        let tol = Tolerance::<f32>::absolute(1e-5);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        for (i, (a, b)) in gy1.into_iter().zip(gy0).enumerate() {
            assert_eq!(a.is_some(), tracked[i], "gradient of term {i}");
            assert_eq!(b.is_some(), tracked[i]);
            if let (Some(a), Some(b)) = (a, b) {
                a.into_data().assert_approx_eq(&b.into_data(), tol);
            }
        }
        assert_eq!(gw1.is_some(), w_tracked);
        if let (Some(a), Some(b)) = (gw1, gw0) {
            // Golden: d/dw_i sum(sum_j w_j y_j * r) = sum(y_i * r), summed here in f64.
            // Both sides sum n products of N(0, 1) values in f32: ours in 8 lanes of n/8
            // terms each, the tensor expression in its own order. A running f32 sum S_k
            // of k such products has |S_k| ~ sqrt(k) and each addition rounds by up to
            // u|S_k| (u = 2^-24), so a lane's error has a standard deviation of about
            // u * (n/8) / sqrt(6) and the 8 lanes' total sqrt(8) times that: 5.8e-4 for
            // the largest case here (67,584 products; 2.6e-4 seen on CI against a fixed
            // 1e-4 that failed). Held to 6 such deviations; the sum itself can be near
            // 0, so the tolerance is absolute, not relative.
            let n = dims.iter().product::<usize>() as f32;
            let sigma = f32::EPSILON / 2.0 * (n / 8.0) / 6f32.sqrt() * 8f32.sqrt();
            let tol = Tolerance::<f32>::absolute(6.0 * sigma + 1e-5);
            let host = |t: &Tensor<B, 4>| t.clone().into_data().to_vec::<f32>().unwrap();
            let rv = host(&r);
            let exact: Vec<f32> = ys
                .iter()
                .map(|y| {
                    let yv = host(y);
                    yv.iter()
                        .zip(&rv)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>() as f32
                })
                .collect();
            let exact = TensorData::new(exact, [m]);
            a.into_data().assert_approx_eq(&exact, tol);
            b.into_data().assert_approx_eq(&exact, tol);
        }
    }

    #[test]
    fn matches_the_tensor_expression_and_its_gradients() {
        let _serial = crate::backward_lock();
        let all = [true; 7];
        // the mixed op's 7 terms; a size that is not a multiple of the block or lanes
        compare::<Autodiff<Flex>>([2, 4, 16, 16], &all, true);
        compare::<Autodiff<Flex>>([3, 5, 7, 9], &all, true);
        // large enough for the blocks and the terms' gradients to go to the pool
        compare::<Autodiff<Flex>>([4, 16, 32, 33], &all, true);
        // weight step (weights constant) and architecture step with constant terms
        compare::<Autodiff<Flex>>([2, 3, 8, 8], &all, false);
        compare::<Autodiff<Flex>>(
            [2, 3, 8, 8],
            &[true, false, true, false, false, true, true],
            true,
        );
        compare::<Autodiff<NdArray>>([1, 2, 5, 5], &[true, true], true);
        compare::<Autodiff<NdArray>>([1, 2, 3, 3], &[false], true);
    }

    #[test]
    fn weighted_sum_of_known_values() {
        // 0.5 * [1, 2] + 2 * [3, -1] = [6.5, -1]
        let dev = Default::default();
        let a = Tensor::<Flex, 4>::from_data(TensorData::new(vec![1f32, 2.0], [1, 1, 1, 2]), &dev);
        let b = Tensor::<Flex, 4>::from_data(TensorData::new(vec![3f32, -1.0], [1, 1, 1, 2]), &dev);
        let w = Tensor::<Flex, 1>::from_data(TensorData::new(vec![0.5f32, 2.0], [2]), &dev);
        let y = weighted_sum(vec![a, b], w);
        assert_eq!(y.into_data().into_vec::<f32>().unwrap(), vec![6.5, -1.0]);
    }
}
