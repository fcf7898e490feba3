//! Microcontroller plans: the runtime's int8 program of a QDQ file
//! ([`splitnas_runtime::Model::int8_program`]) translated op by op into a
//! `splitnas-micro` plan (`model.plan`, micro/FORMAT.md): int8 weights, int32 biases,
//! fixed-point multipliers, and a static memory plan (every activation an offset in one
//! arena, reused when dead, Requant and Add written over a dead input). The ops are the
//! engine's own, so the plan computes the engine's codes.
//!
//! ```no_run
//! use splitnas_export::plan::{compile, Budget};
//! # fn demo(program: &splitnas_runtime::int8::Program) {
//! let c = compile(program, [1, 28, 28], Budget::default()).unwrap();
//! println!("flash_bytes={} sram_peak_bytes={} macs={}", c.flash_bytes, c.sram_peak, c.macs);
//! # }
//! ```

mod network;
pub mod order;

pub use network::{network_plan, NetworkPlanError};

use splitnas_micro::planner;
use splitnas_micro::writer::{DenseSpec, PlanWriter};
use splitnas_micro::{Plan, PlanError, MAX_K, MAX_ROW};
use splitnas_runtime::int8::{Op, Program, Quant};

/// Arena offsets are multiples of this (word-aligned tensors on a Cortex-M).
pub const ALIGN: u32 = 4;

/// The most SRAM (arena bytes) and flash (plan bytes) the plan may take; none: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Arena bytes.
    pub sram: Option<u64>,
    /// Plan bytes.
    pub flash: Option<u64>,
}

/// A compiled plan and its figures.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The plan's bytes (`model.plan`).
    pub bytes: Vec<u8>,
    /// The plan's length: what the board's flash holds.
    pub flash_bytes: u64,
    /// The arena: the most SRAM the activations take.
    pub sram_peak: u32,
    /// The most bytes alive at one step of this op order (in-place outputs merged into
    /// their inputs): no placement goes under it.
    pub lower_bound: u32,
    /// The sum of all activation sizes: the arena without reuse.
    pub activations_sum: u64,
    /// Multiply-accumulates of one image (convolutions and dense layers).
    pub macs: u64,
    /// Ops in the plan.
    pub ops: usize,
    /// The op order chosen ([`order`]: `program`, `min-growth` or `min-alive`).
    pub order: &'static str,
    /// The arena in the program's own order (the ONNX file's), for comparison.
    pub program_order_sram: u32,
}

/// Why a program does not become a plan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// An op the microcontroller executor does not run.
    #[error("op {op} ({label}, writing '{tensor}'): {why}")]
    Unsupported {
        /// Index in the program.
        op: usize,
        /// The op's kind and shape.
        label: String,
        /// The ONNX tensor it writes.
        tensor: String,
        /// What is beyond the executor.
        why: String,
    },
    /// The activations do not fit the SRAM budget.
    #[error("the activations need {need} bytes of SRAM, over the budget of {budget} bytes: at the busiest step (op {step}, {label}) {alive} bytes are alive, the largest tensor '{tensor}' {dims:?} with {bytes} bytes")]
    Sram {
        /// Arena bytes of the plan.
        need: u64,
        /// The budget.
        budget: u64,
        /// The step with the most bytes alive (a program op index).
        step: usize,
        /// That op's kind.
        label: String,
        /// Bytes alive there.
        alive: u64,
        /// The largest tensor alive there.
        tensor: String,
        /// Its shape.
        dims: [u32; 3],
        /// Its bytes.
        bytes: u32,
    },
    /// The plan does not fit the flash budget.
    #[error("the plan is {need} bytes, over the flash budget of {budget} bytes: the largest weights are op {op}'s ({label}, writing '{tensor}'), {bytes} bytes")]
    Flash {
        /// Plan bytes.
        need: u64,
        /// The budget.
        budget: u64,
        /// The op with the most weight bytes.
        op: usize,
        /// Its kind.
        label: String,
        /// The ONNX tensor it writes.
        tensor: String,
        /// Its weight bytes.
        bytes: u64,
    },
    /// More tensors or ops than the format counts (65535).
    #[error("{what}: {count}, the format holds at most 65535")]
    TooMany {
        /// Tensors or ops.
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// The written plan does not pass `Plan::parse` (a compiler bug or a figure beyond
    /// the executor's limits that the compiler did not catch).
    #[error("the compiled plan does not check: {0}")]
    Invalid(PlanError),
}

