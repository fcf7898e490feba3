//! Channel selection `y[:, j] = x[:, index[j]]` (Burn's `select` on dimension 1), its
//! merge of two inputs, and every-second-pixel subsampling, on the plane-copy kernels of
//! `splitnas_kernels::select`, each with its backward pass as one autodiff step.
//!
//! The channel shuffle of the split selector (a reshape, a swap of two axes and a
//! reshape back) and the channel gathers of the random and attention selectors
//! run on every edge of a search step, forward and backward. Burn 0.21's flex
//! backend makes the swapped 5-D view contiguous through a per-element index
//! iterator (its tiled copy only covers layouts that collapse to two axes), and
//! the backward pass pays it again; on a K=4 search step that was about a fifth
//! of the time. Here every output channel is one `H * W` plane copy, and the backward
//! pass adds each gradient plane back onto the channel it came from (an index may
//! repeat; its gradients add up).
//!
//! The functions serve the backends `splitnas_host::route` sends to the host kernels;
//! other backends (CUDA, wgpu) use `Tensor::select` and slices. The tests compare values
//! and gradients with those.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use splitnas_host::kernels::select;
use splitnas_host::{
    dispatch, fresh_tensor, from_float, into_float, same, step, tensor, HostFloats,
};

/// Whether [`select_channels`], [`merge_channels`] and [`subsample`] run on their host
/// kernels for backend `B` (`splitnas_host::on_host`).
pub use splitnas_host::on_host;

/// `x.select(1, index)`: output channel `j` is input channel `index[j]`.
///
/// # Shapes
/// `[N, C, H, W] -> [N, index.len(), H, W]`; every index is below C (callers build
/// the indices themselves; an index out of range is a bug and panics).
pub fn select_channels<B: Backend>(x: Tensor<B, 4>, index: &[usize]) -> Tensor<B, 4> {
    let c = x.dims()[1];
    assert!(
        index.iter().all(|&i| i < c),
        "channel index out of range for {c} channels"
    );
    dispatch!(B {
        autodiff I => same(select_autodiff::<I>(same(x), index)),
        host => select_forward(x, index),
        generic => burn_select(x, index),
    })
}

/// Every second row and column from `offset` (0 or 1): `y[n, c, i, j] = x[n, c,
/// offset + 2i, offset + 2j]`, as `x[:, :, offset::2, offset::2]` in PyTorch. A 1x1
/// convolution with stride 2 is a 1x1 convolution with stride 1 on `subsample(x, 0)`;
/// `FactorizedReduce` uses that, because flex runs strided 1x1 convolutions (and the
/// `[1:, 1:]` shifted view) through its general im2col path and per-element copies.
///
/// # Shapes
/// `[N, C, H, W] -> [N, C, ceil((H - offset) / 2), ceil((W - offset) / 2)]`
pub fn subsample<B: Backend>(x: Tensor<B, 4>, offset: usize) -> Tensor<B, 4> {
    dispatch!(B {
        autodiff I => same(subsample_autodiff::<I>(same(x), offset)),
        host => subsample_forward(x, offset),
        generic => burn_subsample(x, offset),
    })
}

/// [`subsample`] with Burn's tensor operations.
fn burn_subsample<B: Backend>(x: Tensor<B, 4>, offset: usize) -> Tensor<B, 4> {
    let [n, c, ho, wo] = subsample_dims(x.dims(), offset);
    if ho == 0 || wo == 0 {
        return Tensor::zeros([n, c, ho, wo], &x.device());
    }
    // rows offset, offset + 2, ...: view as pairs of rows and keep the first of each
    let x = x.slice([
        0..n,
        0..c,
        offset..offset + 2 * ho - 1,
        offset..offset + 2 * wo - 1,
    ]);
    let x = x.pad((0, 1, 0, 1), burn::tensor::ops::PadMode::Constant(0.0));
    x.reshape([n, c, ho, 2, wo, 2])
        .slice([0..n, 0..c, 0..ho, 0..1, 0..wo, 0..1])
        .reshape([n, c, ho, wo])
}

fn subsample_dims([n, c, h, w]: [usize; 4], offset: usize) -> [usize; 4] {
    [
        n,
        c,
        select::subsample_len(h, offset, 2),
        select::subsample_len(w, offset, 2),
    ]
}

fn subsample_forward<B: Backend>(x: Tensor<B, 4>, offset: usize) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let xs = HostFloats::new(x);
    fresh_tensor(subsample_dims([n, c, h, w], offset), &device, |o| {
        select::subsample(&xs, n * c, [h, w], offset, [2, 2], o)
    })
}

#[derive(Debug)]
struct SubsampleBackward;

