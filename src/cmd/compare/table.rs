//! `compare.md`: the settings, the table and the genotypes.

use super::{Compare, Row};

pub fn markdown(c: &Compare, rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# splitnas compare on {}\n\nSearch budget (every method): C={} L={} K={} (slim: learned), {} epochs ({} warm-up; per stage for progressive), batch {}, {} order, arch lr {}, first {} training images (half weights, half architecture), seed {}.\nTraining recipe (every genotype): C={} L={}, {} epochs, batch {}, lr {}, {} training / {} test images, seeds 0..{}.\n\n",
        c.dataset,
        c.channels,
        c.layers,
        c.partial_k,
        c.epochs,
        c.warmup_epochs,
        c.batch_size,
        c.order,
        c.arch_lr,
        c.search_limit,
        c.seed,
        c.train_channels,
        c.train_layers,
        c.train_epochs,
        c.train_batch_size,
        c.train_lr,
        c.train_limit.map_or("all".into(), |n| n.to_string()),
        c.test_limit.map_or("all".into(), |n| n.to_string()),
        c.seeds,
    ));
    if !c.budget.is_empty() {
        s.push_str(&format!(
            "Budget on the trained network:{}{}{}. Searches get it (`--max-params/--max-macs/--max-sram`); random cells are `zoo::random` seeds 1..{}, each with random parametric edges turned into pooling until it meets the parameter and MAC budgets{}; published cells over it are left out.\n\n",
            c.budget.max_params.map_or(String::new(), |n| format!(" parameters <= {n}")),
            c.budget.max_macs.map_or(String::new(), |n| format!(" MACs <= {n}")),
            c.budget.max_sram.map_or(String::new(), |n| format!(" int8 plan arena <= {n} bytes")),
            c.random_genotypes,
            if c.budget.max_sram.is_some() {
                ", drawn again (seed + 1000 k) while its arena exceeds the SRAM budget"
            } else {
                ""
            }
        ));
    }
    let sram = c.budget.max_sram.is_some();
    s.push_str(&format!(
        "| method | search s (wall) | search CPU s | search peak MB | parameters | MACs |{} normal skips | test acc (mean) | spread (max-min) | per seed |\n|---|---:|---:|---:|---:|---:|{}---:|---:|---:|---|\n",
        if sram { " SRAM bytes |" } else { "" },
        if sram { "---:|" } else { "" }
    ));
    for r in rows {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |{} {} | {:.4} | {:.4} | {} |\n",
            r.method,
            opt(r.search_seconds),
            opt(r.search_cpu_seconds),
            opt(r.search_peak_mb),
            r.parameters,
            r.macs,
            if sram {
                format!(" {} |", r.sram.map_or("-".into(), |v| v.to_string()))
            } else {
                String::new()
            },
            r.normal_skips,
            r.test_acc_mean,
            r.test_acc_spread,
            r.test_acc
                .iter()
                .map(|a| format!("{a:.4}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    s.push_str("\nGenotypes:\n\n");
    for r in rows {
        s.push_str(&format!(
            "- {} ({}): `{}`\n",
            r.method, r.description, r.genotype
        ));
    }
    s
}
