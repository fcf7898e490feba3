//! From the loaded graph to an int8 [`Program`]: the graph's nodes in file order, each
//! either folded at load time (constants: quantized weights, shape arithmetic), or matched
//! to an int8 op, or the reason the model stays on the float path.
//!
//! The walk keeps two maps: `ints`, the run-time int8 tensors (QuantizeLinear outputs)
//! and the engine value holding them, and `deq`, the float tensors that are exact
//! dequantizations of an engine value (DequantizeLinear outputs, and layout ops on them),
//! with their quantization. An arithmetic node (Conv, Gemm, MatMul, Relu, Add, pools,
//! Concat, BatchNormalization, Mul / Add by a constant) reads `deq` tensors and must be
//! read by exactly one QuantizeLinear, whose parameters become the op's output
//! quantization; layout ops (Reshape, Flatten, Identity, Slice, Pad, MaxPool) keep the
//! input's quantization, and the QuantizeLinear after them is a copy or a requantization.
//! A ReLU of unchanged quantization whose input only a convolution, Gemm or Add writes
//! is fused into it (the output clamped at the zero point).

use super::{Op, Program};
use crate::ops::quant::params;
use crate::ops::{Ctx, Known, Node};
use crate::value::{Const, Dim, QType};
use burn::tensor::backend::Backend;
use onnx_protobuf::{GraphProto, NodeProto};
use splitnas_host::kernels::int8::Quant;
use std::collections::HashMap;

/// The lowering's state (see the module doc).
pub(super) struct Lower<'a, 'd, B: Backend> {
    pub cx: &'a Ctx<'d, B>,
    pub nodes: &'a [NodeProto],
    /// Node index writing each tensor.
    pub producer: HashMap<&'a str, usize>,
    /// Node indices reading each tensor (once per read).
    pub readers: HashMap<&'a str, Vec<usize>>,
    pub outputs: Vec<&'a str>,
    pub ints: HashMap<String, usize>,
    pub deq: HashMap<String, (usize, Quant)>,
    pub sizes: Vec<usize>,
    /// The ONNX tensor name of each value (empty until an emitted op names it).
    pub names: Vec<String>,
    pub ops: Vec<Op>,
}

/// `node 'NAME' (Op): why`.
pub(super) fn bad(n: &Node, why: impl std::fmt::Display) -> String {
    format!("node '{}' ({}): {why}", n.name(), n.proto.op_type)
}

/// Lowers the graph `cx` was built from, or says which node keeps it on the float path.
pub(crate) fn lower<B: Backend>(
    cx: &Ctx<'_, B>,
    graph: &GraphProto,
    input: &str,
) -> Result<Program, String> {
    let mut producer = HashMap::new();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            producer.insert(o.as_str(), i);
        }
        for x in &n.input {
            readers.entry(x.as_str()).or_default().push(i);
        }
    }
    let mut l = Lower {
        cx,
        nodes: &graph.node,
        producer,
        readers,
        outputs: graph.output.iter().map(|o| o.name.as_str()).collect(),
        ints: HashMap::new(),
        deq: HashMap::new(),
        sizes: vec![],
        names: vec![],
        ops: vec![],
    };
    let input_size = l.dims(input)?.iter().product();
    for proto in &graph.node {
        l.node(&Node { proto }, input)?;
    }
    let out = graph.output.first().map_or("", |o| o.name.as_str());
    let output = *l
        .deq
        .get(out)
        .ok_or_else(|| format!("output '{out}' is not a DequantizeLinear of an int8 tensor"))?;
    let mut ops = l.ops;
    fuse_relus(&mut ops, output.0);
    let free = last_reads(&ops, l.sizes.len(), output.0);
    Ok(Program {
        ops,
        sizes: l.sizes,
        input: input_size,
        output,
        free,
        names: l.names,
    })
}

