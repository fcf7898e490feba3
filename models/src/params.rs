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
