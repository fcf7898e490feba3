//! User journey: compare the channel-split methods on one budget. A tiny synthetic run:
//! one search method + the two published cells + one random cell, two training seeds.

use std::path::Path;
use std::process::Command;

fn splitnas(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splitnas"))
        .args(args)
        .output()
        .expect("run splitnas");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tiny(out: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "compare",
        "--dataset",
        "synthetic",
        "--methods",
        "split",
        "--channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--batch-size",
        "16",
        "--search-limit",
        "64",
        "--train-channels",
        "4",
        "--train-layers",
        "3",
        "--train-epochs",
        "1",
        "--train-batch-size",
        "32",
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--seeds",
        "2",
        "--random-genotypes",
        "1",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn last_test_acc(dir: &Path) -> f64 {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["test_acc"].as_f64().unwrap()
}

#[test]
fn compare_writes_a_table_from_its_runs_and_continues_instead_of_repeating() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let out_s = out.to_str().unwrap();
    let args = tiny(out_s, &[]);
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (ok, stdout, stderr) = splitnas(&argv);
    assert!(ok, "{stdout}\n{stderr}");

    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    let rows = file["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["split", "DARTS_V2", "PC_DARTS", "random_1"]);
    for r in rows {
        let name = r["method"].as_str().unwrap();
        // Each accuracy is the last test_acc of that seed's own training run.
        let accs: Vec<f64> = (0..2)
            .map(|s| last_test_acc(&out.join("train").join(format!("{name}-seed{s}"))))
            .collect();
        let listed: Vec<f64> = r["test_acc"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(listed, accs, "{name}");
        let mean = r["test_acc_mean"].as_f64().unwrap();
        assert!((mean - (accs[0] + accs[1]) / 2.0).abs() < 1e-12);
        let spread = r["test_acc_spread"].as_f64().unwrap();
        assert!((spread - (accs[0] - accs[1]).abs()).abs() < 1e-12);
        // The genotype trained is the one listed; its skip count is counted from it.
        let g =
            std::fs::read_to_string(out.join("genotypes").join(format!("{name}.json"))).unwrap();
        let (ok, darts, _) = splitnas(&[
            "genotype",
            "show",
            out.join("genotypes")
                .join(format!("{name}.json"))
                .to_str()
                .unwrap(),
            "--format",
            "darts",
        ]);
        assert!(ok && darts.trim() == r["genotype"].as_str().unwrap(), "{g}");
        let normal = darts.split("reduce=").next().unwrap();
        assert_eq!(
            normal.matches("skip_connect").count() as u64,
            r["normal_skips"].as_u64().unwrap(),
            "{name}"
        );
        assert!(r["parameters"].as_u64().unwrap() > 1000);
    }
    // The searched row: its genotype is the search's, with a time and a peak memory.
    let split = &rows[0];
    let searched = std::fs::read_to_string(out.join("search/split/search.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(searched.lines().last().unwrap()).unwrap();
    assert_eq!(split["genotype"], last["genotype"]);
    assert!(split["search_seconds"].as_f64().unwrap() > 0.0);
    assert!(split["search_cpu_seconds"].as_f64().unwrap() > 0.0);
    let peak = split["search_peak_mb"].as_f64().unwrap();
    assert!(peak > 10.0 && peak < 64_000.0, "{peak}");
    assert!(rows[1]["search_seconds"].is_null());
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| DARTS_V2 |"), "{md}");

    // A rerun with the same settings repeats nothing; other settings are refused.
    let (ok, stdout, stderr) = splitnas(&argv);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("done before").count(), 1 + 4 * 2, "{stdout}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(again["rows"], file["rows"]);
    let other = tiny(out_s, &["--seed", "5"]);
    let other: Vec<&str> = other.iter().map(|s| s.as_str()).collect();
    let (ok, _, stderr) = splitnas(&other);
    assert!(!ok && stderr.contains("other settings"), "{stderr}");
    let (ok, _, stderr) = splitnas(&["compare", "--methods", "split,magic", "--out", out_s]);
    assert!(!ok && stderr.contains("unknown method 'magic'"), "{stderr}");
    // A child that fails: its command, exit code, log file and last lines are reported.
    let bad = dir.path().join("bad");
    let (ok, _, stderr) = splitnas(&[
        "compare",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        "/nonexistent-splitnas",
        "--methods",
        "split",
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok, "{stderr}");
    for needle in [
        "`splitnas search --dataset fashion-mnist",
        "failed (exit code 1)",
        "search-split.log",
        "/nonexistent-splitnas/train-images-idx3-ubyte",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `genotype show NAME --cost` at the tiny comparison's training sizes (3x32x32, 10
/// classes, C=4 L=3): the parameters.
fn params_of(genotype: &str) -> u64 {
    let (ok, out, err) = splitnas(&[
        "genotype",
        "show",
        genotype,
        "--cost",
        "--channels",
        "4",
        "--layers",
        "3",
    ]);
    assert!(ok, "{err}");
    let line = out.lines().last().unwrap();
    let params = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("params="));
    params.unwrap().parse().unwrap()
}

/// A budget below DARTS_V2's parameters: both published cells are left out, the random
/// cells and the searched one meet it, every row reports its cost, and the parameters
/// the trained networks count (`splitnas train`) are the cost model's.
#[test]
fn compare_under_a_parameter_budget_keeps_every_row_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let budget = params_of("DARTS_V2") - 1;
    assert!(budget < params_of("PC_DARTS"));
    let b = budget.to_string();
    let args = tiny(out.to_str().unwrap(), &["--max-params", &b]);
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let (ok, stdout, stderr) = splitnas(&argv);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("DARTS_V2: ") && stdout.contains("over the budget, left out"));
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(
        file["settings"]["budget"]["max_params"].as_u64(),
        Some(budget)
    );
    let rows = file["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["split", "random_1"]);
    for r in rows {
        let name = r["method"].as_str().unwrap();
        let trained = r["parameters"].as_u64().unwrap();
        let gfile = out.join("genotypes").join(format!("{name}.json"));
        assert_eq!(trained, params_of(gfile.to_str().unwrap()), "{name}");
        assert!(trained <= budget, "{name}: {trained} > {budget}");
        assert!(r["macs"].as_u64().unwrap() > 0);
    }
    // the search recorded its expected and derived cost per epoch
    let log = std::fs::read_to_string(out.join("search/split/search.jsonl")).unwrap();
    for line in log.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(m["cost"]["derived"]["params"].as_u64().unwrap() <= budget);
        assert!(m["cost"]["expected_params"].as_f64().unwrap() > 0.0);
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains(&format!("parameters <= {budget}")), "{md}");
}
