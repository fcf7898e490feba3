//! Reductions over spatial or channel axes: GlobalAveragePool and ReduceMean (the batch
//! axis is never reduced).

use super::{axes, rank4, Ctx, Node};
use crate::error::RuntimeError;
use crate::plan::Step;
use crate::value::Dim;
use burn::tensor::backend::Backend;

pub(super) fn global_avg_pool<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let [b, c, _, _] = rank4(n, &s)?;
    cx.define(
        n,
        Step::GlobalAvgPool(x),
        vec![b, c, Dim::Fixed(1), Dim::Fixed(1)],
    )
}

pub(super) fn reduce_mean<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let raw = if cx.opset >= 18 {
        match cx.opt(n, 1)? {
            Some(_) => Some(cx.ints(n, 1, "axes")?),
            None => None,
        }
    } else {
        n.ints("axes")?
    };
    let raw = match raw {
        Some(a) if !a.is_empty() => a,
        _ if n.int("noop_with_empty_axes", 0)? != 0 => {
            return cx.define(n, Step::Reshape { x, out: s.clone() }, s);
        }
        _ => (0..s.len() as i64).collect(),
    };
    let mut ax = axes(n, &raw, s.len())?;
    ax.sort_unstable();
    ax.dedup();
    if ax.contains(&0) {
        return Err(n.err("reducing over the batch dimension is not supported"));
    }
    let keep = n.int("keepdims", 1)? != 0;
    let out: Vec<Dim> = s
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match (ax.contains(&i), keep) {
            (true, true) => Some(Dim::Fixed(1)),
            (true, false) => None,
            (false, _) => Some(d),
        })
        .collect();
    cx.define(
        n,
        Step::ReduceMean {
            x,
            axes: ax,
            out: out.clone(),
        },
        out,
    )
}
