//! Elementwise operators: Relu, and Add / Mul with numpy broadcasting (folded at load
//! time when both operands are constants).

use super::{Ctx, Known, Node};
use crate::error::RuntimeError;
use crate::plan::{Operand, Step};
use crate::value::{show, Const, Dim};
use burn::tensor::backend::Backend;

pub(super) fn relu<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    cx.define(n, Step::Relu(x), s)
}

/// Numpy broadcasting of two shapes.
fn broadcast(n: &Node, a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, RuntimeError> {
    let r = a.len().max(b.len());
    let pad = |s: &[Dim]| {
        let mut v = vec![Dim::Fixed(1); r - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (a2, b2) = (pad(a), pad(b));
    a2.iter()
        .zip(&b2)
        .map(|(&x, &y)| match (x, y) {
            (x, y) if x == y => Ok(x),
            (Dim::Fixed(1), y) => Ok(y),
            (x, Dim::Fixed(1)) => Ok(x),
            _ => Err(n.err(format!(
                "shapes {} and {} do not broadcast",
                show(a),
                show(b)
            ))),
        })
        .collect()
}

fn binary<B: Backend>(
    cx: &mut Ctx<B>,
    n: &Node,
    make: fn(Operand<B>, Operand<B>) -> Step<B>,
    host: fn(f32, f32) -> f32,
) -> Result<(), RuntimeError> {
    let a = cx.get(n, 0)?.clone();
    let b = cx.get(n, 1)?.clone();
    let shape_of = |k: &Known| match k {
        Known::Const(c) => c.dims().iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>(),
        Known::Value(_, s) => s.clone(),
    };
    let out = broadcast(n, &shape_of(&a), &shape_of(&b))?;
    if let (
        Known::Const(Const::F32 { dims: da, data: va }),
        Known::Const(Const::F32 { dims: db, data: vb }),
    ) = (&a, &b)
    {
        // Constant folding for equal shapes or a scalar operand.
        let folded = if da == db {
            va.iter().zip(vb).map(|(x, y)| host(*x, *y)).collect()
        } else if vb.len() == 1 {
            va.iter().map(|x| host(*x, vb[0])).collect()
        } else if va.len() == 1 {
            vb.iter().map(|y| host(va[0], *y)).collect()
        } else {
            return Err(n.err("broadcasting between two constants is not supported"));
        };
        let dims = if va.len() >= vb.len() {
            da.clone()
        } else {
            db.clone()
        };
        return cx.define_const(n, Const::F32 { dims, data: folded });
    }
    let operand = |k: &Known| -> Result<Operand<B>, RuntimeError> {
        match k {
            Known::Value(v, s) if s.len() == out.len() => Ok(Operand::Value(*v)),
            Known::Value(_, s) => Err(n.err(format!(
                "run-time operand of rank {} broadcast to rank {} is not supported",
                s.len(),
                out.len()
            ))),
            Known::Const(Const::F32 { dims, data }) => {
                let mut full = vec![1; out.len() - dims.len()];
                full.extend_from_slice(dims);
                Ok(Operand::Const(cx.tensor4(&full, data.clone())?))
            }
            Known::Const(_) => Err(n.err("integer operands are not supported")),
        }
    };
    let (oa, ob) = (operand(&a)?, operand(&b)?);
    cx.define(n, make(oa, ob), out)
}

pub(super) fn add<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    binary(cx, n, Step::Add, |a, b| a + b)
}

pub(super) fn mul<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    binary(cx, n, Step::Mul, |a, b| a * b)
}
