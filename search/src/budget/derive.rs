//! The constrained derivation (see the module notes of [`super`]).

use super::{check, Budget, Infeasible, Resource};
use crate::supernet::{node_edges, CellWeights, NODES, OPS};
use splitnas_models::{CellGenotype, CellPair, Cost, CostTable, Primitive};

/// One node's choice: two `(op index, input)` edges, stronger first.
type Choice = [(usize, usize); 2];

/// Every choice of `node` (distinct inputs, ops other than `none`) with its score.
fn choices(w: &CellWeights, node: usize) -> Vec<(Choice, f64)> {
    let range = node_edges(node);
    let score = |input: usize, k: usize| {
        let e = range.start + input;
        (w.alphas[e][k] as f64 * w.betas[e] as f64)
            .max(f64::MIN_POSITIVE)
            .ln()
    };
    let mut out = Vec::with_capacity(range.len() * range.len() * 49);
    for a in 0..range.len() {
        for b in a + 1..range.len() {
            for ka in 1..OPS {
                for kb in 1..OPS {
                    let (sa, sb) = (score(a, ka), score(b, kb));
                    let c = if sa >= sb {
                        [(ka, a), (kb, b)]
                    } else {
                        [(kb, b), (ka, a)]
                    };
                    out.push((c, sa + sb));
                }
            }
        }
    }
    out
}

/// The node choice DARTS' derivation makes (`CellWeights::genotype`).
fn darts_choice(g: &CellGenotype, node: usize) -> Choice {
    let e = |j: usize| (g.edges[j].0.index(), g.edges[j].1);
    [e(2 * node), e(2 * node + 1)]
}

fn choice_cost(table: &CostTable, t: usize, node: usize, c: &Choice) -> Cost {
    c.iter()
        .map(|&(k, input)| table.edges[t][node][input][k])
        .sum()
}

