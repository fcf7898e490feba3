//! Budgeted searches: every epoch's genotype meets the budget by an independent count
//! (`genotype show --cost`: the cost model's parameters, the int8 plan's arena; the
//! latency table priced by hand), and a killed run resumes with the same records.

use super::{resume_reproduces, splitnas};
use std::path::Path;

/// A budgeted search (parameters under DARTS_V2's 2642 at C=4 L=3 on 1x28x28, from
/// `genotype show DARTS_V2 --cost`) resumes like the uninterrupted run, and every
/// epoch's genotype meets the budget by `genotype show --cost`'s count; plain and
/// progressive (where the finished stages' cells are part of the price).
#[test]
fn budgeted_search_stays_within_budget_and_resumes() {
    let budget = [
        "--max-params",
        "2400",
        "--eval-channels",
        "4",
        "--eval-layers",
        "3",
    ];
    let progressive = ["--progressive", "3", "--train-limit", "128"];
    for (extra, kill_after) in [(&[][..], 1), (&progressive[..], 2)] {
        let mut flags = budget.to_vec();
        flags.extend_from_slice(extra);
        let (dir, records) = resume_reproduces(&flags, 3, kill_after);
        within_budget(&dir, &records);
    }
}

/// Every record's genotype costs at most 2400 parameters at C=4 L=3, the figure the
/// record names; the last epoch ran at the final temperature, 0.05.
fn within_budget(dir: &tempfile::TempDir, records: &[serde_json::Value]) {
    let resumed = super::records(&dir.path().join("resumed"));
    for (i, (m, r)) in records.iter().zip(&resumed).enumerate() {
        assert_eq!(m["cost"], r["cost"], "epoch {}", i + 1);
        let g = m["genotype"].as_str().unwrap();
        let (params, _) = show_cost(dir.path(), g);
        assert!(params <= 2400, "epoch {}: {g}", i + 1);
        assert_eq!(params, m["cost"]["derived"]["params"].as_u64().unwrap());
    }
    let last = &records[records.len() - 1]["cost"];
    assert!((last["temperature"].as_f64().unwrap() - 0.05).abs() < 1e-12);
}

