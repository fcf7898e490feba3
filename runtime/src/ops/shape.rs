//! Shape and layout operators: Concat, Slice, Pad, Flatten, Reshape, Unsqueeze, and the
//! shape arithmetic Shape / Gather (constants at load time, so a
//! `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` chain becomes one reshape).

use super::{axes, fixed, Ctx, Known, Node};
use crate::error::RuntimeError;
use crate::plan::{PadKind, Step};
use crate::value::{show, Const, Dim, SymInt};
use burn::tensor::backend::Backend;
use burn::tensor::Slice;

pub(super) fn concat<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let count = n.proto.input.len();
    if count == 0 {
        return Err(n.err("no inputs"));
    }
    let parts: Vec<Known> = (0..count)
        .map(|i| cx.get(n, i).cloned().map(Known::widened))
        .collect::<Result<_, _>>()?;
    let axis_raw = n.int("axis", i64::MIN)?;
    if axis_raw == i64::MIN {
        return Err(n.err("attribute axis is required"));
    }
    if parts.iter().all(|p| matches!(p, Known::Const(_))) {
        // Shape arithmetic: 1-D integer (or float) constants.
        let mut ints = vec![];
        let mut floats = vec![];
        for p in &parts {
            match p {
                Known::Const(Const::Int { dims, data }) if dims.len() == 1 => {
                    ints.extend_from_slice(data)
                }
                Known::Const(Const::F32 { dims, data }) if dims.len() == 1 => {
                    floats.extend_from_slice(data)
                }
                _ => {
                    return Err(
                        n.err("concatenating constants of rank other than 1 is not supported")
                    )
                }
            }
        }
        return match (ints.is_empty(), floats.is_empty()) {
            (false, true) => cx.define_const(
                n,
                Const::Int {
                    dims: vec![ints.len()],
                    data: ints,
                },
            ),
            (true, false) => cx.define_const(
                n,
                Const::F32 {
                    dims: vec![floats.len()],
                    data: floats,
                },
            ),
            _ => Err(n.err("mixed integer and float constants")),
        };
    }
    let mut ids = vec![];
    let mut shapes = vec![];
    for p in &parts {
        match p {
            Known::Value(v, s) => {
                ids.push(*v);
                shapes.push(s.clone());
            }
            Known::Const(_) => {
                return Err(n.err("concatenating constants with run-time tensors is not supported"))
            }
        }
    }
    let rank = shapes[0].len();
    let axis = axes(n, &[axis_raw], rank)?[0];
    let mut out = shapes[0].clone();
    let mut total = 0;
    for s in &shapes {
        let same = s.len() == rank && (0..rank).all(|i| i == axis || s[i] == shapes[0][i]);
        if !same {
            return Err(n.err(format!(
                "inputs {} and {} differ off axis {axis}",
                show(&shapes[0]),
                show(s)
            )));
        }
        total += fixed(n, s[axis], "the concatenation axis")?;
    }
    out[axis] = Dim::Fixed(total);
    cx.define(n, Step::Concat { xs: ids, axis }, out)
}

/// Resolves one Slice axis: clamped start/end for a positive step.
fn slice_range(start: i64, end: i64, step: i64, dim: usize) -> (usize, usize) {
    let d = dim as i64;
    let norm = |v: i64| if v < 0 { (v + d).max(0) } else { v.min(d) };
    let _ = step;
    let (s, e) = (norm(start), norm(end));
    (s as usize, e.max(s) as usize)
}

pub(super) fn slice<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let data = cx.get(n, 0)?.clone().widened();
    let starts = cx.ints(n, 1, "starts")?;
    let ends = cx.ints(n, 2, "ends")?;
    if starts.len() != ends.len() || starts.is_empty() {
        return Err(n.err("starts and ends are empty or differ in length"));
    }
    let rank = match &data {
        Known::Const(c) => c.dims().len(),
        Known::Value(_, s) => s.len(),
    };
    let ax = match cx.opt(n, 3)? {
        Some(_) => axes(n, &cx.ints(n, 3, "axes")?, rank)?,
        None => (0..starts.len()).collect(),
    };
    let steps = match cx.opt(n, 4)? {
        Some(_) => cx.ints(n, 4, "steps")?,
        None => vec![1; starts.len()],
    };
    if ax.len() != starts.len() || steps.len() != starts.len() {
        return Err(n.err("starts, ends, axes and steps differ in length"));
    }
    if let Some(s) = steps.iter().find(|&&s| s <= 0) {
        return Err(n.err(format!("step {s} is not supported (positive steps are)")));
    }
    match data {
        Known::Const(Const::Int { dims, data }) if dims.len() == 1 && ax == [0] => {
            let (s, e) = slice_range(starts[0], ends[0], steps[0], dims[0]);
            let picked: Vec<SymInt> = data[s..e]
                .iter()
                .step_by(steps[0] as usize)
                .copied()
                .collect();
            cx.define_const(
                n,
                Const::Int {
                    dims: vec![picked.len()],
                    data: picked,
                },
            )
        }
        Known::Const(_) => Err(n.err("slicing constants of rank other than 1 is not supported")),
        Known::Value(x, shape) => {
            let mut slices = [
                Slice::new(0, None, 1),
                Slice::new(0, None, 1),
                Slice::new(0, None, 1),
                Slice::new(0, None, 1),
            ];
            let mut out = shape.clone();
            for (i, &a) in ax.iter().enumerate() {
                let size = match shape[a] {
                    Dim::Fixed(v) => v,
                    Dim::Batch if starts[i] == 0 && ends[i] >= i32::MAX as i64 && steps[i] == 1 => {
                        continue
                    }
                    Dim::Batch => return Err(n.err("slicing the batch dimension is not supported")),
                };
                let (s, e) = slice_range(starts[i], ends[i], steps[i], size);
                if e <= s {
                    return Err(n.err(format!("empty slice on axis {a}")));
                }
                let st = steps[i] as usize;
                slices[a] = Slice::new(s as isize, Some(e as isize), st as isize);
                out[a] = Dim::Fixed((e - s).div_ceil(st));
            }
            cx.define(n, Step::Slice { x, slices }, out)
        }
    }
}

