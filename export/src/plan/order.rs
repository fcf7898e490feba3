//! The execution order of a plan. Any topological order of the program computes the same
//! codes (every op reads only values written before it), but the bytes alive at each step
//! depend on it: a cell's branches run one after another keep the first branch's results
//! alive while the second runs. [`candidates`] gives the program's own order (the ONNX
//! file's) and two greedy list schedules; `compile` plans the memory of each and keeps the
//! smallest arena (the program order on a tie), so choosing never costs bytes.
//!
//! The greedy schedules take, among the ops whose inputs are all written, the one with
//! the smallest score, the earliest in the program on a tie:
//! - `min-growth`: bytes it allocates minus bytes it frees (inputs it reads last);
//! - `min-alive`: bytes alive while it runs (everything alive plus its output), then its
//!   growth.

use splitnas_runtime::int8::Program;

/// A named op order: program op indices, each once, inputs written before they are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// `program`, `min-growth` or `min-alive`.
    pub name: &'static str,
    /// Program op indices in execution order.
    pub ops: Vec<usize>,
}

/// The orders to try: the program's, then the greedy ones when the program writes every
/// value once (otherwise reordering could change what an op reads, and only the program's
/// order is given).
pub fn candidates(p: &Program) -> Vec<Order> {
    let program = Order {
        name: "program",
        ops: (0..p.ops.len()).collect(),
    };
    let mut writer = vec![None; p.sizes.len()];
    for (i, op) in p.ops.iter().enumerate() {
        let v = op.out();
        if v >= writer.len() || writer[v].replace(i).is_some() {
            return vec![program];
        }
    }
    // every read value is written by an earlier op (the program order is valid)
    for (i, op) in p.ops.iter().enumerate() {
        let earlier = |v: usize| matches!(writer.get(v), Some(Some(w)) if *w < i);
        if !op.inputs().into_iter().all(earlier) {
            return vec![program];
        }
    }
    let mut out = vec![program];
    for name in ["min-growth", "min-alive"] {
        out.push(Order {
            name,
            ops: greedy(p, name == "min-alive"),
        });
    }
    out
}

/// A list schedule (see the module doc); `alive_first` picks `min-alive`.
fn greedy(p: &Program, alive_first: bool) -> Vec<usize> {
    let n = p.ops.len();
    let inputs: Vec<Vec<usize>> = p
        .ops
        .iter()
        .map(|op| {
            let mut v = op.inputs();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    // readers left per value; the output is never freed
    let mut readers = vec![0usize; p.sizes.len()];
    for ins in &inputs {
        for &v in ins {
            readers[v] += 1;
        }
    }
    let keep = |v: usize| v == p.output.0;
    let mut waiting: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let mut done = vec![false; n];
    let mut alive: u64 = 0;
    let mut order = Vec::with_capacity(n);
    // ops reading each value
    let mut users = vec![Vec::new(); p.sizes.len()];
    for (i, ins) in inputs.iter().enumerate() {
        for &v in ins {
            users[v].push(i);
        }
    }
    for _ in 0..n {
        let score = |i: usize| {
            let out = p.sizes[p.ops[i].out()] as u64;
            let freed: u64 = inputs[i]
                .iter()
                .filter(|&&v| readers[v] == 1 && !keep(v))
                .map(|&v| p.sizes[v] as u64)
                .sum();
            let growth = out as i64 - freed as i64;
            if alive_first {
                ((alive + out) as i64, growth)
            } else {
                (growth, 0)
            }
        };
        let Some(i) = (0..n)
            .filter(|&i| !done[i] && waiting[i] == 0)
            .min_by_key(|&i| (score(i), i))
        else {
            break;
        };
        done[i] = true;
        order.push(i);
        let y = p.ops[i].out();
        if !users[y].is_empty() || keep(y) {
            alive += p.sizes[y] as u64;
        }
        for &v in &inputs[i] {
            readers[v] -= 1;
            if readers[v] == 0 && !keep(v) {
                alive -= p.sizes[v] as u64;
            }
        }
        for &u in &users[y] {
            waiting[u] -= 1;
        }
    }
    order
}