/// `genotype show --cost` of `genotype` (DARTS notation, one pair or a stage list, or a
/// zoo name) at C=4 L=3 on
/// 1x28x28: `(params, sram_bytes)`.
fn show_cost(dir: &Path, genotype: &str) -> (u64, u64) {
    let file = dir.join("g.txt");
    let arg = if genotype.contains("Genotype(") {
        std::fs::write(&file, genotype).unwrap();
        file.to_str().unwrap().to_string()
    } else {
        genotype.to_string()
    };
    let (ok, out, err) = splitnas(
        &[
            "genotype",
            "show",
            &arg,
            "--cost",
            "--channels",
            "4",
            "--layers",
            "3",
            "--image-size",
            "28",
            "--in-channels",
            "1",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let line = out.lines().last().unwrap();
    let get = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {line}"))
            .parse()
            .unwrap()
    };
    (get("params="), get("sram_bytes="))
}

/// `bench ops` of the C=4 L=3 network into `lut`; its output.
fn bench_ops(lut: &Path, repeats: usize, checks: usize) -> String {
    let (r, c) = (repeats.to_string(), checks.to_string());
    let (ok, out, err) = splitnas(
        &[
            "bench",
            "ops",
            "--channels",
            "4",
            "--layers",
            "3",
            "--repeats",
            &r,
            "--checks",
            &c,
            "--out",
            lut.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{out}\n{err}");
    out
}

/// `bench ops` writes a latency table of the C=4 L=3 network; a search within an SRAM
/// budget (DARTS_V2's arena, from `genotype show --cost`) and a latency budget (the
/// table's prediction for a random cell, so some cell meets it) derives, every epoch, a
/// pair whose plan's arena (by `genotype show --cost`) and priced latency (by hand from
/// the table) meet them, and resumes with the same records.
#[test]
fn sram_and_latency_budgets_hold_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let lut = dir.path().join("lut.json");
    let lut_s = lut.to_str().unwrap();
    let out = bench_ops(&lut, 3, 1);
    assert!(out.contains("latency_table="), "{out}");
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lut).unwrap()).unwrap();
    let cells = table["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 3);
    for (i, cell) in cells.iter().enumerate() {
        let ops = cell.as_object().unwrap();
        assert_eq!(ops.len(), 7, "cell {i}");
        // L=3: reduction cells at layers 1 and 2 (L/3, 2L/3) have stride-2 edges
        for (op, t) in ops {
            assert_eq!(t["stride2_ns"].is_u64(), i >= 1, "cell {i} {op}");
            assert!(t["stride1_ns"].is_u64(), "cell {i} {op}");
        }
        assert!(ops["sep_conv_3x3"]["stride1_ns"].as_u64().unwrap() > 0);
    }
    let latency = table["checks"][0]["predicted_ns"].as_u64().unwrap();
    let ms = format!("{:.6}", (latency + 1000) as f64 / 1e6);
    let limit_ns = (ms.parse::<f64>().unwrap() * 1e6).round() as u64;
    let (_, sram) = show_cost(dir.path(), "DARTS_V2");
    let sram_s = sram.to_string();
    let flags = [
        "--max-sram",
        &sram_s,
        "--max-latency-ms",
        &ms,
        "--latency-table",
        lut_s,
        "--eval-channels",
        "4",
        "--eval-layers",
        "3",
    ];
    let (run, records) = resume_reproduces(&flags, 3, 1);
    let resumed = super::records(&run.path().join("resumed"));
    let edge = |cell: usize, op: &str, stride: usize| -> u64 {
        if op == "skip_connect" && stride == 1 {
            return 0;
        }
        cells[cell][op][format!("stride{stride}_ns")]
            .as_u64()
            .unwrap()
    };
    for (m, r) in records.iter().zip(&resumed) {
        assert_eq!(m["cost"], r["cost"]);
        let c = &m["cost"];
        let g = m["genotype"].as_str().unwrap();
        let (_, arena) = show_cost(run.path(), g);
        assert_eq!(c["derived"]["sram"].as_u64().unwrap(), arena, "{g}");
        assert!(arena <= sram, "{arena} > {sram}: {g}");
        assert!(c["expected_sram"].is_f64() && c["expected_latency_ns"].is_f64());
        // by hand: fixed + per cell (normal, reduce, reduce at L=3) its edges
        let pair: Vec<Vec<(String, usize)>> = ["normal=[", "reduce=["]
            .iter()
            .map(|key| {
                let list = g.split(key).nth(1).unwrap().split(']').next().unwrap();
                list.split("),")
                    .map(|e| {
                        let e = e.trim_matches(|ch: char| "() ,".contains(ch));
                        let (op, input) = e.split_once(',').unwrap();
                        (
                            op.trim().trim_matches('\'').to_string(),
                            input.trim().trim_end_matches(')').parse().unwrap(),
                        )
                    })
                    .collect()
            })
            .collect();
        let mut want = table["fixed_ns"].as_u64().unwrap();
        for cell in 0..3 {
            let reduction = cell >= 1;
            for (op, input) in &pair[usize::from(reduction)] {
                let stride = if reduction && *input < 2 { 2 } else { 1 };
                want += edge(cell, op, stride);
            }
        }
        assert_eq!(c["derived"]["latency_ns"].as_u64().unwrap(), want, "{g}");
        assert!(want <= limit_ns, "{want} > {limit_ns}: {g}");
    }
}

/// Impossible SRAM and latency budgets and a table of other sizes: refused before
/// anything is written, named by their flags.
#[test]
fn bad_sram_and_latency_budgets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lut = dir.path().join("lut.json");
    let lut_s = lut.to_str().unwrap();
    bench_ops(&lut, 1, 0);
    let out = dir.path().join("s");
    let out_s = out.to_str().unwrap();
    let eval = ["--eval-channels", "4", "--eval-layers", "3"];
    let cases: &[(&[&str], &str)] = &[
        (&["--max-sram", "1000"], "--max-sram 1000: no cell meets it"),
        (
            &["--max-latency-ms", "0.000001", "--latency-table", lut_s],
            "--max-latency-ms 0.000: no cell meets it",
        ),
        (
            &[
                "--max-latency-ms",
                "5",
                "--latency-table",
                lut_s,
                "--eval-channels",
                "8",
            ],
            "--latency-table: measured on C=4 L=3",
        ),
        (
            &[
                "--max-latency-ms",
                "5",
                "--latency-table",
                "/nonexistent/lut.json",
            ],
            "--latency-table /nonexistent/lut.json",
        ),
        (&["--max-latency-ms", "5"], "--latency-table"),
        (
            &["--max-latency-ms", "0", "--latency-table", lut_s],
            "--max-latency-ms must be a positive number",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["search", "--dataset", "fashion-mnist", "--out", out_s];
        args.extend_from_slice(extra);
        // a later --eval-channels overrides the first (clap keeps the last)
        if !extra.contains(&"--eval-channels") {
            args.extend_from_slice(&eval);
        } else {
            args.extend_from_slice(&eval[2..]);
        }
        let (ok, _, stderr) = splitnas(&args, &[]);
        assert!(!ok, "{extra:?} must fail");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!out.join("config.json").exists());
    let (ok, _, err) = splitnas(
        &[
            "bench",
            "ops",
            "--channels",
            "4",
            "--layers",
            "2",
            "--out",
            lut_s,
        ],
        &[],
    );
    assert!(!ok && err.contains("--layers"), "{err}");
}

/// The board path: `bench ops --emit` writes the networks, `bench run --steps-out` (the
/// code `splitnas-run bench` runs) times each, `bench ops --from` builds the table from
/// those files alone; a directory emitted for other sizes is refused.
#[test]
fn a_latency_table_from_step_files_timed_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let em = dir.path().join("em");
    let em_s = em.to_str().unwrap();
    let sizes = ["--channels", "4", "--layers", "3"];
    let mut emit = vec!["bench", "ops", "--checks", "1", "--emit", em_s];
    emit.extend_from_slice(&sizes);
    let (ok, out, err) = splitnas(&emit, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 15 networks"), "{out}");
    for entry in std::fs::read_dir(&em).unwrap() {
        let f = entry.unwrap().path();
        if f.extension().is_some_and(|e| e == "onnx") {
            let steps = f.with_extension("steps.json");
            let (ok, _, err) = splitnas(
                &[
                    "bench",
                    "run",
                    f.to_str().unwrap(),
                    "--iters",
                    "2",
                    "--steps-out",
                    steps.to_str().unwrap(),
                ],
                &[],
            );
            assert!(ok, "{err}");
        }
    }
    let lut = dir.path().join("lut.json");
    let mut from = vec![
        "bench",
        "ops",
        "--from",
        em_s,
        "--out",
        lut.to_str().unwrap(),
    ];
    from.extend_from_slice(&sizes);
    let (ok, out, err) = splitnas(&from, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("checks=1"), "{out}");
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&lut).unwrap()).unwrap();
    assert_eq!(t["repeats"], 2);
    assert_eq!(t["cells"].as_array().unwrap().len(), 3);
    for cell in t["cells"].as_array().unwrap() {
        assert!(cell["dil_conv_5x5"]["stride1_ns"].as_u64().unwrap() > 0);
    }
    let mut other = from.clone();
    let at = other.len() - 3;
    other[at] = "8";
    let (ok, _, err) = splitnas(&other, &[]);
    assert!(!ok && err.contains("were emitted at"), "{err}");
}
