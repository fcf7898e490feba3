//! The QDQ rewrite: a float graph (BatchNorm already folded) and the int8 parameters of its
//! run-time tensors -> the QDQ graph of the file format `splitnas quantize` writes.
//!
//! - The image input `x` is followed by `QuantizeLinear(x) -> t0q`, `DequantizeLinear ->
//!   t0d`; every run-time float tensor a node writes (renamed `tK`) gets one pair `tKq`,
//!   `tKd` on the scalar initializers `tKs` (float) and `tKz` (int8), shared by Q and DQ;
//!   every reader of the tensor reads `tKd`, a graph output keeps its name on its DQ.
//! - MaxPool, Slice, Flatten, Reshape, Identity, Dropout, Relu and zero Pad outputs share
//!   their input's `s` / `z` (exact in int8, see [`SHARED`]).
//! - Conv weights, Gemm `B` and MatMul's constant `B`: int8 per output channel through
//!   `DequantizeLinear(wK, wKs)` (no zero point); Conv and Gemm biases int32 on the scale
//!   `s_x * s_w[c]` through `DequantizeLinear(bK, bKs)`.
//! - Other tensors (shape arithmetic, float constants) are copied under short names; node
//!   names, doc strings and value_info are dropped.

use super::calibrate::QParams;
use super::graph::{attr_float, attr_int, display, f32_tensor, i32_tensor, i8_tensor, node};
use super::weights::{quantize_bias, quantize_weights};
use super::QuantizeError;
use onnx_protobuf::{GraphProto, NodeProto, TensorProto};
use std::collections::HashMap;

/// Operators whose output takes its input's scale and zero point: every output value is
/// an input value (or 0, which is exact), so the int8 result is exact. A ReLU's own
/// `[0, hi]` scale would only re-round values already on its input's grid (measured on a
/// trained DARTS_V2 C=8 L=5: 0.04 to 2.5 points of accuracy lost that way).
pub const SHARED: [&str; 7] = [
    "MaxPool", "Slice", "Flatten", "Reshape", "Identity", "Dropout", "Relu",
];

/// Whether `n`'s output shares its input's scale: [`SHARED`], and Pad without a
/// constant value input (pads with 0, or repeats input values).
pub fn shares_scale(n: &NodeProto) -> bool {
    SHARED.contains(&n.op_type.as_str())
        || (n.op_type == "Pad" && n.input.get(2).is_none_or(|v| v.is_empty()))
}

/// What the rewrite produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Counts {
    pub activations: usize,
    pub scales: usize,
    pub weights: usize,
    pub biases: usize,
    pub biases_clamped: usize,
}

/// What input `i` of `n` is to the rewrite.
enum Role {
    /// A weight quantized per channel along this axis.
    Weight(usize),
    /// A bias on the accumulator's scale.
    Bias,
    /// Anything else.
    Plain,
}

fn role(n: &NodeProto, i: usize) -> Role {
    let gemm_plain_bias = attr_float(n, "alpha", 1.0) != 1.0 || attr_float(n, "beta", 1.0) != 1.0;
    match (n.op_type.as_str(), i) {
        ("Conv", 1) => Role::Weight(0),
        ("Conv", 2) => Role::Bias,
        ("Gemm", 1) if attr_int(n, "transB", 0) != 0 => Role::Weight(0),
        ("Gemm", 1) => Role::Weight(1),
        ("Gemm", 2) if !gemm_plain_bias => Role::Bias,
        ("MatMul", 1) => Role::Weight(1),
        _ => Role::Plain,
    }
}

/// Whether `rest` looks like a name this module generates (`t12`, `w3s`, ...).
fn generated_like(rest: &str) -> bool {
    let mut chars = rest.chars();
    if !matches!(chars.next(), Some('t' | 'w' | 'b' | 'c')) {
        return false;
    }
    let tail: String = chars.collect();
    let digits = tail.trim_end_matches(['q', 'd', 's', 'z']);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && tail.len() <= digits.len() + 1
}

struct Writer<'a> {
    src: &'a GraphProto,
    inits: HashMap<&'a str, &'a TensorProto>,
    params: &'a HashMap<String, QParams>,
    /// The tensor whose scale a run-time tensor shares (absent: its own).
    rep: HashMap<String, String>,
    prefix: String,
    out: GraphProto,
    next: usize,
    renamed: HashMap<String, String>,
    /// DQ output of each run-time tensor.
    dq: HashMap<String, String>,
    /// `(s, z)` initializer names of each tensor that has its own scale.
    scale_names: HashMap<String, (String, String)>,
    /// DQ output and scales of each quantized weight (by name and axis).
    weights: HashMap<(String, usize), (String, Vec<f32>)>,
    counts: Counts,
}

impl<'a> Writer<'a> {
    fn fresh(&mut self, kind: char) -> String {
        self.next += 1;
        format!("{}{kind}{}", self.prefix, self.next)
    }

