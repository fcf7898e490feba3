//! User journey: search a cell on real Fashion-MNIST, kill and resume, hand the genotype
//! to `train`, bad flags.

/// Budgeted searches (parameters, SRAM, latency).
#[path = "search/budget.rs"]
mod budget;
mod common;
/// Data-parallel search (worker processes, several machines, a killed worker).
#[path = "search/parallel.rs"]
mod parallel;

use std::path::Path;
use std::process::Command;

fn splitnas(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_splitnas"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run splitnas");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("search.jsonl"))
        .expect("search.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("search.jsonl line is JSON"))
        .collect()
}

/// `splitnas train` of a genotype file on Fashion-MNIST, tiny: C=4, L=3, 1 epoch, the
/// first `train_limit` training and 64 test images.
fn train_small(gfile: &Path, out: &Path, train_limit: usize) -> (bool, String, String) {
    let limit = train_limit.to_string();
    splitnas(
        &[
            "train",
            "--genotype",
            gfile.to_str().unwrap(),
            "--dataset",
            "fashion-mnist",
            "--channels",
            "4",
            "--layers",
            "3",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--train-limit",
            &limit,
            "--test-limit",
            "64",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    )
}

fn args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["search", "--dataset", "fashion-mnist", "--out", out];
    v.extend_from_slice(extra);
    v
}

/// Search is killed (abort right after the epoch-1 checkpoint) and resumed.
fn killed_and_resumed(out: &str, extra: &[&str]) {
    killed_after_and_resumed(out, extra, 1)
}

/// Search is killed right after the checkpoint of `epoch`, then resumed.
fn killed_after_and_resumed(out: &str, extra: &[&str], epoch: usize) {
    let e = epoch.to_string();
    let (ok, _, _) = splitnas(&args(out, extra), &[("SPLITNAS_ABORT_AFTER_EPOCH", &e)]);
    assert!(!ok, "the abort hook must kill the run");
    assert_eq!(records(Path::new(out)).len(), epoch);
    let mut resume = args(out, extra);
    resume.push("--resume");
    let (ok, stdout, stderr) = splitnas(&resume, &[]);
    assert!(ok, "resume failed: {stdout}\n{stderr}");
    assert!(stdout.contains("resuming search"), "{stdout}");
}

#[test]
fn short_real_search_writes_a_trainable_genotype_and_resumes() {
    // The short search: 2000 real images (1000 weight / 1000 architecture),
    // C=8, L=5, 2 epochs of which 1 warm-up; run as kill-after-epoch-1 + resume.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("search");
    let out_s = out.to_str().unwrap();
    let extra = [
        "--train-limit",
        "2000",
        "--channels",
        "8",
        "--layers",
        "5",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--batch-size",
        "64",
    ];
    killed_and_resumed(out_s, &extra);
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["epoch"], i + 1);
        for key in [
            "train_loss",
            "train_acc",
            "valid_loss",
            "valid_acc",
            "seconds",
        ] {
            assert!(r[key].is_number(), "{key} missing in {r}");
        }
        assert!(r["genotype"]
            .as_str()
            .unwrap()
            .starts_with("Genotype(normal=["));
        let h = r["alpha_entropy"]["normal"].as_f64().unwrap();
        // Entropy of 8 ops is at most ln 8.
        assert!(h > 0.0 && h <= 8f64.ln() + 1e-6, "{h}");
    }
    assert_eq!(recs[0]["arch_updated"], false);
    assert_eq!(recs[1]["arch_updated"], true);
    // Weights learned something on real data (chance is 0.1).
    assert!(recs[1]["valid_acc"].as_f64().unwrap() > 0.2, "{}", recs[1]);

    // genotype.json is what `genotype show` prints for it, and matches the last record.
    let gfile = out.join("genotype.json");
    let (ok, shown, err) = splitnas(
        &[
            "genotype",
            "show",
            gfile.to_str().unwrap(),
            "--format",
            "darts",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(shown.trim(), recs[1]["genotype"].as_str().unwrap());
    let alphas: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("alphas.json")).unwrap()).unwrap();
    for row in alphas["normal"]["alphas"].as_array().unwrap() {
        let s: f64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((s - 1.0).abs() < 1e-4, "softmax rows sum to 1: {s}");
    }

    // The genotype trains.
    let tout = dir.path().join("train");
    let (ok, stdout, stderr) = train_small(&gfile, &tout, 128);
    assert!(ok, "train on the searched genotype: {stdout}\n{stderr}");
}

