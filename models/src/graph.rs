//! Joins the autodiff graphs of a module's parameters before a forward pass.
//!
//! Burn 0.21's autodiff gives every tracked parameter its own graph and merges
//! two graphs when an operation first combines them. The merge moves one graph's
//! bookkeeping (steps, node maps) into the other, and which one moves is
//! arbitrary, so half the time the large activation graph is copied into a
//! parameter's one-node graph. A forward pass meets every parameter once, so the
//! cost grows with parameters x graph size: 40% of a supernet step (1,400 weight
//! tensors) went there.
//!
//! [`tie_parameters`] merges all parameter graphs first, in one operation that has
//! every parameter as a parent (a concatenation of a one-element view of each), so
//! the forward pass then runs in a single graph and never merges. It must be one
//! operation: when Burn merges graph B into graph A it re-points B's own nodes to A
//! but not the origins of graphs B had absorbed earlier, so after chained or
//! pairwise merges most parameters still point at emptied graphs, and the forward
//! pass merges again at every parameter (measured on a chain of 3,200 1x1
//! convolutions: 1,050 us per convolution with pairwise merges, 400 us with none,
//! 13 us with the single merge). The returned tensor takes no part in the loss;
//! keep it alive until the loss is computed.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};

struct Collect<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if t.is_require_grad() {
            let n = t.shape().num_elements();
            if n > 0 {
                self.0.push(t.reshape([n]).slice([0..1]));
            }
        }
    }
}

/// See the module documentation. `None` without autodiff or tracked parameters.
pub fn tie_parameters<B: Backend, M: Module<B>>(
    module: &M,
    device: &B::Device,
) -> Option<Tensor<B, 1>> {
    if !B::ad_enabled(device) {
        return None;
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    if collect.0.is_empty() {
        return None;
    }
    // One operation with every parameter as a parent merges all their graphs into
    // one in a single step (see the module documentation).
    Some(Tensor::cat(collect.0, 0))
}
