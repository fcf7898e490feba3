//! Parameter counting as PyTorch reports it: learnable tensors only, BatchNorm running
//! statistics excluded (Burn's `num_params` counts them too).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};

struct Counter {
    path: Vec<String>,
    total: usize,
}

impl<B: Backend> ModuleVisitor<B> for Counter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let running = matches!(
            self.path.last().map(String::as_str),
            Some("running_mean" | "running_var")
        );
        if !running {
            self.total += param.shape().num_elements();
        }
    }
}

/// Number of learnable scalars in `module` (running statistics not counted).
pub fn count_parameters<B: Backend, M: Module<B>>(module: &M) -> usize {
    let mut c = Counter {
        path: vec![],
        total: 0,
    };
    module.visit(&mut c);
    c.total
}

struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Draws every lazily initialised parameter of `module` now, in visiting order.
///
/// Burn 0.21 keeps a fresh parameter uninitialised until its first use, and cloning an
/// uninitialised `Param` clones the *initialiser*: each clone then draws its own random
/// values from the global RNG on first use. A module cloned before its first forward
/// pass (the search's untracked copies of the supernet, the second-order unrolled copy)
/// would silently compute with other weights than the original. Every `init` in this
/// workspace calls this before returning.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Materialize);
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::nn::{Linear, LinearConfig};

    type B = NdArray<f32>;

    fn values(l: &Linear<B>) -> Vec<f32> {
        l.weight.val().into_data().to_vec().unwrap()
    }

    #[test]
    fn clones_of_a_materialized_module_share_its_values() {
        let device = Default::default();
        // Without materialize, two clones of a fresh layer draw different weights
        // (the hazard this helper exists for).
        let lazy = LinearConfig::new(8, 8).init::<B>(&device);
        let (a, b) = (lazy.clone(), lazy.clone());
        assert_ne!(values(&a), values(&b));
        let eager = LinearConfig::new(8, 8).init::<B>(&device);
        materialize(&eager);
        let (a, b) = (eager.clone(), eager.clone());
        assert_eq!(values(&a), values(&b));
        assert_eq!(values(&a), values(&eager));
    }
}