    /// The short name of a tensor that is not a run-time value (its initializer copied on
    /// first use); graph inputs and outputs keep their names.
    fn plain(&mut self, name: &str) -> String {
        if let Some(s) = self.renamed.get(name) {
            return s.clone();
        }
        let short = self.fresh('c');
        if let Some(t) = self.inits.get(name) {
            let mut t = (*t).clone();
            t.name = short.clone();
            t.doc_string.clear();
            self.out.initializer.push(t);
        }
        self.renamed.insert(name.to_string(), short.clone());
        short
    }

    /// Emits `Q(float) -> {base}q`, `DQ -> dq` for run-time tensor `orig` (`dq`: `{base}d`,
    /// or `orig` for a graph output), on the scale `{base}s` / `{base}z` of the tensor
    /// whose scale it shares.
    fn pair(&mut self, orig: &str, float: &str, base: &str) -> Result<(), QuantizeError> {
        let rep = self
            .rep
            .get(orig)
            .cloned()
            .unwrap_or_else(|| orig.to_string());
        let (s, z) = match self.scale_names.get(&rep) {
            Some(sz) => sz.clone(),
            None => {
                let p = self
                    .params
                    .get(&rep)
                    .ok_or_else(|| QuantizeError::Internal(format!("no range for '{rep}'")))?;
                let (s, z) = (format!("{base}s"), format!("{base}z"));
                self.out.initializer.push(f32_tensor(&s, &[], &[p.scale]));
                self.out
                    .initializer
                    .push(i8_tensor(&z, &[], &[p.zero_point]));
                self.counts.scales += 1;
                self.scale_names.insert(rep, (s.clone(), z.clone()));
                (s, z)
            }
        };
        let q = format!("{base}q");
        let dq = if self.src.output.iter().any(|g| g.name == orig) {
            orig.to_string()
        } else {
            format!("{base}d")
        };
        self.out
            .node
            .push(node("QuantizeLinear", &[float, &s, &z], &q, None));
        self.out
            .node
            .push(node("DequantizeLinear", &[&q, &s, &z], &dq, None));
        self.dq.insert(orig.to_string(), dq);
        self.counts.activations += 1;
        Ok(())
    }

    /// The DQ output of weight `name` of node `n`, quantized along `axis`, and its scales.
    fn weight(
        &mut self,
        n: &NodeProto,
        name: &str,
        axis: usize,
    ) -> Result<Option<(String, Vec<f32>)>, QuantizeError> {
        if let Some(w) = self.weights.get(&(name.to_string(), axis)) {
            return Ok(Some(w.clone()));
        }
        let bad = |problem: String| QuantizeError::Weight {
            node: display(n),
            problem,
        };
        let Some(t) = self.inits.get(name) else {
            if n.op_type == "MatMul" {
                return Ok(None);
            }
            return Err(bad(format!("weight '{name}' is not an initializer")));
        };
        let (dims, data) = super::graph::floats(t)
            .ok_or_else(|| bad(format!("weight '{name}' is not a float32 tensor")))?;
        let rank = if n.op_type == "Conv" { 4 } else { 2 };
        if dims.len() != rank {
            return Err(bad(format!(
                "weight '{name}' has shape {dims:?}, a {rank}-D tensor is expected"
            )));
        }
        let q = quantize_weights(&data, &dims, axis).map_err(bad)?;
        let w = self.fresh('w');
        let (s, d) = (format!("{w}s"), format!("{w}d"));
        self.out.initializer.push(i8_tensor(&w, &dims, &q.values));
        self.out
            .initializer
            .push(f32_tensor(&s, &[q.scales.len()], &q.scales));
        let axis_attr = (axis != 1).then_some(axis as i64);
        self.out
            .node
            .push(node("DequantizeLinear", &[&w, &s], &d, axis_attr));
        self.counts.weights += 1;
        let entry = (d, q.scales);
        self.weights.insert((name.to_string(), axis), entry.clone());
        Ok(Some(entry))
    }

    /// The DQ output of bias `name` of a node whose input has scale `s_x` and weights
    /// the scales `s_w`; None when the bias is not a 1-D float initializer of the right
    /// length (it then stays float).
    fn bias(&mut self, name: &str, s_x: f32, s_w: &[f32]) -> Option<String> {
        let (dims, data) = super::graph::floats(self.inits.get(name)?)?;
        if dims != [s_w.len()] {
            return None;
        }
        let q = quantize_bias(&data, s_x, s_w).ok()?;
        let b = self.fresh('b');
        let (s, d) = (format!("{b}s"), format!("{b}d"));
        self.out.initializer.push(i32_tensor(&b, &dims, &q.values));
        self.out
            .initializer
            .push(f32_tensor(&s, &[q.scales.len()], &q.scales));
        self.out
            .node
            .push(node("DequantizeLinear", &[&b, &s], &d, Some(0)));
        self.counts.biases += 1;
        self.counts.biases_clamped += q.clamped;
        Some(d)
    }

