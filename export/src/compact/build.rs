//! Builder of the compact network: one method per layer kind, with the shape checks.

use super::*;

pub(super) struct Builder {
    pub(super) nodes: Vec<Node>,
    pub(super) shapes: Vec<Vec<usize>>,
    pub(super) names: Vec<String>,
    pub(super) relus: HashMap<ValueId, ValueId>,
}

impl Builder {
    pub(super) fn push(
        &mut self,
        name: String,
        layer: Layer,
        inputs: Vec<ValueId>,
        shape: Vec<usize>,
    ) -> ValueId {
        self.names.push(name.clone());
        self.shapes.push(shape.clone());
        self.nodes.push(Node {
            name,
            layer,
            inputs,
            shape,
        });
        self.nodes.len()
    }

    pub(super) fn chw(&self, v: ValueId) -> [usize; 3] {
        let s = &self.shapes[v];
        [s[0], s[1], s[2]]
    }

    /// ReLU of `v`, one node per value however many ops read it.
    pub(super) fn relu(&mut self, v: ValueId) -> ValueId {
        if let Some(&r) = self.relus.get(&v) {
            return r;
        }
        let name = format!("{}/relu", self.names[v]);
        let shape = self.shapes[v].clone();
        let r = self.push(name, Layer::Relu, vec![v], shape);
        self.relus.insert(v, r);
        r
    }

    /// A convolution from Burn weights, optionally with the BatchNorm after it folded in.
    pub(super) fn conv<B: Backend>(
        &mut self,
        name: String,
        x: ValueId,
        conv: &Conv2d<B>,
        bn: Option<&BatchNorm2d<B>>,
        shape: ConvShape,
    ) -> Result<ValueId, CompactError> {
        let host = host_conv(conv);
        let host = match bn {
            Some(bn) => fold_batch_norm(&host, &host_batch_norm(bn)).map_err(|source| {
                CompactError::Fold {
                    node: name.clone(),
                    source,
                }
            })?,
            None => host,
        };
        self.conv_host(name, x, host, bn.is_some(), shape)
    }

    pub(super) fn conv_host(
        &mut self,
        name: String,
        x: ValueId,
        host: HostConv,
        bias: bool,
        s: ConvShape,
    ) -> Result<ValueId, CompactError> {
        let [c, h, w] = self.chw(x);
        let groups = if s.depthwise { c } else { 1 };
        let expected = [s.out.unwrap_or(c), c / groups, s.kernel, s.kernel];
        if host.shape != expected || host.weight.len() != expected.iter().product::<usize>() {
            return Err(CompactError::Shape {
                node: name,
                expected: expected.to_vec(),
                found: host.shape.to_vec(),
            });
        }
        let span = s.dilation * (s.kernel - 1) + 1;
        let side = |n: usize| (n + 2 * s.padding).saturating_sub(span) / s.stride + 1;
        let shape = vec![expected[0], side(h), side(w)];
        let layer = Layer::Conv(ConvLayer {
            weight: host.weight,
            shape: expected,
            bias: bias.then_some(host.bias),
            stride: s.stride,
            padding: s.padding,
            dilation: s.dilation,
            groups,
        });
        Ok(self.push(name, layer, vec![x], shape))
    }

    /// ReLU, convolution, folded BatchNorm.
    pub(super) fn relu_conv_bn<B: Backend>(
        &mut self,
        name: &str,
        x: ValueId,
        m: &ReluConvBn<B>,
        out: usize,
    ) -> Result<ValueId, CompactError> {
        let r = self.relu(x);
        let kernel = m.conv.weight.shape().dims::<4>()[2];
        let shape = ConvShape::dense(out, kernel, 1, 0);
        self.conv(format!("{name}/conv"), r, &m.conv, Some(&m.bn), shape)
    }

