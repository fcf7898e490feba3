//! User journey: `splitnas export` from a genotype template and from a training run; the
//! file is read back with onnx-protobuf and run by tract (an independent ONNX
//! implementation). Bad input: a clear error and no file left behind.

use onnx_protobuf::{Message, ModelProto};
use splitnas_search::data::{self, DataOptions, DatasetKind};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
mod common;
use common::tract;

fn splitnas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_splitnas"))
        .args(args)
        .output()
        .expect("run splitnas")
}

fn ok(args: &[&str]) -> String {
    let out = splitnas(args);
    assert!(
        out.status.success(),
        "splitnas {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The error message of a run that must fail (exit code 1, no panic).
fn fails(args: &[&str]) -> String {
    let out = splitnas(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "splitnas {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The `key=value` pairs of the last output line.
fn summary(stdout: &str) -> HashMap<String, f64> {
    stdout
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

fn metadata(model: &ModelProto) -> HashMap<String, String> {
    model
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

fn only_file(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn template_export_reports_what_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pc.onnx");
    let stdout = ok(&[
        "export",
        "--genotype",
        "PC_DARTS",
        "--init-seed",
        "3",
        "--channels",
        "6",
        "--layers",
        "4",
        "--in-channels",
        "1",
        "--image-size",
        "16",
        "--classes",
        "5",
        "--identity",
        "--out",
        path.to_str().unwrap(),
    ]);
    let s = summary(&stdout);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(s["file_bytes"] as usize, bytes.len());
    let model = ModelProto::parse_from_bytes(&bytes).unwrap();
    let g = model.graph.as_ref().unwrap();
    assert_eq!(s["nodes"] as usize, g.node.len());
    let floats: i64 = g
        .initializer
        .iter()
        .filter(|t| t.data_type == 1)
        .map(|t| t.dims.iter().product::<i64>())
        .sum();
    assert_eq!(s["parameters"] as i64, floats);
    assert!(s["macs"] > 0.0);
    let meta = metadata(&model);
    assert_eq!(meta["dataset"], "none");
    assert_eq!(meta["mean"], "[0.0]");
    let x: Vec<f32> = (0..2 * 16 * 16).map(|i| (i % 7) as f32 / 7.0).collect();
    let logits = tract(&path, &x, [2, 1, 16, 16]);
    assert_eq!(logits.len(), 2 * 5);
    assert!(logits.iter().all(|v| v.is_finite()));

    // The same seed gives the same file; another seed other weights.
    let again = dir.path().join("again.onnx");
    let other = dir.path().join("other.onnx");
    for (p, seed) in [(&again, "3"), (&other, "4")] {
        ok(&[
            "export",
            "--genotype",
            "PC_DARTS",
            "--init-seed",
            seed,
            "--channels",
            "6",
            "--layers",
            "4",
            "--in-channels",
            "1",
            "--image-size",
            "16",
            "--classes",
            "5",
            "--identity",
            "--out",
            p.to_str().unwrap(),
        ]);
    }
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
    assert_ne!(std::fs::read(&other).unwrap(), bytes);
}

/// A short training run on the synthetic data set, exported; the file carries the run's
/// normalization and class names, and tract's accuracy on the run's test images (normalized
/// here with the file's mean/std) is the accuracy the run reported.
#[test]
fn trained_run_exports_with_its_metadata_and_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    ok(&[
        "train",
        "--genotype",
        "DARTS_V1",
        "--dataset",
        "synthetic",
        "--channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--train-limit",
        "256",
        "--test-limit",
        "64",
        "--lr",
        "0.05",
        "--out",
        run_s,
    ]);
    let onnx = dir.path().join("model.onnx");
    ok(&["export", "--run", run_s, "--out", onnx.to_str().unwrap()]);
    let model = ModelProto::parse_from_bytes(&std::fs::read(&onnx).unwrap()).unwrap();
    let meta = metadata(&model);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let mean: Vec<f32> = serde_json::from_str(&meta["mean"]).unwrap();
    let std: Vec<f32> = serde_json::from_str(&meta["std"]).unwrap();
    let classes: Vec<String> = serde_json::from_str(&meta["classes"]).unwrap();
    let f32s = |v: &serde_json::Value| serde_json::from_value::<Vec<f32>>(v.clone()).unwrap();
    assert_eq!(mean, f32s(&config["mean"]));
    assert_eq!(std, f32s(&config["std"]));
    assert_eq!(serde_json::json!(classes), config["classes"]);
    assert_eq!(meta["dataset"], "synthetic");
    assert_eq!(meta["genotype"], config["genotype_darts"].as_str().unwrap());

    let data = data::load(
        DatasetKind::Synthetic,
        &DataOptions {
            dir: None,
            train_limit: Some(256),
            test_limit: Some(64),
            seed: 0,
        },
    )
    .unwrap();
    let t = &data.test;
    let (c, s) = (t.channels, t.side);
    let x: Vec<f32> = t
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let ch = (i / (s * s)) % c;
            (p as f32 / 255.0 - mean[ch]) / std[ch]
        })
        .collect();
    let logits = tract(&onnx, &x, [t.len(), c, s, s]);
    let k = classes.len();
    let correct = logits
        .chunks(k)
        .zip(&t.labels)
        .filter(|(row, &label)| {
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best == label
        })
        .count();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let reported = last["test_acc"].as_f64().unwrap();
    assert!(
        (correct as f64 / t.len() as f64 - reported).abs() < 1e-9,
        "tract accuracy {correct}/{} vs reported {reported}",
        t.len()
    );

    // Bad input: the weights of this run under another genotype or size, corrupt files.
    let bad = dir.path().join("bad");
    let copy = |name: &str| {
        let d = bad.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.mpk"] {
            std::fs::copy(run.join(f), d.join(f)).unwrap();
        }
        d
    };
    let edit = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = config.clone();
        f(&mut v);
        std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    };
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let target = out.join("x.onnx");
    let t_s = target.to_str().unwrap();
    let v2: serde_json::Value =
        serde_json::from_str(&ok(&["genotype", "show", "DARTS_V2"])).unwrap();

    let d = copy("other_genotype");
    edit(&d, &|c| {
        c["genotype"] = v2.clone();
        c["network"]["genotype"] = v2.clone();
    });
    let e = fails(&["export", "--run", d.to_str().unwrap(), "--out", t_s]);
    assert!(
        e.contains("model.mpk") && e.contains("another network") && e.contains("cells.0.ops"),
        "{e}"
    );

    let d = copy("wider");
    edit(&d, &|c| c["network"]["channels"] = 8.into());
    let e = fails(&["export", "--run", d.to_str().unwrap(), "--out", t_s]);
    assert!(e.contains("stem_conv.weight") && e.contains("shape"), "{e}");

    let d = copy("deeper");
    edit(&d, &|c| c["network"]["layers"] = 5.into());
    let e = fails(&["export", "--run", d.to_str().unwrap(), "--out", t_s]);
    assert!(e.contains("cells has 3 entries"), "{e}");

    let d = copy("truncated");
    let w = std::fs::read(run.join("model.mpk")).unwrap();
    std::fs::write(d.join("model.mpk"), &w[..w.len() / 2]).unwrap();
    let e = fails(&["export", "--run", d.to_str().unwrap(), "--out", t_s]);
    assert!(e.contains("model.mpk") && e.contains("corrupt"), "{e}");

    let d = copy("no_weights");
    std::fs::remove_file(d.join("model.mpk")).unwrap();
    let e = fails(&["export", "--run", d.to_str().unwrap(), "--out", t_s]);
    assert!(e.contains("model.mpk") && e.contains("missing"), "{e}");

    let d = copy("garbage_config");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    let e = fails(&["export", "--run", d.to_str().unwrap(), "--out", t_s]);
    assert!(
        e.contains("config.json") && e.contains("not a splitnas run config"),
        "{e}"
    );

    let missing = dir.path().join("no_such_run");
    let e = fails(&["export", "--run", missing.to_str().unwrap(), "--out", t_s]);
    assert!(
        e.contains("no_such_run") && e.contains("no such run directory"),
        "{e}"
    );
    assert!(
        only_file(&out).is_empty(),
        "files left: {:?}",
        only_file(&out)
    );

    // Unwritable output: the parent is a file. An existing file is never half-replaced.
    let e = fails(&[
        "export",
        "--run",
        run_s,
        "--out",
        onnx.join("x.onnx").to_str().unwrap(),
    ]);
    assert!(e.contains("--out") && e.contains("x.onnx"), "{e}");
    let before = std::fs::read(&onnx).unwrap();
    let e = fails(&[
        "export",
        "--run",
        bad.join("wider").to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(e.contains("shape"), "{e}");
    assert_eq!(std::fs::read(&onnx).unwrap(), before);
    let e = fails(&["export", "--run", run_s, "--out", out.to_str().unwrap()]);
    assert!(
        e.contains("Is a directory") || e.contains("directory"),
        "{e}"
    );
    assert!(
        only_file(&out).is_empty(),
        "files left: {:?}",
        only_file(&out)
    );

    // Flags that do not go together.
    let out = splitnas(&["export", "--run", run_s, "--channels", "8", "--out", t_s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--channels"));
    let out = splitnas(&["export", "--out", t_s]);
    assert_eq!(out.status.code(), Some(2));
}