impl<'a, B: Backend> Lower<'a, '_, B> {
    /// A new engine value of `size` elements per image.
    pub fn value(&mut self, size: usize) -> usize {
        self.sizes.push(size);
        self.names.push(String::new());
        self.sizes.len() - 1
    }

    /// Per-image dimensions of run-time tensor `name` (its shape after the batch).
    pub fn dims(&self, name: &str) -> Result<Vec<usize>, String> {
        let not = || format!("'{name}' is not a batch of fixed-size images");
        match self.cx.known.get(name) {
            Some(Known::Value(_, s)) if s.first() == Some(&Dim::Batch) => s[1..]
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => Ok(*v),
                    Dim::Batch => Err(not()),
                })
                .collect(),
            _ => Err(not()),
        }
    }

    /// The per-tensor quantization of a Q or DQ node (input type `x_ty` for DQ), its zero
    /// point as i8 (uint8 codes are stored as `q - 128`, see `quant::u8_to_i8`).
    pub fn quant(&self, n: &Node, x_ty: Option<QType>) -> Result<Quant, String> {
        let shape = match self.cx.get(n, 0).map_err(|e| e.to_string())? {
            Known::Value(_, s) => s.clone(),
            Known::Const(c) => c.dims().iter().map(|&d| Dim::Fixed(d)).collect(),
        };
        let p = params(self.cx, n, &shape, x_ty).map_err(|e| e.to_string())?;
        if p.axis.is_some() {
            return Err(bad(n, "per-axis quantization of an activation"));
        }
        let zero = match p.ty {
            QType::I8 => p.zero[0] as i8,
            QType::U8 => (p.zero[0] - 128) as i8,
            QType::I32 => return Err(bad(n, "an int32 activation")),
        };
        Ok(Quant::new(p.scale[0], zero))
    }

    /// Input `i` of `n` as a dequantized engine value.
    pub fn deq_in(&self, n: &Node, i: usize) -> Result<(usize, Quant), String> {
        let name = n.input(i).unwrap_or("");
        self.deq.get(name).copied().ok_or_else(|| {
            bad(
                n,
                format!("input '{name}' is not a dequantized int8 tensor"),
            )
        })
    }

    /// The one QuantizeLinear reading `n`'s output (its output name and quantization),
    /// None when the output has other readers or is a graph output.
    pub fn out_q(&self, n: &Node) -> Option<(String, Quant)> {
        let out = n.proto.output.first()?.as_str();
        if self.outputs.contains(&out) {
            return None;
        }
        let [r] = self.readers.get(out)?[..] else {
            return None;
        };
        let q = &self.nodes[r];
        if q.op_type != "QuantizeLinear" || q.input.first().map(String::as_str) != Some(out) {
            return None;
        }
        let quant = self.quant(&Node { proto: q }, None).ok()?;
        Some((q.output.first()?.clone(), quant))
    }

    /// [`Self::out_q`] or the reason the node cannot run in int8.
    pub fn need_out_q(&self, n: &Node) -> Result<(String, Quant), String> {
        self.out_q(n)
            .ok_or_else(|| bad(n, "its output is not read by exactly one QuantizeLinear"))
    }

    /// Emits `op` writing a new value for the QuantizeLinear `q` (an arithmetic node).
    pub(super) fn emit_q(&mut self, q: String, op: Op) {
        self.names[op.out()].clone_from(&q);
        self.ints.insert(q, op.out());
        self.ops.push(op);
    }

    /// Emits `op`, a layout op whose output `out` keeps the quantization `xq`.
    pub(super) fn emit_deq(&mut self, n: &Node, op: Op, xq: Quant) {
        let out = n.proto.output[0].clone();
        self.names[op.out()].clone_from(&out);
        self.deq.insert(out, (op.out(), xq));
        self.ops.push(op);
    }

    fn node(&mut self, n: &Node, input: &str) -> Result<(), String> {
        let Some(out) = n.proto.output.first().filter(|o| !o.is_empty()) else {
            return Ok(());
        };
        match self.cx.known.get(out.as_str()) {
            Some(Known::Const(_)) => return Ok(()),
            Some(Known::Value(..)) => {}
            None => return Err(bad(n, "output unknown")),
        }
        if self.ints.contains_key(out) {
            // the QuantizeLinear of an arithmetic node, lowered with it
            return Ok(());
        }
        let x = n.input(0).unwrap_or("");
        match n.proto.op_type.as_str() {
            "QuantizeLinear" => {
                let q = self.quant(n, None)?;
                if x == input {
                    let y = self.value(self.dims(out)?.iter().product());
                    self.emit_q(out.clone(), Op::Quantize { y, q });
                } else {
                    let (x, xq) = self.deq_in(n, 0)?;
                    if xq == q {
                        self.ints.insert(out.clone(), x);
                    } else {
                        let y = self.value(self.sizes[x]);
                        let op = Op::Requant {
                            x,
                            y,
                            xq,
                            yq: q,
                            relu: false,
                        };
                        self.emit_q(out.clone(), op);
                    }
                }
            }
            "DequantizeLinear" => {
                let (&id, ty) = match (self.ints.get(x), self.cx.known.get(x)) {
                    (Some(id), Some(Known::Value(v, _))) => (id, self.cx.int_values.get(v)),
                    _ => return Err(bad(n, format!("'{x}' is not a run-time int8 tensor"))),
                };
                let q = self.quant(n, ty.copied())?;
                self.deq.insert(out.clone(), (id, q));
            }
            "Identity" | "Dropout" | "Flatten" | "Reshape" | "Unsqueeze" => {
                self.dims(out)?;
                if let Some(&v) = self.ints.get(x) {
                    self.ints.insert(out.clone(), v);
                } else {
                    let d = self.deq_in(n, 0)?;
                    self.deq.insert(out.clone(), d);
                }
            }
            "Relu" => {
                let (x, xq) = self.deq_in(n, 0)?;
                let y = self.value(self.sizes[x]);
                match self.out_q(n) {
                    Some((q, yq)) => {
                        let op = Op::Requant {
                            x,
                            y,
                            xq,
                            yq,
                            relu: true,
                        };
                        self.emit_q(q, op)
                    }
                    None => {
                        let op = Op::Requant {
                            x,
                            y,
                            xq,
                            yq: xq,
                            relu: true,
                        };
                        self.emit_deq(n, op, xq)
                    }
                }
            }
            "Conv" => self.conv(n)?,
            "Gemm" => self.gemm(n)?,
            "MatMul" => self.matmul(n)?,
            "MaxPool" | "AveragePool" => self.pool(n)?,
            "GlobalAveragePool" | "ReduceMean" => self.global_pool(n)?,
            "Add" | "Mul" => self.binary(n)?,
            "BatchNormalization" => self.batch_norm(n)?,
            "Concat" => self.concat(n)?,
            "Slice" => self.slice(n)?,
            "Pad" => self.pad(n)?,
            op => return Err(bad(n, format!("{op} has no int8 form"))),
        }
        Ok(())
    }

    /// Add of two dequantized tensors of one shape, or Add / Mul with a constant that is
    /// a scalar or per channel (a float op between DQ and Q: [`Op::Affine`]).
    fn binary(&mut self, n: &Node) -> Result<(), String> {
        let (a, b) = (n.input(0).unwrap_or(""), n.input(1).unwrap_or(""));
        let add = n.proto.op_type == "Add";
        let (q, yq) = self.need_out_q(n)?;
        if let (Some(&(ia, qa)), Some(&(ib, qb))) = (self.deq.get(a), self.deq.get(b)) {
            if !add || self.dims(a)? != self.dims(b)? {
                return Err(bad(
                    n,
                    "operands of different shapes, or a product of two tensors",
                ));
            }
            let y = self.value(self.sizes[ia]);
            let op = Op::Add {
                a: ia,
                b: ib,
                y,
                q: [qa, qb, yq],
                relu: false,
            };
            self.emit_q(q, op);
            return Ok(());
        }
        let (x, c) = if self.deq.contains_key(a) {
            (a, b)
        } else {
            (b, a)
        };
        let xd = self.dims(x)?;
        if xd.is_empty() {
            return Err(bad(n, "an operand without channels"));
        }
        let Some(Known::Const(Const::F32 { dims, data })) = self.cx.known.get(c) else {
            return Err(bad(
                n,
                "an operand that is neither dequantized nor a float constant",
            ));
        };
        let per = per_channel(dims, data, xd.len() + 1, xd[0])
            .ok_or_else(|| bad(n, format!("constant '{c}' is not a scalar or per channel")))?;
        let (mul, shift) = if add {
            (vec![1.0; per.len()], per)
        } else {
            (per, vec![0.0; xd[0]])
        };
        let (x, xq) = self.deq[x];
        self.affine(q, x, [xq, yq], &xd, mul, shift);
        Ok(())
    }

    /// Emits an [`Op::Affine`] for the QuantizeLinear `q`.
    fn affine(
        &mut self,
        q: String,
        x: usize,
        qs: [Quant; 2],
        xd: &[usize],
        a: Vec<f32>,
        b: Vec<f32>,
    ) {
        let inner = xd[1..].iter().product();
        let y = self.value(self.sizes[x]);
        self.emit_q(
            q,
            Op::Affine {
                x,
                y,
                q: qs,
                inner,
                a,
                b,
            },
        );
    }

    /// BatchNormalization as the float path runs it: `x scale + shift` per channel.
    fn batch_norm(&mut self, n: &Node) -> Result<(), String> {
        let (x, xq) = self.deq_in(n, 0)?;
        let xd = self.dims(n.input(0).unwrap_or(""))?;
        if xd.is_empty() {
            return Err(bad(n, "an input without channels"));
        }
        let (q, yq) = self.need_out_q(n)?;
        let eps = n.float("epsilon", 1e-5).map_err(|e| e.to_string())?;
        let mut p = vec![];
        for i in 1..5 {
            match self.cx.get(n, i) {
                Ok(Known::Const(Const::F32 { data, .. })) if data.len() == xd[0] => p.push(data),
                _ => {
                    return Err(bad(
                        n,
                        "parameters that are not per-channel float constants",
                    ))
                }
            }
        }
        // the float path's formulas (ops::nn::batch_norm), so both give the same codes
        let c = xd[0];
        let scale: Vec<f32> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
        let shift: Vec<f32> = (0..c).map(|i| p[1][i] - p[2][i] * scale[i]).collect();
        self.affine(q, x, [xq, yq], &xd, scale, shift);
        Ok(())
    }
}