    /// ReLU, two 1x1 stride-2 convolutions (the second on the shifted input), concat; the
    /// BatchNorm over the concatenation folds into the two halves.
    pub(super) fn factorized_reduce<B: Backend>(
        &mut self,
        name: &str,
        x: ValueId,
        m: &FactorizedReduce<B>,
        out: usize,
    ) -> Result<ValueId, CompactError> {
        let r = self.relu(x);
        let bn = host_batch_norm(&m.bn);
        let half = out / 2;
        let part = |lo: usize, hi: usize| {
            let cut = |v: &Vec<f32>| v.get(lo..hi).map(<[f32]>::to_vec);
            let structure = || CompactError::Structure(format!("{name}/bn"));
            Ok::<_, CompactError>(crate::fold::HostBatchNorm {
                gamma: bn
                    .gamma
                    .as_ref()
                    .map(|g| cut(g).ok_or_else(structure))
                    .transpose()?,
                beta: bn
                    .beta
                    .as_ref()
                    .map(|b| cut(b).ok_or_else(structure))
                    .transpose()?,
                mean: cut(&bn.mean).ok_or_else(structure)?,
                var: cut(&bn.var).ok_or_else(structure)?,
                epsilon: bn.epsilon,
            })
        };
        let mut branches = vec![];
        for (i, (conv, lo, hi, input)) in
            [(&m.conv1, 0, half, r), (&m.conv2, half, out, usize::MAX)]
                .into_iter()
                .enumerate()
        {
            let input = if input == usize::MAX {
                let [c, h, w] = self.chw(r);
                self.push(
                    format!("{name}/shift"),
                    Layer::Shift,
                    vec![r],
                    vec![c, h.saturating_sub(1), w.saturating_sub(1)],
                )
            } else {
                input
            };
            let node = format!("{name}/conv{}", i + 1);
            let folded = fold_batch_norm(&host_conv(conv), &part(lo, hi)?).map_err(|source| {
                CompactError::Fold {
                    node: node.clone(),
                    source,
                }
            })?;
            branches.push(self.conv_host(
                node,
                input,
                folded,
                true,
                ConvShape::dense(hi - lo, 1, 2, 0),
            )?);
        }
        let [_, h, w] = self.chw(branches[0]);
        if self.chw(branches[1])[1..] != [h, w] {
            return Err(CompactError::Structure(format!(
                "{name}: odd input side {} (FactorizedReduce needs an even one)",
                self.chw(r)[1]
            )));
        }
        Ok(self.push(
            format!("{name}/concat"),
            Layer::Concat,
            branches,
            vec![out, h, w],
        ))
    }

    /// One edge op; None for `none`.
    pub(super) fn edge<B: Backend>(
        &mut self,
        name: &str,
        x: ValueId,
        op: &Op<B>,
        primitive: Primitive,
    ) -> Result<Option<ValueId>, CompactError> {
        let [c, h, w] = self.chw(x);
        let pooled = |s: usize| vec![c, (h - 1) / s + 1, (w - 1) / s + 1];
        let mismatch = || CompactError::Structure(format!("{name}: op {op:?}"));
        Ok(Some(match (op, primitive) {
            (Op::Zero(_), Primitive::None) => return Ok(None),
            (Op::MaxPool(s), Primitive::MaxPool3x3) => self.push(
                name.to_string(),
                Layer::MaxPool {
                    kernel: 3,
                    stride: *s,
                    padding: 1,
                },
                vec![x],
                pooled(*s),
            ),
            (Op::AvgPool(s), Primitive::AvgPool3x3) => self.push(
                name.to_string(),
                Layer::AvgPool {
                    kernel: 3,
                    stride: *s,
                    padding: 1,
                },
                vec![x],
                pooled(*s),
            ),
            (Op::Identity(_), Primitive::SkipConnect) => x,
            (Op::Reduce(m), Primitive::SkipConnect) => self.factorized_reduce(name, x, m, c)?,
            (Op::Sep(m), Primitive::SepConv3x3 | Primitive::SepConv5x5) => {
                let k = kernel(primitive);
                let s = sep_stride(&m.dw1);
                let r = self.relu(x);
                let d = self.conv(
                    format!("{name}/dw1"),
                    r,
                    &m.dw1,
                    None,
                    ConvShape::depthwise(k, s, k / 2, 1),
                )?;
                let p = self.conv(
                    format!("{name}/pw1"),
                    d,
                    &m.pw1,
                    Some(&m.bn1),
                    ConvShape::dense(c, 1, 1, 0),
                )?;
                let r = self.relu(p);
                let d = self.conv(
                    format!("{name}/dw2"),
                    r,
                    &m.dw2,
                    None,
                    ConvShape::depthwise(k, 1, k / 2, 1),
                )?;
                self.conv(
                    format!("{name}/pw2"),
                    d,
                    &m.pw2,
                    Some(&m.bn2),
                    ConvShape::dense(c, 1, 1, 0),
                )?
            }
            (Op::Dil(m), Primitive::DilConv3x3 | Primitive::DilConv5x5) => {
                let k = kernel(primitive);
                let s = sep_stride(&m.dw);
                let r = self.relu(x);
                let d = self.conv(
                    format!("{name}/dw"),
                    r,
                    &m.dw,
                    None,
                    ConvShape::depthwise(k, s, (k / 2) * 2, 2),
                )?;
                self.conv(
                    format!("{name}/pw"),
                    d,
                    &m.pw,
                    Some(&m.bn),
                    ConvShape::dense(c, 1, 1, 0),
                )?
            }
            _ => return Err(mismatch()),
        }))
    }