impl<I: Backend> Backward<I, 1> for SubsampleBackward {
    /// Input dims and the offset.
    type State = ([usize; 4], usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad: Tensor<I, 4> = from_float(grads.consume::<I>(&ops.node));
        let Some(node) = node else { return };
        let (dims, offset) = ops.state;
        let [n, c, h, w] = dims;
        let device = grad.device();
        let mut gx = vec![0f32; dims.iter().product()];
        let gs = HostFloats::new(grad);
        select::subsample_backward(&gs, n * c, [h, w], offset, [2, 2], &mut gx);
        grads.register::<I>(node.id, into_float(tensor::<I, 4>(gx, dims, &device)));
    }
}

fn subsample_autodiff<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    offset: usize,
) -> Tensor<Autodiff<I>, 4> {
    let dims = x.dims();
    step::unary(x, SubsampleBackward, |x, tracked| {
        (
            subsample_forward(x, offset),
            tracked.then_some((dims, offset)),
        )
    })
}

/// `Tensor::select` on dimension 1 with host indices.
fn burn_select<B: Backend>(x: Tensor<B, 4>, index: &[usize]) -> Tensor<B, 4> {
    let data: Vec<i64> = index.iter().map(|&i| i as i64).collect();
    let device = x.device();
    x.select(
        1,
        Tensor::<B, 1, Int>::from_data(TensorData::new(data, [index.len()]), &device),
    )
}

/// `Tensor::cat([a, b], 1).select(1, index)` in one pass, without the concatenated
/// tensor: output channel `j` is channel `index[j]` of `a` followed by `b`. The
/// backward pass hands each input a contiguous gradient of its own shape (Burn's
/// `cat` hands out strided views, which every later element-wise backward step
/// walks element by element on flex).
///
/// # Shapes
/// `a: [N, Ca, H, W]`, `b: [N, Cb, H, W]` -> `[N, index.len(), H, W]`; every index is
/// below `Ca + Cb` and the batch and spatial sizes agree (callers build both; a
/// mismatch is a bug and panics).
pub fn merge_channels<B: Backend>(
    a: Tensor<B, 4>,
    b: Tensor<B, 4>,
    index: &[usize],
) -> Tensor<B, 4> {
    let ([n, ca, h, w], [nb, cb, hb, wb]) = (a.dims(), b.dims());
    assert!(
        n == nb && h == hb && w == wb,
        "merge_channels: {:?} and {:?} differ outside the channel axis",
        a.dims(),
        b.dims()
    );
    assert!(
        index.iter().all(|&i| i < ca + cb),
        "channel index out of range for {ca} + {cb} channels"
    );
    dispatch!(B {
        autodiff I => same(merge_autodiff::<I>(same(a), same(b), index)),
        host => merge_forward(a, b, index),
        generic => burn_select(Tensor::cat(vec![a, b], 1), index),
    })
}

/// The same values in a freshly laid out buffer, and the same for the gradient on
/// the way back (a reshape in both directions). A channel slice (or the gradient
/// of one, out of `cat`) is a
/// strided view; flex runs element-wise operations on views through a per-element
/// index iterator, several times slower than on contiguous data, and the 7
/// operations of an edge would each pay that. Reshaping to 1-D and back makes
/// flex (and ndarray) copy the view once with a tiled copy.
pub fn contiguous<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let dims = x.dims();
    x.reshape([dims.iter().product::<usize>()]).reshape(dims)
}

fn select_forward<B: Backend>(x: Tensor<B, 4>, index: &[usize]) -> Tensor<B, 4> {
    let device = x.device();
    let [n, c, h, w] = x.dims();
    let xs = HostFloats::new(x);
    fresh_tensor([n, index.len(), h, w], &device, |o| {
        select::select_planes(&xs, [n, c], h * w, index, o)
    })
}

fn merge_forward<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>, index: &[usize]) -> Tensor<B, 4> {
    let device = a.device();
    let ([n, ca, h, w], cb) = (a.dims(), b.dims()[1]);
    let (xa, xb) = (HostFloats::new(a), HostFloats::new(b));
    fresh_tensor([n, index.len(), h, w], &device, |o| {
        select::merge_planes(&xa, ca, &xb, cb, n, h * w, index, o)
    })
}

#[derive(Debug)]
struct MergeBackward;

impl<I: Backend> Backward<I, 2> for MergeBackward {
    /// Dims of both inputs and the selected channels of their concatenation.
    type State = ([usize; 4], [usize; 4], Arc<Vec<usize>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let grad: Tensor<I, 4> = from_float(grads.consume::<I>(&ops.node));
        if node_a.is_none() && node_b.is_none() {
            return;
        }
        let (da, db, index) = ops.state;
        let device = grad.device();
        let gs = HostFloats::new(grad);
        for (node, dims, offset) in [(node_a, da, 0), (node_b, db, da[1])] {
            if let Some(node) = node {
                let gx = scatter::<I>(&gs, &index, dims, offset, &device);
                grads.register::<I>(node.id, into_float(gx));
            }
        }
    }
}