#[test]
fn resumed_search_reproduces_the_uninterrupted_one() {
    resume_reproduces(&["--selector", "split"], 2, 1);
}

/// ADARTS selector: combines with `--order second` and `--resume` (its attention modules
/// are weights, checkpointed and restored with them).
#[test]
fn attention_selector_second_order_resumes_like_the_uninterrupted_run() {
    resume_reproduces(&["--selector", "attention"], 2, 1);
}

/// Slim-DARTS (random subset + spatial reconstruction + learned proportion) combines with
/// `--order second` and `--resume`; the learned proportions are logged per edge.
#[test]
fn slim_options_second_order_resume_like_the_uninterrupted_run() {
    let (dir, recs) = resume_reproduces(
        &[
            "--selector",
            "random",
            "--spatial-reconstruction",
            "--learn-proportion",
            "--channels",
            "8",
            "--train-limit",
            "128",
        ],
        2,
        1,
    );
    for r in &recs {
        for cell in ["normal", "reduce"] {
            let rows = r["weights"][cell]["proportions"]
                .as_array()
                .expect("proportions");
            assert_eq!(rows.len(), 14);
            let mut expected = 0.0;
            for row in rows {
                let p: Vec<f64> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                assert_eq!(p.len(), 3);
                assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
                expected += (p[0] / 2.0 + p[1] / 4.0 + p[2] / 8.0) / 14.0;
            }
            // The logged mean proportion is the mean over edges of sum_i p_i / K_i.
            let logged = r["proportion"][cell].as_f64().unwrap();
            assert!((logged - expected).abs() < 1e-6, "{logged} vs {expected}");
        }
    }
    drop(dir);
}