/// Shape of each program value (`[size, 1, 1]` where no op tells more).
fn value_dims(p: &Program, input: [usize; 3]) -> Vec<[u32; 3]> {
    let mut dims: Vec<[u32; 3]> = p.sizes.iter().map(|&s| [s as u32, 1, 1]).collect();
    let set = |dims: &mut Vec<[u32; 3]>, v: usize, d: [usize; 3]| {
        if d.iter().product::<usize>() == p.sizes[v] {
            dims[v] = d.map(|x| x as u32);
        }
    };
    for op in &p.ops {
        let y = op.out();
        match op {
            Op::Quantize { .. } => set(&mut dims, y, input),
            Op::Dense(d) => match &d.conv {
                Some((g, _)) => set(&mut dims, y, [p.sizes[y] / (g.oh * g.ow), g.oh, g.ow]),
                None => set(&mut dims, y, [p.sizes[y], 1, 1]),
            },
            Op::MaxPool { g, .. } | Op::AvgPool { g, .. } => set(&mut dims, y, [g.c, g.oh, g.ow]),
            Op::Slice { ranges, .. } => set(&mut dims, y, ranges.map(|r| r.2)),
            Op::Pad { dims: d, pads, .. } => set(
                &mut dims,
                y,
                [0, 1, 2].map(|a| d[a] + pads[a].0 + pads[a].1),
            ),
            Op::Requant { x, .. } | Op::Affine { x, .. } | Op::Add { a: x, .. } => {
                dims[y] = dims[*x]
            }
            Op::Concat { xs, outer: 1, .. } => {
                // along the first axis of parts of one trailing shape
                let tail = dims[xs[0].0];
                if xs.iter().all(|&(v, _)| dims[v][1..] == tail[1..]) {
                    let d0: u32 = xs.iter().map(|&(v, _)| dims[v][0]).sum();
                    let d = [d0, tail[1], tail[2]].map(|x| x as usize);
                    set(&mut dims, y, d);
                }
            }
            Op::GlobalAvg { .. } | Op::Concat { .. } => {}
        }
    }
    dims
}

/// The name of value `v` for messages: its ONNX tensor, else `value v`.
fn name(p: &Program, v: usize) -> String {
    match p.names.get(v) {
        Some(n) if !n.is_empty() => n.clone(),
        _ => format!("value {v}"),
    }
}

/// Checks the executor's stack limits for op `i` (`MAX_K` products per output channel,
/// `MAX_ROW` sums per row) before writing it.
fn check_limits(p: &Program, i: usize, op: &Op) -> Result<(), CompileError> {
    let over = |what: &str, v: usize, max: usize| {
        (v > max).then(|| CompileError::Unsupported {
            op: i,
            label: op.label(),
            tensor: name(p, op.out()),
            why: format!("{what} is {v}, the executor takes at most {max} (splitnas_micro)"),
        })
    };
    let e = match op {
        Op::Dense(d) => match &d.conv {
            Some((g, _)) => over("products per output channel", d.k, MAX_K)
                .or_else(|| over("output row width", g.ow, MAX_ROW)),
            None => over("products per output", d.k, MAX_K),
        },
        Op::AvgPool { g, .. } => over(
            "average pool scratch (ow + 2 kh kw)",
            g.ow + 2 * g.kh * g.kw,
            MAX_ROW,
        ),
        _ => None,
    };
    e.map_or(Ok(()), Err)
}

/// Multiply-accumulates of one op on one image.
fn macs(p: &Program, op: &Op) -> u64 {
    match op {
        Op::Dense(d) => (p.sizes[d.y] * d.k) as u64,
        _ => 0,
    }
}

/// Translates `p` (input images of shape `input`, `[C, H, W]`) into a plan, plans its
/// memory, and checks `budget`.
pub fn compile(p: &Program, input: [usize; 3], budget: Budget) -> Result<Compiled, CompileError> {
    let dims = value_dims(p, input);
    // each candidate order planned; the smallest arena kept (the program's on a tie)
    let mut best: Option<Built> = None;
    let mut program_order_sram = 0;
    for o in order::candidates(p) {
        let b = build(p, &dims, &o)?;
        if o.name == "program" {
            program_order_sram = b.c.sram_peak;
        }
        if best.as_ref().is_none_or(|x| b.c.sram_peak < x.c.sram_peak) {
            best = Some(b);
        }
    }
    let Built { mut c, ids, origin } = best.expect("the program order is a candidate");
    c.program_order_sram = program_order_sram;
    if let Some(budget) = budget.sram.filter(|&b| c.sram_peak as u64 > b) {
        return Err(sram_error(
            p,
            &ids,
            &dims,
            &origin,
            c.sram_peak as u64,
            budget,
        ));
    }
    if let Some(budget) = budget.flash.filter(|&b| c.flash_bytes > b) {
        let (i, op) = p
            .ops
            .iter()
            .enumerate()
            .max_by_key(|(_, op)| match op {
                Op::Dense(d) => d.w.len() + 4 * d.bias.as_ref().map_or(0, Vec::len),
                _ => 0,
            })
            .expect("a plan has ops");
        let bytes = match op {
            Op::Dense(d) => (d.w.len() + 4 * d.bias.as_ref().map_or(0, Vec::len)) as u64,
            _ => 0,
        };
        return Err(CompileError::Flash {
            need: c.flash_bytes,
            budget,
            op: i,
            label: op.label(),
            tensor: name(p, op.out()),
            bytes,
        });
    }
    Ok(c)
}

