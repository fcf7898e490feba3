//! User journey: search a cell on real Fashion-MNIST, kill and resume, hand the genotype
//! to `train`, bad flags.

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

fn args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["search", "--dataset", "fashion-mnist", "--out", out];
    v.extend_from_slice(extra);
    v
}

/// Search is killed (abort right after the epoch-1 checkpoint) and resumed.
fn killed_and_resumed(out: &str, extra: &[&str]) {
    let (ok, _, _) = splitnas(&args(out, extra), &[("SPLITNAS_ABORT_AFTER_EPOCH", "1")]);
    assert!(!ok, "the abort hook must kill the run");
    assert_eq!(records(Path::new(out)).len(), 1);
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
    let (ok, stdout, stderr) = splitnas(
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
            "128",
            "--test-limit",
            "64",
            "--out",
            tout.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "train on the searched genotype: {stdout}\n{stderr}");
}

#[test]
fn resumed_search_reproduces_the_uninterrupted_one() {
    resume_reproduces("split");
}

/// ADARTS selector: combines with `--order second` and `--resume` (its attention modules
/// are weights, checkpointed and restored with them).
#[test]
fn attention_selector_second_order_resumes_like_the_uninterrupted_run() {
    resume_reproduces("attention");
}

fn resume_reproduces(selector: &str) {
    // Small and second order (the unrolled step uses the weight optimizer's state,
    // so it exercises every restored piece).
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--selector",
        selector,
        "--train-limit",
        "256",
        "--channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "2",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "64",
        "--order",
        "second",
    ];
    let full = dir.path().join("full");
    let (ok, stdout, stderr) = splitnas(&args(full.to_str().unwrap(), &extra), &[]);
    assert!(ok, "{stdout}\n{stderr}");
    let resumed = dir.path().join("resumed");
    killed_and_resumed(resumed.to_str().unwrap(), &extra);
    let (a, b) = (records(&full), records(&resumed));
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        for key in [
            "train_loss",
            "train_acc",
            "valid_loss",
            "valid_acc",
            "genotype",
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
        (&["--order", "third"], "unknown order 'third'"),
        (&["--train-portion", "1.5"], "--train-portion"),
        (&["--device", "tpu"], "--device"),
    ];
    for (extra, needle) in cases {
        let (ok, _, stderr) = splitnas(&args(out_s, extra), &[]);
        assert!(!ok, "{extra:?} must fail");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let (ok, _, stderr) = splitnas(&args(out_s, &["--resume"]), &[]);
    assert!(!ok);
    assert!(stderr.contains("no checkpoint.json"), "{stderr}");
}

#[test]
fn search_step_benchmark_prints_its_figures() {
    let (ok, stdout, stderr) = splitnas(
        &[
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
            "1",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("step_s=") && last.contains(" images_per_s="),
        "{last}"
    );
}
