//! One autodiff step around a host kernel with one tensor input.

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::{from_float, into_float};

/// Runs `forward(x, tracked)` on the inner backend as one autodiff step whose backward
/// pass is `step`; `forward` returns the output and, when `tracked`, the state `step`
/// needs (`None` otherwise, so an untracked step builds none).
///
/// # Panics
/// When `forward` returns no state for a tracked input: a bug of the caller.
pub fn unary<I: Backend, S: Backward<I, 1>>(
    x: Tensor<Autodiff<I>, 4>,
    step: S,
    forward: impl FnOnce(Tensor<I, 4>, bool) -> (Tensor<I, 4>, Option<S::State>),
) -> Tensor<Autodiff<I>, 4> {
    let x = into_float(x);
    let out = match step
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, state) = forward(from_float(x.primitive), true);
            prep.finish(
                state.expect("a tracked step keeps its state"),
                into_float(y),
            )
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(into_float(forward(from_float(x.primitive), false).0))
        }
    };
    from_float(out)
}