    pub(super) fn cell<B: Backend>(
        &mut self,
        index: usize,
        s0: ValueId,
        s1: ValueId,
        cell: &Cell<B>,
        genotype: &CellGenotype,
        c: usize,
    ) -> Result<ValueId, CompactError> {
        let prefix = format!("cell{index}");
        let inputs: Vec<usize> = genotype.edges.iter().map(|e| e.1).collect();
        if cell.ops.len() != genotype.edges.len()
            || cell.inputs != inputs
            || cell.concat != genotype.concat
        {
            return Err(CompactError::Structure(format!(
                "{prefix}: the weights have edges from states {:?} and concat {:?}, the genotype {:?} and {:?}",
                cell.inputs, cell.concat, inputs, genotype.concat
            )));
        }
        let p0 = match &cell.preprocess0 {
            Preprocess::Reduce(m) => self.factorized_reduce(&format!("{prefix}/pre0"), s0, m, c)?,
            Preprocess::Conv(m) => self.relu_conv_bn(&format!("{prefix}/pre0"), s0, m, c)?,
        };
        let p1 = self.relu_conv_bn(&format!("{prefix}/pre1"), s1, &cell.preprocess1, c)?;
        let mut states = vec![p0, p1];
        for (j, (ops, edges)) in cell.ops.chunks(2).zip(genotype.edges.chunks(2)).enumerate() {
            let mut outs = vec![];
            for (e, (op, &(primitive, input))) in ops.iter().zip(edges).enumerate() {
                let x = *states.get(input).ok_or_else(|| {
                    CompactError::Structure(format!("{prefix}/node{j}/edge{e}: input {input}"))
                })?;
                let name = format!("{prefix}/node{j}/edge{e}/{}", primitive.name());
                if let Some(v) = self.edge(&name, x, op, primitive)? {
                    outs.push(v);
                }
            }
            let node = match outs[..] {
                [] => return Err(CompactError::AllNone(format!("{prefix}/node{j}"))),
                [v] => v,
                [a, b] => {
                    let shape = self.shapes[a].clone();
                    if self.shapes[b] != shape {
                        return Err(CompactError::Structure(format!("{prefix}/node{j}")));
                    }
                    self.push(
                        format!("{prefix}/node{j}/add"),
                        Layer::Add,
                        vec![a, b],
                        shape,
                    )
                }
                _ => return Err(CompactError::Structure(format!("{prefix}/node{j}"))),
            };
            states.push(node);
        }
        let parts: Vec<ValueId> = genotype.concat.iter().map(|&i| states[i]).collect();
        let out = if parts.len() == 1 {
            parts[0]
        } else {
            let [_, h, w] = self.chw(parts[0]);
            let channels = parts.iter().map(|&p| self.chw(p)[0]).sum();
            self.push(
                format!("{prefix}/concat"),
                Layer::Concat,
                parts,
                vec![channels, h, w],
            )
        };
        let Some(shortcut) = &cell.shortcut else {
            return Ok(out);
        };
        let out_c = self.chw(out)[0];
        let sc = match shortcut {
            Shortcut::Plain(_) => s1,
            Shortcut::Reduce(m) => {
                self.factorized_reduce(&format!("{prefix}/identity"), s1, m, out_c)?
            }
            Shortcut::Project(m) => {
                self.relu_conv_bn(&format!("{prefix}/identity"), s1, m, out_c)?
            }
        };
        let shape = self.shapes[out].clone();
        if self.shapes[sc] != shape {
            return Err(CompactError::Structure(format!("{prefix}/identity")));
        }
        Ok(self.push(
            format!("{prefix}/identity/add"),
            Layer::Add,
            vec![out, sc],
            shape,
        ))
    }
}

/// Kernel side of a separable or dilated convolution primitive.
fn kernel(p: Primitive) -> usize {
    match p {
        Primitive::SepConv5x5 | Primitive::DilConv5x5 => 5,
        _ => 3,
    }
}

fn sep_stride<B: Backend>(conv: &Conv2d<B>) -> usize {
    conv.stride[0]
}

#[derive(Clone, Copy)]
pub(super) struct ConvShape {
    pub(super) out: Option<usize>,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) dilation: usize,
    pub(super) depthwise: bool,
}

impl ConvShape {
    pub(super) fn dense(out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            out: Some(out),
            kernel,
            stride,
            padding,
            dilation: 1,
            depthwise: false,
        }
    }
    pub(super) fn depthwise(kernel: usize, stride: usize, padding: usize, dilation: usize) -> Self {
        Self {
            out: None,
            kernel,
            stride,
            padding,
            dilation,
            depthwise: true,
        }
    }
}