    /// The scale of run-time tensor `name`.
    fn scale_of(&self, name: &str) -> Option<f32> {
        let rep = self.rep.get(name).map_or(name, String::as_str);
        self.params.get(rep).map(|p| p.scale)
    }

    fn node(&mut self, n: &'a NodeProto) -> Result<(), QuantizeError> {
        let mut inputs = Vec::with_capacity(n.input.len());
        let mut w_scales: Option<Vec<f32>> = None;
        for (i, name) in n.input.iter().enumerate() {
            if name.is_empty() {
                inputs.push(String::new());
                continue;
            }
            let s_x = n.input.first().and_then(|x| self.scale_of(x));
            let mapped = match role(n, i) {
                Role::Weight(axis) if !self.params.contains_key(name) => {
                    match self.weight(n, name, axis)? {
                        Some((d, scales)) => {
                            w_scales = Some(scales);
                            Some(d)
                        }
                        None => None,
                    }
                }
                Role::Bias => match (s_x, &w_scales) {
                    (Some(s_x), Some(s_w)) => {
                        let s_w = s_w.clone();
                        self.bias(name, s_x, &s_w)
                    }
                    _ => None,
                },
                _ => None,
            };
            let mapped = match mapped {
                Some(m) => m,
                None if self.params.contains_key(name) => {
                    self.dq.get(name).cloned().ok_or_else(|| {
                        QuantizeError::Internal(format!(
                            "node {} reads '{name}' before it is written",
                            display(n)
                        ))
                    })?
                }
                None => self.plain(name),
            };
            inputs.push(mapped);
        }
        let mut outputs = vec![];
        let mut pairs = vec![];
        for o in &n.output {
            if o.is_empty() {
                outputs.push(String::new());
            } else if self.params.contains_key(o) {
                let t = self.fresh('t');
                pairs.push((o.as_str(), t.clone()));
                outputs.push(t);
            } else {
                outputs.push(self.plain(o));
            }
        }
        let mut copy = n.clone();
        copy.name.clear();
        copy.doc_string.clear();
        copy.input = inputs;
        copy.output = outputs;
        for a in &mut copy.attribute {
            a.doc_string.clear();
        }
        self.out.node.push(copy);
        for (orig, t) in pairs {
            self.pair(orig, &t, &t)?;
        }
        Ok(())
    }
}

/// Rewrites graph `g` (see the module documentation). `params`: the int8 parameters of
/// every run-time tensor by name (the graph input included); `input`: the image input.
pub(crate) fn rewrite(
    g: &GraphProto,
    input: &str,
    params: &HashMap<String, QParams>,
) -> Result<(GraphProto, Counts), QuantizeError> {
    // names the file keeps must not look like generated ones
    let kept: Vec<&str> = std::iter::once(input)
        .chain(g.output.iter().map(|o| o.name.as_str()))
        .collect();
    let mut prefix = String::new();
    while kept
        .iter()
        .any(|k| k.strip_prefix(prefix.as_str()).is_some_and(generated_like))
    {
        prefix.push('_');
    }
    if g.output.iter().any(|o| o.name == input) {
        return Err(QuantizeError::Unsupported(format!(
            "the graph output '{input}' is the graph input"
        )));
    }
    let mut rep: HashMap<String, String> = HashMap::new();
    for n in &g.node {
        let (Some(x), Some(y)) = (n.input.first(), n.output.first()) else {
            continue;
        };
        if shares_scale(n) && params.contains_key(x) && params.contains_key(y) {
            let r = rep.get(x).cloned().unwrap_or_else(|| x.clone());
            rep.insert(y.clone(), r);
        }
    }
    let mut w = Writer {
        src: g,
        inits: super::graph::initializers(g),
        params,
        rep,
        prefix: prefix.clone(),
        out: GraphProto {
            name: g.name.clone(),
            ..Default::default()
        },
        next: 0,
        renamed: HashMap::new(),
        dq: HashMap::new(),
        scale_names: HashMap::new(),
        weights: HashMap::new(),
        counts: Counts::default(),
    };
    for o in &g.output {
        w.renamed.insert(o.name.clone(), o.name.clone());
    }
    w.pair(input, input, &format!("{prefix}t0"))?;
    for n in &g.node {
        w.node(n)?;
    }
    let mut out = w.out;
    let mut image = g
        .input
        .iter()
        .find(|i| i.name == input)
        .cloned()
        .ok_or_else(|| QuantizeError::Internal(format!("no graph input '{input}'")))?;
    image.doc_string.clear();
    out.input.push(image);
    for o in &g.output {
        let mut o = o.clone();
        o.doc_string.clear();
        out.output.push(o);
    }
    Ok((out, w.counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_recognized() {
        for name in ["t0", "t12q", "w3s", "b40d", "c7", "t1z"] {
            assert!(generated_like(name), "{name}");
        }
        for name in ["input", "logits", "t", "tq", "x1", "t1qq", "t1x", "w-1"] {
            assert!(!generated_like(name), "{name}");
        }
    }
}