pub(super) fn pad<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let pads = cx.ints(n, 1, "pads")?;
    let value = match cx.opt(n, 2)? {
        Some(_) => {
            let (_, v) = cx.floats(n, 2, "constant_value")?;
            *v.first().unwrap_or(&0.0)
        }
        None => 0.0,
    };
    let ax = match cx.opt(n, 3)? {
        Some(_) => axes(n, &cx.ints(n, 3, "axes")?, s.len())?,
        None => (0..s.len()).collect(),
    };
    if pads.len() != 2 * ax.len() {
        return Err(n.err(format!("{} pads for {} axes", pads.len(), ax.len())));
    }
    let mode = match n.string("mode")?.as_deref() {
        None | Some("constant") => PadKind::Constant(value),
        Some("reflect") => PadKind::Reflect,
        Some("edge") => PadKind::Edge,
        Some(m) => return Err(n.err(format!("mode {m} is not supported"))),
    };
    let mut full = [(0usize, 0usize); 4];
    let mut out = s.clone();
    for (i, &a) in ax.iter().enumerate() {
        let (before, after) = (pads[i], pads[i + ax.len()]);
        let (before, after) = match (usize::try_from(before), usize::try_from(after)) {
            (Ok(b), Ok(e)) if b <= 1 << 20 && e <= 1 << 20 => (b, e),
            _ => {
                return Err(n.err(format!(
                    "pads {before}, {after} not supported (non-negative, at most 2^20)"
                )))
            }
        };
        if before + after == 0 {
            continue;
        }
        let size = fixed(n, s[a], "a padded axis")?;
        if !matches!(mode, PadKind::Constant(_)) && (before >= size || after >= size) {
            return Err(n.err(format!(
                "{mode:?} padding of {before}/{after} on a side of {size}"
            )));
        }
        full[a] = (before, after);
        out[a] = Dim::Fixed(size + before + after);
    }
    cx.define(
        n,
        Step::Pad {
            x,
            pads: full,
            mode,
        },
        out,
    )
}

/// Multiplies dims; Batch counts as a separate power.
fn product(dims: &[Dim]) -> (usize, usize) {
    dims.iter().fold((0, 1), |(b, f), d| match d {
        Dim::Batch => (b + 1, f),
        Dim::Fixed(v) => (b, f.saturating_mul(*v)),
    })
}

pub(super) fn flatten<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let (x, s) = cx.value(n, 0)?;
    let axis = n.int("axis", 1)?;
    let a = if axis < 0 {
        axis + s.len() as i64
    } else {
        axis
    };
    if a < 1 || a as usize > s.len() {
        return Err(n.err(format!(
            "axis {axis} is not supported for rank {} (the batch must stay first)",
            s.len()
        )));
    }
    let (head, tail) = s.split_at(a as usize);
    let first = match product(head) {
        (1, 1) => Dim::Batch,
        (0, f) => Dim::Fixed(f),
        _ => return Err(n.err("flattening the batch dimension into others is not supported")),
    };
    let second = match product(tail) {
        (0, f) => Dim::Fixed(f),
        _ => return Err(n.err("flattening the batch dimension into others is not supported")),
    };
    let out = vec![first, second];
    cx.define(
        n,
        Step::Reshape {
            x,
            out: out.clone(),
        },
        out,
    )
}