/// The gradient of the input of shape `dims` whose channels start at `offset` among the
/// selected ones.
fn scatter<I: Backend>(
    grad: &[f32],
    index: &[usize],
    dims: [usize; 4],
    offset: usize,
    device: &I::Device,
) -> Tensor<I, 4> {
    let [n, c, h, w] = dims;
    let mut gx = vec![0f32; dims.iter().product()];
    select::scatter_planes(grad, index, [n, c], h * w, offset, &mut gx);
    tensor(gx, dims, device)
}

fn merge_autodiff<I: Backend>(
    a: Tensor<Autodiff<I>, 4>,
    b: Tensor<Autodiff<I>, 4>,
    index: &[usize],
) -> Tensor<Autodiff<I>, 4> {
    let (da, db) = (a.dims(), b.dims());
    let a = into_float(a);
    let b = into_float(b);
    let forward = |a, b| into_float(merge_forward::<I>(from_float(a), from_float(b), index));
    let out = match MergeBackward
        .prepare::<NoCheckpointing>([a.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (da, db, Arc::new(index.to_vec())),
            forward(a.primitive, b.primitive),
        ),
        OpsKind::UnTracked(prep) => prep.finish(forward(a.primitive, b.primitive)),
    };
    from_float(out)
}

#[derive(Debug)]
struct SelectBackward;

impl<I: Backend> Backward<I, 1> for SelectBackward {
    /// Input dims and the selected channels.
    type State = ([usize; 4], Arc<Vec<usize>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad: Tensor<I, 4> = from_float(grads.consume::<I>(&ops.node));
        let Some(node) = node else { return };
        let (dims, index) = ops.state;
        let device = grad.device();
        let gs = HostFloats::new(grad);
        grads.register::<I>(
            node.id,
            into_float(scatter::<I>(&gs, &index, dims, 0, &device)),
        );
    }
}

