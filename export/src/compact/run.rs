//! Running the compact network with Burn, and counting its parameters and MACs.

use super::*;

impl CompactNetwork {
    /// Number of weights and biases.
    pub fn parameters(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match &n.layer {
                Layer::Conv(c) => c.weight.len() + c.bias.as_ref().map_or(0, Vec::len),
                Layer::Gemm { weight, bias, .. } => weight.len() + bias.len(),
                _ => 0,
            })
            .sum()
    }

    /// Multiply-accumulates per image in convolutions and the classifier.
    pub fn macs(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match &n.layer {
                Layer::Conv(c) => {
                    let [out, per_group, kh, kw] = c.shape;
                    (out * per_group * kh * kw * n.shape[1] * n.shape[2]) as u64
                }
                Layer::Gemm {
                    inputs, outputs, ..
                } => (inputs * outputs) as u64,
                _ => 0,
            })
            .sum()
    }

    /// Runs the network with Burn (inference).
    ///
    /// # Shapes
    /// `[N, C, H, W]` (as `input_shape`) -> `[N, classes]`
    pub fn forward<B: Backend>(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let device = x.device();
        let mut values: Vec<Tensor<B, 4>> = vec![x];
        let mut logits = None;
        for node in &self.nodes {
            let arg = |i: usize| values[node.inputs[i]].clone();
            let y = match &node.layer {
                Layer::Conv(c) => {
                    let w = Tensor::from_data(TensorData::new(c.weight.clone(), c.shape), &device);
                    let b = c
                        .bias
                        .as_ref()
                        .map(|b| Tensor::from_data(TensorData::new(b.clone(), [b.len()]), &device));
                    let options =
                        ConvOptions::new([c.stride; 2], [c.padding; 2], [c.dilation; 2], c.groups);
                    conv2d(arg(0), w, b, options)
                }
                Layer::Relu => relu(arg(0)),
                Layer::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => max_pool2d(
                    arg(0),
                    [*kernel; 2],
                    [*stride; 2],
                    [*padding; 2],
                    [1, 1],
                    false,
                ),
                Layer::AvgPool {
                    kernel,
                    stride,
                    padding,
                } => avg_pool2d(
                    arg(0),
                    [*kernel; 2],
                    [*stride; 2],
                    [*padding; 2],
                    false,
                    false,
                ),
                Layer::Add => arg(0).add(arg(1)),
                Layer::Concat => {
                    Tensor::cat(node.inputs.iter().map(|&i| values[i].clone()).collect(), 1)
                }
                Layer::Shift => {
                    let [n, c, h, w] = arg(0).dims();
                    arg(0).slice([0..n, 0..c, 1..h, 1..w])
                }
                Layer::GlobalAveragePool => arg(0).mean_dim(3).mean_dim(2),
                Layer::Flatten => arg(0),
                Layer::Gemm {
                    weight,
                    bias,
                    inputs,
                    outputs,
                } => {
                    let [n, c, _, _] = arg(0).dims();
                    let w = Tensor::<B, 2>::from_data(
                        TensorData::new(weight.clone(), [*outputs, *inputs]),
                        &device,
                    );
                    let b = Tensor::<B, 2>::from_data(
                        TensorData::new(bias.clone(), [1, *outputs]),
                        &device,
                    );
                    let y = arg(0).reshape([n, c]).matmul(w.transpose()).add(b);
                    logits = Some(y.clone());
                    y.reshape([n, *outputs, 1, 1])
                }
            };
            values.push(y);
        }
        let n = values[0].dims()[0];
        logits.unwrap_or_else(|| Tensor::zeros([n, self.classes], &device))
    }
}