pub(super) fn reshape<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let target = match cx.constant(n, 1, "the shape")?.widened() {
        Const::Int { data, dims } if dims.len() == 1 => data,
        _ => return Err(n.err("the shape must be a 1-D integer tensor")),
    };
    let allow_zero = n.int("allowzero", 0)? != 0;
    let data = cx.get(n, 0)?.clone();
    let in_shape: Vec<Dim> = match &data {
        Known::Const(c) => c.dims().iter().map(|&d| Dim::Fixed(d)).collect(),
        Known::Value(_, s) => s.clone(),
    };
    let mut out: Vec<Option<Dim>> = vec![];
    for (i, t) in target.iter().enumerate() {
        out.push(match t {
            SymInt::Batch => Some(Dim::Batch),
            SymInt::Val(0) if !allow_zero => Some(*in_shape.get(i).ok_or_else(|| {
                n.err(format!("0 at position {i} has no input dimension to copy"))
            })?),
            SymInt::Val(-1) => None,
            SymInt::Val(v) if *v > 0 => Some(Dim::Fixed(*v as usize)),
            SymInt::Val(v) => return Err(n.err(format!("shape entry {v} is not supported"))),
        });
    }
    if out.iter().filter(|d| d.is_none()).count() > 1 {
        return Err(n.err("more than one -1 in the shape"));
    }
    let (bi, fi) = product(&in_shape);
    let known: Vec<Dim> = out.iter().flatten().copied().collect();
    let (bo, fo) = product(&known);
    let resolved: Vec<Dim> = if out.iter().any(|d| d.is_none()) {
        if fo == 0 || fi % fo != 0 || bi < bo {
            return Err(n.err(format!("cannot reshape {} to {target:?}", show(&in_shape))));
        }
        let fill = match bi - bo {
            0 => Dim::Fixed(fi / fo),
            1 if fi == fo => Dim::Batch,
            _ => {
                return Err(n.err(format!(
                    "cannot infer -1 reshaping {} to {target:?}",
                    show(&in_shape)
                )))
            }
        };
        out.iter().map(|d| d.unwrap_or(fill)).collect()
    } else {
        if (bi, fi) != (bo, fo) {
            return Err(n.err(format!("cannot reshape {} to {target:?}", show(&in_shape))));
        }
        known
    };
    match data {
        Known::Const(c) => {
            let dims = resolved
                .iter()
                .map(|&d| fixed(n, d, "a constant's dimension"))
                .collect::<Result<_, _>>()?;
            cx.define_const(n, c.with_dims(dims))
        }
        Known::Value(x, _) => cx.define(
            n,
            Step::Reshape {
                x,
                out: resolved.clone(),
            },
            resolved,
        ),
    }
}

pub(super) fn shape<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let dims: Vec<SymInt> = match cx.get(n, 0)? {
        Known::Const(c) => c.dims().iter().map(|&d| SymInt::Val(d as i64)).collect(),
        Known::Value(_, s) => s
            .iter()
            .map(|d| match d {
                Dim::Batch => SymInt::Batch,
                Dim::Fixed(v) => SymInt::Val(*v as i64),
            })
            .collect(),
    };
    let r = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(n.int("start", 0)?);
    let end = clamp(n.int("end", r)?).max(start);
    let picked = dims[start..end].to_vec();
    cx.define_const(
        n,
        Const::Int {
            dims: vec![picked.len()],
            data: picked,
        },
    )
}

pub(super) fn gather<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let data = match cx.get(n, 0)? {
        Known::Const(c) => c.clone(),
        Known::Value(..) => {
            return Err(
                n.err("Gather on run-time tensors is not supported (only on shapes and constants)")
            )
        }
    };
    let idx_const = cx.constant(n, 1, "the indices")?;
    let idx = idx_const.ints("the indices").map_err(|e| n.err(e))?;
    if n.int("axis", 0)? != 0 || data.dims().len() != 1 {
        return Err(n.err("only Gather on axis 0 of a 1-D constant is supported"));
    }
    let len = data.dims()[0] as i64;
    let pos: Vec<usize> = idx
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + len } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| (j as i64) < len)
                .ok_or_else(|| n.err(format!("index {i} out of range for length {len}")))
        })
        .collect::<Result<_, _>>()?;
    let dims = idx_const.dims().to_vec();
    let c = match data {
        Const::Int { data, .. } => Const::Int {
            dims,
            data: pos.iter().map(|&j| data[j]).collect(),
        },
        Const::F32 { data, .. } => Const::F32 {
            dims,
            data: pos.iter().map(|&j| data[j]).collect(),
        },
        Const::Quant { ty, data, .. } => Const::Quant {
            ty,
            dims,
            data: pos.iter().map(|&j| data[j]).collect(),
        },
    };
    cx.define_const(n, c)
}

pub(super) fn unsqueeze<B: Backend>(cx: &mut Ctx<B>, n: &Node) -> Result<(), RuntimeError> {
    let raw = cx.ints(n, 1, "axes")?;
    let data = cx.get(n, 0)?.clone();
    let in_shape: Vec<Dim> = match &data {
        Known::Const(c) => c.dims().iter().map(|&d| Dim::Fixed(d)).collect(),
        Known::Value(_, s) => s.clone(),
    };
    let rank = in_shape.len() + raw.len();
    let mut ax = axes(n, &raw, rank)?;
    ax.sort_unstable();
    let mut out = in_shape.clone();
    for &a in &ax {
        out.insert(a.min(out.len()), Dim::Fixed(1));
    }
    match data {
        Known::Const(c) => {
            let dims = out
                .iter()
                .map(|&d| fixed(n, d, "a constant's dimension"))
                .collect::<Result<Vec<_>, _>>()?;
            cx.define_const(n, c.with_dims(dims))
        }
        Known::Value(x, _) => cx.define(
            n,
            Step::Reshape {
                x,
                out: out.clone(),
            },
            out,
        ),
    }
}