fn select_autodiff<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    index: &[usize],
) -> Tensor<Autodiff<I>, 4> {
    let dims = x.dims();
    step::unary(x, SelectBackward, |x, tracked| {
        let state = tracked.then(|| (dims, Arc::new(index.to_vec())));
        (select_forward(x, index), state)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::{Distribution, Tolerance};

    /// Values and input gradients of sum(select(x) * r) against `Tensor::select`.
    fn compare<B: burn::tensor::backend::AutodiffBackend>(dims: [usize; 4], index: &[usize]) {
        let dev = Default::default();
        let x = Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
        let out = [dims[0], index.len(), dims[2], dims[3]];
        let r = Tensor::<B, 4>::random(out, Distribution::Normal(0.0, 1.0), &dev);
        let ids: Vec<i64> = index.iter().map(|&i| i as i64).collect();
        let run = |fast: bool| {
            let x = x.clone().detach().require_grad();
            let y = if fast {
                select_channels(x.clone(), index)
            } else {
                let ids =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(ids.clone(), [ids.len()]), &dev);
                x.clone().select(1, ids)
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let (y1, g1) = run(true);
        let (y0, g0) = run(false);
        assert_eq!(y1.dims(), out);
        let tol = Tolerance::<f32>::absolute(1e-6);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        g1.into_data().assert_approx_eq(&g0.into_data(), tol);
    }

    #[test]
    fn matches_burn_select_and_its_gradient() {
        let _serial = crate::backward_lock();
        // a permutation, a subset, and repeated channels (gradients add up)
        compare::<Autodiff<Flex>>([2, 6, 3, 5], &[3, 0, 4, 1, 5, 2]);
        compare::<Autodiff<Flex>>([3, 8, 4, 4], &[7, 2]);
        compare::<Autodiff<Flex>>([1, 4, 2, 2], &[1, 1, 3, 1]);
        compare::<Autodiff<NdArray>>([2, 5, 1, 1], &[4, 3, 2, 1, 0]);
    }

    /// Values and gradients of both inputs of sum(merge(a, b) * r) against
    /// `cat` followed by `select`.
    fn compare_merge<B: burn::tensor::backend::AutodiffBackend>(
        a: [usize; 4],
        cb: usize,
        index: &[usize],
    ) {
        let dev = Default::default();
        let b_dims = [a[0], cb, a[2], a[3]];
        let xa = Tensor::<B, 4>::random(a, Distribution::Normal(0.0, 1.0), &dev);
        let xb = Tensor::<B, 4>::random(b_dims, Distribution::Normal(0.0, 1.0), &dev);
        let out = [a[0], index.len(), a[2], a[3]];
        let r = Tensor::<B, 4>::random(out, Distribution::Normal(0.0, 1.0), &dev);
        let run = |fast: bool| {
            let xa = xa.clone().detach().require_grad();
            let xb = xb.clone().detach().require_grad();
            let y = if fast {
                merge_channels(xa.clone(), xb.clone(), index)
            } else {
                burn_select(Tensor::cat(vec![xa.clone(), xb.clone()], 1), index)
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            (
                y.inner(),
                xa.grad(&grads).unwrap(),
                xb.grad(&grads).unwrap(),
            )
        };
        let (y1, ga1, gb1) = run(true);
        let (y0, ga0, gb0) = run(false);
        assert_eq!(y1.dims(), out);
        let tol = Tolerance::<f32>::absolute(1e-6);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        ga1.into_data().assert_approx_eq(&ga0.into_data(), tol);
        gb1.into_data().assert_approx_eq(&gb0.into_data(), tol);
    }

    #[test]
    fn merge_matches_cat_then_select_and_its_gradients() {
        let _serial = crate::backward_lock();
        // the split selector's shuffle of [ops (2) ; bypass (6)] with 4 groups
        compare_merge::<Autodiff<Flex>>([2, 2, 4, 4], 6, &[0, 2, 4, 6, 1, 3, 5, 7]);
        // stride-1 split without a bypass slice: b is the whole input, its first
        // channels unused (they get a zero gradient)
        compare_merge::<Autodiff<Flex>>([3, 2, 3, 5], 8, &[0, 4, 6, 8, 1, 5, 7, 9]);
        // repeats and a subset
        compare_merge::<Autodiff<NdArray>>([1, 3, 2, 2], 2, &[4, 4, 0]);
    }

    #[test]
    fn subsample_matches_the_generic_path_and_its_gradient() {
        let _serial = crate::backward_lock();
        type A = Autodiff<Flex>;
        type G = Autodiff<burn::backend::NdArray>;
        for dims in [[2, 3, 6, 6], [1, 2, 7, 5], [1, 1, 1, 1], [2, 2, 2, 3]] {
            for offset in [0, 1] {
                let dev = Default::default();
                let x = Tensor::<A, 4>::random(dims, Distribution::Normal(0.0, 1.0), &dev);
                let out = subsample_dims(dims, offset);
                let r = Tensor::<A, 4>::random(out, Distribution::Normal(0.0, 1.0), &dev);
                let x = x.require_grad();
                let y = subsample(x.clone(), offset);
                assert_eq!(y.dims(), out, "{dims:?} offset {offset}");
                let gx = x.grad(&(y.clone() * r.clone()).sum().backward()).unwrap();
                // independent reference: index arithmetic on the host values
                let xs: Vec<f32> = x.clone().into_data().to_vec().unwrap();
                let rs: Vec<f32> = r.clone().into_data().to_vec().unwrap();
                let [_, _, h, w] = dims;
                let [_, _, ho, wo] = out;
                let mut want_y = Vec::new();
                let mut want_g = vec![0f32; xs.len()];
                for p in 0..dims[0] * dims[1] {
                    for i in 0..ho {
                        for j in 0..wo {
                            let at = p * h * w + (offset + 2 * i) * w + offset + 2 * j;
                            want_y.push(xs[at]);
                            want_g[at] = rs[p * ho * wo + i * wo + j];
                        }
                    }
                }
                assert_eq!(y.into_data().to_vec::<f32>().unwrap(), want_y);
                assert_eq!(gx.into_data().to_vec::<f32>().unwrap(), want_g);
                // the generic (non-host) path gives the same values
                if out.iter().product::<usize>() > 0 {
                    let xg = Tensor::<G, 4>::from_data(
                        TensorData::new(xs.clone(), dims),
                        &Default::default(),
                    );
                    let generic = burn_subsample(xg, offset);
                    assert_eq!(generic.into_data().to_vec::<f32>().unwrap(), want_y);
                }
            }
        }
    }

    #[test]
    fn hand_made_planes() {
        // channel c of sample n holds the value 10 * n + c everywhere
        let dev = Default::default();
        let data: Vec<f32> = (0..2)
            .flat_map(|n| (0..3).flat_map(move |c| std::iter::repeat_n((10 * n + c) as f32, 4)))
            .collect();
        let x = Tensor::<Flex, 4>::from_data(TensorData::new(data, [2, 3, 2, 2]), &dev);
        let y: Vec<f32> = select_channels(x, &[2, 0]).into_data().to_vec().unwrap();
        let expect: Vec<f32> = [2.0, 0.0, 12.0, 10.0]
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v, 4))
            .collect();
        assert_eq!(y, expect);
    }
}