/// A plan in one op order, with what the budget errors need.
struct Built {
    c: Compiled,
    /// Program value -> plan tensor.
    ids: Vec<Option<u16>>,
    /// Plan op -> program op.
    origin: Vec<usize>,
}

/// The plan of `p`'s ops in `order`.
fn build(p: &Program, dims: &[[u32; 3]], order: &order::Order) -> Result<Built, CompileError> {
    let mut w = PlanWriter::new();
    // program value -> plan tensor, made when first written
    let mut ids: Vec<Option<u16>> = vec![None; p.sizes.len()];
    let mut tensor = |w: &mut PlanWriter, v: usize| -> Result<u16, CompileError> {
        if let Some(id) = ids[v] {
            return Ok(id);
        }
        let id = w.tensor(0, dims[v]);
        if id == u16::MAX {
            return Err(CompileError::TooMany {
                what: "tensors",
                count: id as usize + 1,
            });
        }
        ids[v] = Some(id);
        Ok(id)
    };
    let mut input_q: Option<(u16, Quant)> = None;
    // plan op -> program op, for messages
    let mut origin: Vec<usize> = vec![];
    let mut total_macs = 0;
    for &i in &order.ops {
        let op = &p.ops[i];
        check_limits(p, i, op)?;
        total_macs += macs(p, op);
        let y = tensor(&mut w, op.out())?;
        match op {
            Op::Quantize { q, .. } => {
                if input_q.is_some() {
                    return Err(CompileError::Unsupported {
                        op: i,
                        label: op.label(),
                        tensor: name(p, op.out()),
                        why: "a second quantization of the input".into(),
                    });
                }
                input_q = Some((y, *q));
                continue;
            }
            Op::Dense(d) => {
                let x = tensor(&mut w, d.x)?;
                let spec = DenseSpec {
                    wt: &d.w,
                    bias: d.bias.as_deref(),
                    requant: &d.requant,
                    zx: d.zx,
                    out_zero: d.out.zero,
                    relu: d.relu,
                    groups: d.conv.as_ref().map_or(1, |c| c.1 as u32),
                };
                match &d.conv {
                    Some((g, _)) => w.conv(x, y, g, spec),
                    None => w.gemm(x, y, d.k as u32, spec),
                }
            }
            Op::Requant {
                x, xq, yq, relu, ..
            } => {
                let x = tensor(&mut w, *x)?;
                w.requant(x, y, [*xq, *yq], *relu)
            }
            Op::MaxPool { x, g, .. } => {
                let x = tensor(&mut w, *x)?;
                w.max_pool(x, y, g)
            }
            Op::AvgPool {
                x, g, count_pad, q, ..
            } => {
                let x = tensor(&mut w, *x)?;
                w.avg_pool(x, y, g, *count_pad, *q)
            }
            Op::GlobalAvg { x, hw, q, .. } => {
                let x = tensor(&mut w, *x)?;
                w.global_avg(x, y, *hw as u32, *q)
            }
            Op::Add { a, b, q, relu, .. } => {
                let (a, b) = (tensor(&mut w, *a)?, tensor(&mut w, *b)?);
                w.add(a, b, y, *q, *relu)
            }
            Op::Concat { xs, outer, yq, .. } => {
                let mut parts = Vec::with_capacity(xs.len());
                for &(v, q) in xs {
                    parts.push((tensor(&mut w, v)?, q));
                }
                w.concat(&parts, y, *outer as u32, *yq)
            }
            Op::Slice {
                x, dims, ranges, ..
            } => {
                let x = tensor(&mut w, *x)?;
                let r = ranges.map(|r| (r.0 as u32, r.1 as u32, r.2 as u32));
                w.slice(x, y, dims.map(|d| d as u32), r)
            }
            Op::Pad {
                x,
                dims,
                pads,
                fill,
                ..
            } => {
                let x = tensor(&mut w, *x)?;
                let pads = pads.map(|(a, b)| (a as u32, b as u32));
                w.pad(x, y, dims.map(|d| d as u32), pads, *fill)
            }
            Op::Affine {
                x, q, inner, a, b, ..
            } => {
                let x = tensor(&mut w, *x)?;
                w.affine(x, y, *q, *inner as u32, a, b)
            }
        }
        origin.push(i);
    }
    if origin.len() >= u16::MAX as usize {
        return Err(CompileError::TooMany {
            what: "ops",
            count: origin.len(),
        });
    }
    let Some((input_id, iq)) = input_q else {
        return Err(CompileError::Unsupported {
            op: 0,
            label: "program".into(),
            tensor: String::new(),
            why: "no quantization of the input".into(),
        });
    };
    let (out_v, oq) = p.output;
    let out_id = tensor(&mut w, out_v)?;
    w.io(input_id, iq, out_id, oq);
    let layout = w.plan_memory(ALIGN, true);
    let bytes = w.finish();
    Plan::parse(&bytes).map_err(CompileError::Invalid)?;
    let c = Compiled {
        flash_bytes: bytes.len() as u64,
        bytes,
        sram_peak: layout.peak,
        lower_bound: layout.lower_bound,
        activations_sum: layout.sum,
        macs: total_macs,
        ops: origin.len(),
        order: order.name,
        program_order_sram: 0,
    };
    Ok(Built { c, ids, origin })
}