/// LFR-DARTS progressive search: 3 stages of 1 epoch, second order, killed after stage 2
/// (so the resume rebuilds the frozen stage-1 cells from search.jsonl) and resumed: the
/// same records as the uninterrupted run, and a 3-stage genotype that trains, exports and
/// runs (tract's logits = the runtime's within 1e-4, tract's accuracy = the reported one).
#[test]
fn progressive_search_resumes_and_its_per_stage_genotype_trains_and_exports() {
    let (dir, recs) = resume_reproduces(&["--progressive", "3", "--train-limit", "128"], 3, 2);
    let stages: Vec<u64> = recs.iter().map(|r| r["stage"].as_u64().unwrap()).collect();
    assert_eq!(stages, [1, 2, 3]);
    let gfile = dir.path().join("full").join("genotype.json");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&gfile).unwrap()).unwrap();
    let pairs = g["stages"].as_array().expect("a per-stage genotype");
    assert_eq!(pairs.len(), 3);
    // Each stage's cells are the ones derived at the end of that stage.
    let after = |epoch: usize| recs[epoch - 1]["genotype"].as_str().unwrap().to_string();
    let stage_of = |darts: &str, s: usize| -> serde_json::Value {
        let f = dir.path().join(format!("g{s}.txt"));
        std::fs::write(&f, darts).unwrap();
        let (ok, json, err) = splitnas(&["genotype", "show", f.to_str().unwrap()], &[]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["stages"][s].clone()
    };
    assert_eq!(pairs[0]["normal"], stage_of(&after(1), 0)["normal"]);
    assert_eq!(pairs[1], stage_of(&after(2), 1));
    assert_eq!(pairs[2], stage_of(&after(3), 2));

    let run = dir.path().join("run");
    let (ok, stdout, stderr) = train_small(&gfile, &run, 256);
    assert!(ok, "train on the per-stage genotype: {stdout}\n{stderr}");
    let onnx = dir.path().join("model.onnx");
    let (ok, stdout, stderr) = splitnas(
        &[
            "export",
            "--run",
            run.to_str().unwrap(),
            "--out",
            onnx.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "export: {stdout}\n{stderr}");
    // The first 8 test images, normalized with the run's mean/std, through tract and
    // through `splitnas run`.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let (mean, std) = (
        config["mean"][0].as_f64().unwrap() as f32,
        config["std"][0].as_f64().unwrap() as f32,
    );
    let data = splitnas_search::data::load(
        splitnas_search::data::DatasetKind::FashionMnist,
        &splitnas_search::data::DataOptions {
            dir: None,
            train_limit: Some(1),
            test_limit: Some(64),
            seed: 0,
        },
    )
    .unwrap();
    let x: Vec<f32> = data
        .test
        .pixels
        .iter()
        .map(|&p| (p as f32 / 255.0 - mean) / std)
        .collect();
    let ours = common::tract(&onnx, &x, [64, 1, 28, 28]);
    let correct = ours
        .chunks(10)
        .zip(&data.test.labels)
        .filter(|(row, &l)| (0..10).fold(0, |b, j| if row[j] > row[b] { j } else { b }) == l)
        .count();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(
        (correct as f64 / 64.0 - last["test_acc"].as_f64().unwrap()).abs() < 1e-9,
        "tract accuracy {correct}/64 vs reported {}",
        last["test_acc"]
    );
    let npy = dir.path().join("x.npy");
    common::write_npy(&npy, &x[..8 * 784], &[8, 1, 28, 28]);
    let logits = dir.path().join("logits.npy");
    let (ok, stdout, stderr) = splitnas(
        &[
            "run",
            onnx.to_str().unwrap(),
            "--input",
            npy.to_str().unwrap(),
            "--output",
            logits.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "run: {stdout}\n{stderr}");
    let (shape, runtime) = common::read_npy(&logits);
    assert_eq!(shape, [8, 10]);
    let d = common::max_abs(&runtime, &ours[..80]);
    assert!(d < 1e-4, "runtime vs tract {d}");
}

/// Runs a small second-order search uninterrupted and killed after `kill_after` + resumed;
/// asserts both wrote the same records and alphas. Returns the temp dir (`full/`,
/// `resumed/`) and the records.
fn resume_reproduces(
    flags: &[&str],
    epochs: usize,
    kill_after: usize,
) -> (tempfile::TempDir, Vec<serde_json::Value>) {
    // Small and second order (the unrolled step uses the weight optimizer's state,
    // so it exercises every restored piece).
    let dir = tempfile::tempdir().unwrap();
    let epochs_s = epochs.to_string();
    let mut extra = vec![
        "--layers",
        "3",
        "--epochs",
        &epochs_s,
        "--warmup-epochs",
        "0",
        "--batch-size",
        "64",
        "--order",
        "second",
    ];
    for (flag, default) in [("--channels", "4"), ("--train-limit", "256")] {
        if !flags.contains(&flag) {
            extra.extend_from_slice(&[flag, default]);
        }
    }
    extra.extend_from_slice(flags);
    let full = dir.path().join("full");
    let (ok, stdout, stderr) = splitnas(&args(full.to_str().unwrap(), &extra), &[]);
    assert!(ok, "{stdout}\n{stderr}");
    let resumed = dir.path().join("resumed");
    killed_after_and_resumed(resumed.to_str().unwrap(), &extra, kill_after);
    let (a, b) = (records(&full), records(&resumed));
    assert_eq!(a.len(), epochs);
    for (x, y) in a.iter().zip(&b) {
        for key in [
            "train_loss",
            "train_acc",
            "valid_loss",
            "valid_acc",
            "genotype",
            "stage",
            "proportion",
        ] {
            assert_eq!(x[key], y[key], "{key} differs after resume");
        }
    }
    let read = |d: &Path| std::fs::read_to_string(d.join("alphas.json")).unwrap();
    let (fa, ra): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&read(&full)).unwrap(),
        serde_json::from_str(&read(&resumed)).unwrap(),
    );
    assert_eq!(fa["normal"], ra["normal"]);
    assert_eq!(fa["reduce"], ra["reduce"]);
    (dir, a)
}