/// The best cell pair by DARTS' derivation that meets `budget` (see the module notes):
/// the plain derivation when it fits, else the greedy constrained one. `weights` are the
/// normal and reduction cells' softmaxed weights; `table` prices the pair.
pub fn derive(
    weights: [&CellWeights; 2],
    table: &CostTable,
    budget: &Budget,
) -> Result<CellPair, Infeasible> {
    let plain = CellPair {
        normal: weights[0].genotype(),
        reduce: weights[1].genotype(),
    };
    if budget.admits(&table.pair_cost(&plain)) {
        return Ok(plain);
    }
    check(table, budget)?;
    // options[t][node]: every choice with its score and cost
    let options: Vec<Vec<Vec<(Choice, f64, Cost)>>> = (0..2)
        .map(|t| {
            (0..NODES)
                .map(|node| {
                    choices(weights[t], node)
                        .into_iter()
                        .map(|(c, s)| {
                            let cost = choice_cost(table, t, node, &c);
                            (c, s, cost)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let plain_cells = [&plain.normal, &plain.reduce];
    // current choice per (t, node) as an index into options
    let mut pick: Vec<Vec<usize>> = (0..2)
        .map(|t| {
            (0..NODES)
                .map(|node| {
                    let want = darts_choice(plain_cells[t], node);
                    let same = |c: &Choice| {
                        (c[0] == want[0] && c[1] == want[1]) || (c[0] == want[1] && c[1] == want[0])
                    };
                    options[t][node]
                        .iter()
                        .position(|o| same(&o.0))
                        .unwrap_or(0)
                })
                .collect()
        })
        .collect();
    let total = |pick: &Vec<Vec<usize>>| -> Cost {
        let mut c = table.fixed;
        for t in 0..2 {
            for node in 0..NODES {
                c += options[t][node][pick[t][node]].2;
            }
        }
        c
    };
    // 1. shed the excess greedily
    let mut cost = total(&pick);
    while !budget.admits(&cost) {
        let now = budget.excess(&cost);
        let mut best: Option<(f64, usize, usize, usize)> = None;
        for t in 0..2 {
            for node in 0..NODES {
                let cur = &options[t][node][pick[t][node]];
                for (i, o) in options[t][node].iter().enumerate() {
                    let trial = cost - cur.2 + o.2;
                    let gain = now - budget.excess(&trial);
                    if gain <= 1e-12 {
                        continue;
                    }
                    let loss = (cur.1 - o.1).max(0.0) + 1e-9;
                    let ratio = loss / gain;
                    if best.is_none_or(|b| ratio < b.0) {
                        best = Some((ratio, t, node, i));
                    }
                }
            }
        }
        match best {
            Some((_, t, node, i)) => {
                pick[t][node] = i;
                cost = total(&pick);
            }
            None => {
                // no single change lowers the excess: the cheapest choice everywhere
                // (each resource's minimum is reached there for params and MACs)
                for t in 0..2 {
                    for node in 0..NODES {
                        pick[t][node] = cheapest_choice(&options[t][node], budget);
                    }
                }
                cost = total(&pick);
                if !budget.admits(&cost) {
                    let (r, l) = budget
                        .limits()
                        .into_iter()
                        .find(|&(r, l)| r.of(&cost) > l)
                        .unwrap_or((Resource::Params, 0));
                    return Err(Infeasible {
                        resource: r.name(),
                        limit: l,
                        cheapest: r.of(&cost),
                    });
                }
            }
        }
    }
    // 2. raise each node again to its best choice that keeps the pair within budget
    let mut changed = true;
    while changed {
        changed = false;
        for t in 0..2 {
            for node in 0..NODES {
                let cur_i = pick[t][node];
                let cur = &options[t][node][cur_i];
                let mut best = (cur.1, cur_i);
                for (i, o) in options[t][node].iter().enumerate() {
                    if o.1 > best.0 && budget.admits(&(cost - cur.2 + o.2)) {
                        best = (o.1, i);
                    }
                }
                if best.1 != cur_i {
                    pick[t][node] = best.1;
                    cost = total(&pick);
                    changed = true;
                }
            }
        }
    }
    let cell = |t: usize| CellGenotype {
        edges: (0..NODES)
            .flat_map(|node| options[t][node][pick[t][node]].0)
            .map(|(k, input)| (Primitive::ALL[k], input))
            .collect(),
        concat: (2..2 + NODES).collect(),
    };
    Ok(CellPair {
        normal: cell(0),
        reduce: cell(1),
    })
}

/// The choice with the least total relative cost over the budget's resources.
fn cheapest_choice(options: &[(Choice, f64, Cost)], budget: &Budget) -> usize {
    let weight = |c: &Cost| -> f64 {
        budget
            .limits()
            .iter()
            .map(|&(r, l)| r.of(c) as f64 / l.max(1) as f64)
            .sum()
    };
    (0..options.len())
        .min_by(|&a, &b| weight(&options[a].2).total_cmp(&weight(&options[b].2)))
        .unwrap_or(0)
}

/// The pair with the least of `r` by `table`: per node the two cheapest distinct inputs,
/// each with its cheapest op other than `none` (the pair [`super::cheapest`] counts).
pub(crate) fn cheapest_pair(table: &CostTable, r: Resource) -> CellPair {
    let cell = |t: usize| {
        let mut edges = Vec::with_capacity(2 * NODES);
        for inputs in &table.edges[t] {
            let mut best: Vec<(u64, usize, usize)> = inputs
                .iter()
                .enumerate()
                .map(|(input, ops)| {
                    let k = (1..OPS).min_by_key(|&k| r.of(&ops[k])).unwrap_or(1);
                    (r.of(&ops[k]), k, input)
                })
                .collect();
            best.sort_unstable();
            let mut two: Vec<(usize, usize)> = best.iter().take(2).map(|b| (b.1, b.2)).collect();
            two.sort_by_key(|e| e.1);
            edges.extend(two.into_iter().map(|(k, input)| (Primitive::ALL[k], input)));
        }
        CellGenotype {
            edges,
            concat: (2..2 + NODES).collect(),
        }
    };
    CellPair {
        normal: cell(0),
        reduce: cell(1),
    }
}

/// The derivation's score of `pair` under `weights`: `sum ln(alpha_ek beta_e)` over its
/// edges (what the constrained derivation maximizes).
pub(crate) fn pair_score(weights: [&CellWeights; 2], pair: &CellPair) -> f64 {
    [&pair.normal, &pair.reduce]
        .into_iter()
        .zip(weights)
        .map(|(g, w)| {
            g.edges
                .iter()
                .enumerate()
                .map(|(j, &(op, input))| {
                    let e = node_edges(j / 2).start + input;
                    (w.alphas[e][op.index()] as f64 * w.betas[e] as f64)
                        .max(f64::MIN_POSITIVE)
                        .ln()
                })
                .sum::<f64>()
        })
        .sum()
}
