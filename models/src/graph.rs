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
//! [`tie_parameters`] merges all parameter graphs first, pairwise in a balanced
//! tree while they are small (a one-element view of each parameter, summed), so
//! the forward pass then runs in a single graph and never merges. The returned
//! scalar takes no part in the loss; keep it alive until the loss is computed.

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
    let mut level = collect.0;
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut it = level.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => a + b,
                None => a,
            });
        }
        level = next;
    }
    level.pop()
}