#[test]
fn bad_search_flags_are_rejected_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let out_s = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--channels", "6", "--partial-k", "4"],
            "--partial-k 4 does not divide --channels 6",
        ),
        (
            &["--epochs", "2", "--warmup-epochs", "5"],
            "--warmup-epochs",
        ),
        (&["--selector", "magic"], "unknown selector 'magic'"),
        (&["--progressive", "2"], "--progressive: takes 3 (got 2)"),
        // 5 stages would also leave a stage without search epochs: the count is named first
        (&["--progressive", "5"], "--progressive: takes 3 (got 5)"),
        (
            &[
                "--progressive",
                "3",
                "--epochs",
                "5",
                "--warmup-epochs",
                "1",
            ],
            "stage 1 (1 epochs) has no epoch left",
        ),
        (
            &["--learn-proportion", "--channels", "12"],
            "--learn-proportion: needs --channels divisible by 8",
        ),
        (
            &["--learn-proportion", "--partial-k", "4"],
            "cannot be used with",
        ),
        (&["--arch-lr", "0"], "--arch-lr: must be a positive number"),
        (&["--order", "third"], "unknown order 'third'"),
        (&["--train-portion", "1.5"], "--train-portion"),
        (&["--device", "tpu"], "--device"),
        // budgets: one no cell meets (the all-pooling cell of the C=8 L=5 evaluation
        // network has 15,026 parameters), and bad budget settings
        (
            &[
                "--max-params",
                "100",
                "--eval-channels",
                "8",
                "--eval-layers",
                "5",
            ],
            "--max-params 100: no cell meets it: the cheapest cell pair gives 15026 params",
        ),
        (
            &[
                "--max-macs",
                "1000",
                "--eval-channels",
                "8",
                "--eval-layers",
                "5",
            ],
            "--max-macs 1000: no cell meets it",
        ),
        (
            &["--max-params", "1", "--eval-layers", "2"],
            "--eval-layers 2",
        ),
        (
            &["--max-params", "1", "--cost-weight", "0"],
            "--cost-weight",
        ),
        (
            &["--max-params", "1", "--cost-temperature", "2"],
            "--cost-temperature must be in (0, 1]",
        ),
    ];
    for (extra, needle) in cases {
        let (ok, _, stderr) = splitnas(&args(out_s, extra), &[]);
        assert!(!ok, "{extra:?} must fail");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // refused before searching: nothing written
    assert!(!out.join("config.json").exists());
    let (ok, _, stderr) = splitnas(&args(out_s, &["--resume"]), &[]);
    assert!(!ok);
    assert!(stderr.contains("no checkpoint.json"), "{stderr}");
}

/// `bench search-step` of a tiny supernet (C=4 L=3, batch 4, 16x16), 3 timed steps.
fn tiny_search_step(extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "bench",
        "search-step",
        "--channels",
        "4",
        "--layers",
        "3",
        "--batch-size",
        "4",
        "--image-size",
        "16",
        "--steps",
        "3",
    ];
    args.extend_from_slice(extra);
    splitnas(&args, &[])
}

#[test]
fn search_step_benchmark_prints_its_figures() {
    let (ok, stdout, stderr) = tiny_search_step(&[]);
    assert!(ok, "{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("step_s=") && last.contains(" images_per_s="),
        "{last}"
    );
    // Every timed step on the line before, and the contract line's figure is their median.
    let each = stdout
        .lines()
        .find_map(|l| l.strip_prefix("steps_s="))
        .unwrap_or_else(|| panic!("no steps_s line: {stdout}"));
    let mut times: Vec<f64> = each.split(',').map(|t| t.parse().unwrap()).collect();
    assert_eq!(times.len(), 3, "{each}");
    times.sort_by(|a, b| a.total_cmp(b));
    let median: f64 = last["step_s=".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((median - times[1]).abs() < 1e-4, "{median} vs {times:?}");
    // Two workers: worker 0 prints the same lines once (its shard's steps, all-reduce
    // included), for the whole batch's images.
    let (ok, stdout, stderr) = tiny_search_step(&["--devices", "2"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("step_s="))
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let each = stdout
        .lines()
        .find_map(|l| l.strip_prefix("steps_s="))
        .unwrap_or_default();
    assert_eq!(each.split(',').count(), 3, "{stdout}");
    // Bad sizes name their flag.
    for (flags, needle) in [
        (
            ["--image-size", "4"],
            "--image-size: must be at least 8 (got 4)",
        ),
        (
            ["--image-size", "10"],
            "--image-size: must be divisible by 4 (got 10)",
        ),
        (["--partial-k", "0"], "--partial-k must be at least 1"),
    ] {
        let mut a = vec!["bench", "search-step", "--steps", "1"];
        a.extend_from_slice(&flags);
        let (ok, _, stderr) = splitnas(&a, &[]);
        assert!(!ok && stderr.contains(needle), "{flags:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