/// The SRAM error: the step with the most bytes alive and its largest tensor.
fn sram_error(
    p: &Program,
    ids: &[Option<u16>],
    dims: &[[u32; 3]],
    origin: &[usize],
    need: u64,
    budget: u64,
) -> CompileError {
    // lifetimes over the plan's ops (the Quantize is step 0: the input)
    let mut plan_ops: Vec<(Vec<usize>, usize)> = vec![];
    for &i in origin {
        let op = &p.ops[i];
        plan_ops.push((op.inputs(), op.out()));
    }
    let input = p
        .ops
        .iter()
        .find(|op| matches!(op, Op::Quantize { .. }))
        .map_or(0, Op::out);
    let life = planner::lifetimes(p.sizes.len(), input, p.output.0, &plan_ops);
    let live: Vec<planner::Live> = (0..p.sizes.len())
        .map(|v| match (ids[v], life[v]) {
            (Some(_), Some((first, last))) => planner::Live {
                size: p.sizes[v] as u32,
                first,
                last,
            },
            _ => planner::Live {
                size: 0,
                first: 0,
                last: 0,
            },
        })
        .collect();
    // in-place outputs share their dead input's bytes, as `PlanWriter::plan_memory` plans
    let mut pairs = vec![];
    for (s, &i) in origin.iter().enumerate() {
        let step = s as u32 + 1;
        let xs = match &p.ops[i] {
            Op::Requant { x, .. } => vec![*x],
            Op::Add { a, b, .. } if a != b => vec![*a, *b],
            _ => continue,
        };
        let dead = |x: &&usize| **x != p.output.0 && live[**x].last == step;
        if let Some(&x) = xs.iter().find(dead) {
            pairs.push((x, p.ops[i].out()));
        }
    }
    let (slots, _) = planner::merge_in_place(&live, &pairs);
    let steps = plan_ops.len() as u32 + 1;
    let at = |t: &planner::Live, s: u32| t.size > 0 && t.first <= s && s <= t.last;
    let alive_bytes = |s: u32| {
        slots
            .iter()
            .filter(|t| at(t, s))
            .map(|t| t.size as u64)
            .sum()
    };
    let step = (0..=steps).max_by_key(|&s| alive_bytes(s)).unwrap_or(0);
    let alive = alive_bytes(step);
    let big = (0..live.len())
        .filter(|&v| at(&live[v], step))
        .max_by_key(|&v| live[v].size)
        .unwrap_or(0);
    let step = step as usize;
    // step s runs plan op s - 1
    let op = step
        .checked_sub(1)
        .and_then(|s| origin.get(s).copied())
        .unwrap_or(0);
    CompileError::Sram {
        need,
        budget,
        step: op,
        label: p.ops.get(op).map_or_else(String::new, Op::label),
        alive,
        tensor: name(p, big),
        dims: dims[big],
        bytes: p.sizes[big] as u32,
    }
}

#[cfg(test)]
mod tests;