/// A constant broadcast against a tensor of rank `rank` with `c` channels (axis 1) as
/// one value per channel, None when it varies along another axis.
fn per_channel(dims: &[usize], data: &[f32], rank: usize, c: usize) -> Option<Vec<f32>> {
    if dims.len() > rank {
        return None;
    }
    let mut full = vec![1; rank - dims.len()];
    full.extend_from_slice(dims);
    let ok = full
        .iter()
        .enumerate()
        .all(|(i, &d)| d == 1 || (i == 1 && d == c));
    match (ok, data.len()) {
        (true, 1) => Some(vec![data[0]; c]),
        (true, l) if l == c => Some(data.to_vec()),
        _ => None,
    }
}

/// Folds each ReLU ([`Op::Requant`] with `relu`) that keeps its input's quantization,
/// and whose input only a convolution, dense layer or Add writes, into that op: it writes
/// the ReLU's output directly, clamped at the zero point (the same codes). A ReLU of other
/// output parameters stays a requantization: fused, the op's output would skip the
/// rounding to its own scale that the file (and onnxruntime) performs.
fn fuse_relus(ops: &mut Vec<Op>, output: usize) {
    let mut reads: HashMap<usize, usize> = HashMap::new();
    let mut producer = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        for v in op.inputs() {
            *reads.entry(v).or_default() += 1;
        }
        producer.insert(op.out(), i);
    }
    let mut gone = vec![false; ops.len()];
    for i in 0..ops.len() {
        let Op::Requant {
            x,
            y,
            xq,
            yq,
            relu: true,
        } = ops[i]
        else {
            continue;
        };
        let Some(&j) = producer.get(&x) else { continue };
        if x == output || reads.get(&x) != Some(&1) || xq != yq {
            continue;
        }
        match &mut ops[j] {
            Op::Dense(d) if !d.relu && d.out == xq => {
                d.set_out(yq, true);
                d.y = y;
            }
            Op::Add { y: ay, q, relu, .. } if !*relu && q[2] == xq => {
                q[2] = yq;
                *relu = true;
                *ay = y;
            }
            _ => continue,
        }
        gone[i] = true;
    }
    let mut i = 0;
    ops.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
}

/// For each op, the values it reads for the last time (never `output`).
fn last_reads(ops: &[Op], values: usize, output: usize) -> Vec<Vec<usize>> {
    let mut last = vec![None; values];
    for (i, op) in ops.iter().enumerate() {
        for v in op.inputs() {
            last[v] = Some(i);
        }
    }
    let mut free = vec![vec![]; ops.len()];
    for (v, l) in last.iter().enumerate() {
        if let Some(i) = l.filter(|_| v != output) {
            free[i].push(v);
        }
    }
    free
}
