//! User journey: `splitnas quantize` on a network `splitnas export` wrote, calibrated on
//! Fashion-MNIST training images (the Debian package's, else the embedded subset). The
//! saved calibration images are checked against the data set read here, the QDQ file's
//! logits in tract (an independent ONNX implementation) against the float file's in
//! tract. Bad input: one clear line, exit code 1. With `SPLITNAS_ONNX_CHECKS=DIR` the int8
//! file is kept with its input and tract's logits for `.ci/run`'s onnxruntime check.

use onnx_protobuf::{Message, ModelProto, StringStringEntryProto};
use splitnas_search::data::{self, DataOptions, DatasetKind};
use std::collections::HashMap;
use std::path::Path;
mod common;
use common::{export_darts_v2_c8, max_abs, read_npy, splitnas, tract};

/// A seeded DARTS_V2 C=8 L=5 template for 1x28x28 images, its metadata made
/// Fashion-MNIST's (the template says `dataset = none`, mean 0, std 1); returns the
/// template's path and the Fashion-MNIST file's.
fn float_files(dir: &Path) -> (String, String) {
    let template = dir.join("template.onnx");
    export_darts_v2_c8(&template);
    let mut m = ModelProto::parse_from_bytes(&std::fs::read(&template).unwrap()).unwrap();
    for p in &mut m.metadata_props {
        match p.key.as_str() {
            "dataset" => p.value = "fashion-mnist".into(),
            "mean" => p.value = "[0.2856]".into(),
            "std" => p.value = "[0.3530]".into(),
            _ => {}
        }
    }
    let fmnist = dir.join("float.onnx");
    std::fs::write(&fmnist, m.write_to_bytes().unwrap()).unwrap();
    (
        template.to_str().unwrap().to_string(),
        fmnist.to_str().unwrap().to_string(),
    )
}

fn metadata(path: &str) -> HashMap<String, String> {
    let m = ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
    m.metadata_props
        .iter()
        .map(|StringStringEntryProto { key, value, .. }| (key.clone(), value.clone()))
        .collect()
}

/// The `key=value` pairs of an output line.
fn pairs(line: &str) -> HashMap<String, f64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The scale of the logits: the DequantizeLinear writing the graph output.
fn logits_scale(path: &str) -> f32 {
    let m = ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let g = m.graph.as_ref().unwrap();
    let dq = g
        .node
        .iter()
        .find(|n| n.output[0] == g.output[0].name)
        .unwrap();
    assert_eq!(dq.op_type, "DequantizeLinear");
    let s = g
        .initializer
        .iter()
        .find(|t| t.name == dq.input[1])
        .unwrap();
    f32::from_le_bytes(s.raw_data[..4].try_into().unwrap())
}

#[test]
fn quantize_calibrates_on_training_images_and_stays_close_to_the_float_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, float) = float_files(dir.path());
    let int8 = dir.path().join("int8.onnx");
    let int8 = int8.to_str().unwrap();
    let cal = dir.path().join("cal.npy");
    let (ok, out, err) = splitnas(&[
        "quantize",
        &float,
        "--out",
        int8,
        "--calibration-images",
        "16",
        "--method",
        "entropy",
        "--seed",
        "1",
        "--save-calibration",
        cal.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let first = lines[0];
    assert!(
        first.starts_with(&format!("wrote {int8}: "))
            && first.ends_with(" tensors quantized (method entropy, 16 calibration images)"),
        "{first}"
    );
    let counts = pairs(lines[1]);
    let size_int8 = std::fs::metadata(int8).unwrap().len() as f64;
    assert_eq!(counts["size_int8"], size_int8);
    assert_eq!(
        counts["size_float"],
        std::fs::metadata(&float).unwrap().len() as f64
    );
    let tensors: f64 = first
        .split(": ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        tensors,
        counts["activations"] + counts["weights"] + counts["biases"]
    );
    // metadata kept, plus the settings
    let meta = metadata(int8);
    assert_eq!(meta["dataset"], "fashion-mnist");
    assert_eq!(meta["genotype"], metadata(&float)["genotype"]);
    let q: serde_json::Value = serde_json::from_str(&meta["quantization"]).unwrap();
    assert_eq!(q["method"], "entropy");
    assert_eq!(q["calibration_images"], 16);
    assert_eq!(q["dataset"], "fashion-mnist");
    assert_eq!(q["seed"], 1);

    // the calibration images: 16 distinct training images, normalized with the metadata
    let (shape, x) = read_npy(&cal);
    assert_eq!(shape, [16, 1, 28, 28]);
    let set = data::load(
        DatasetKind::FashionMnist,
        &DataOptions {
            dir: None,
            train_limit: None,
            test_limit: None,
            seed: 0,
        },
    )
    .unwrap();
    let mut found = vec![];
    for img in x.chunks(784) {
        let i = set
            .train
            .pixels
            .chunks(784)
            .position(|p| {
                p.iter()
                    .zip(img)
                    .all(|(&b, &v)| ((b as f32 / 255.0 - 0.2856) / 0.3530 - v).abs() < 1e-5)
            })
            .expect("a training image");
        found.push(i);
    }
    found.sort();
    found.dedup();
    assert_eq!(found.len(), 16, "distinct images");
    // the same seed draws the same images, another seed others
    let again = dir.path().join("again.npy");
    let other = dir.path().join("other.npy");
    for (path, seed) in [(&again, "1"), (&other, "2")] {
        let o = dir.path().join("x.onnx");
        let (ok, _, err) = splitnas(&[
            "quantize",
            &float,
            "--out",
            o.to_str().unwrap(),
            "--calibration-images",
            "16",
            "--seed",
            seed,
            "--save-calibration",
            path.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
    }
    assert_eq!(read_npy(&again).1, x);
    assert_ne!(read_npy(&other).1, x);

    // logits: the QDQ file against the float file, both in tract, on 8 training images.
    // Tolerance: 12 steps of the logits' scale (about 50 quantized tensors lie on the
    // longest path; measured: below 3 steps)
    let (f, q) = (
        tract(Path::new(&float), &x[..8 * 784], [8, 1, 28, 28]),
        tract(Path::new(int8), &x[..8 * 784], [8, 1, 28, 28]),
    );
    let s = logits_scale(int8);
    let d = max_abs(&f, &q);
    eprintln!("max |int8 - float| = {d} = {} steps of {s}", d / s);
    assert!(d <= 12.0 * s, "{d} > 12 x {s}");
    if let Ok(keep) = std::env::var("SPLITNAS_ONNX_CHECKS") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        std::fs::copy(int8, keep.join("quantize_darts_v2_int8.onnx")).unwrap();
        // onnxruntime runs integer kernels where tract dequantizes: a rounding may differ
        // by one step in a tensor and travel on
        let json = serde_json::json!({
            "input_shape": [8, 1, 28, 28], "input": &x[..8 * 784], "logits": q,
            "tolerance": 12.0 * s,
        });
        std::fs::write(keep.join("quantize_darts_v2_int8.json"), json.to_string()).unwrap();
    }
}

/// `--eval` runs both files with the runtime (the int8 one on its int8 engine) on test
/// images: the report line's keys, sizes equal to the files', four decimals.
#[test]
fn eval_prints_both_accuracies_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, float) = float_files(dir.path());
    let int8 = dir.path().join("int8.onnx");
    let (ok, out, err) = splitnas(&[
        "quantize",
        &float,
        "--out",
        int8.to_str().unwrap(),
        "--calibration-images",
        "32",
        "--eval",
        "--eval-images",
        "200",
    ]);
    assert!(ok, "{err}");
    let last = out.lines().last().unwrap();
    let v = pairs(last);
    let keys: Vec<&str> = last
        .split_whitespace()
        .filter_map(|kv| kv.split('=').next())
        .collect();
    assert_eq!(
        keys,
        ["float_acc", "int8_acc", "size_float", "size_int8"],
        "{last}"
    );
    assert_eq!(
        v["size_int8"],
        std::fs::metadata(&int8).unwrap().len() as f64
    );
    assert_eq!(
        v["size_float"],
        std::fs::metadata(&float).unwrap().len() as f64
    );
    // four decimals; an untrained template is near chance, the int8 file near it
    for k in ["float_acc", "int8_acc"] {
        let s = last
            .split(&format!("{k}="))
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert_eq!(s.len(), 6, "{s}");
    }
    assert!((v["float_acc"] - v["int8_acc"]).abs() <= 0.05, "{last}");
}

/// The error line of a run that must fail (exit code 1, no panic).
fn fails(args: &[&str]) -> String {
    let (ok, _, err) = splitnas(args);
    assert!(!ok, "{args:?} succeeded");
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let (template, float) = float_files(dir.path());
    let out = dir.path().join("o.onnx");
    let out = out.to_str().unwrap();
    let missing = dir.path().join("missing.onnx");
    let e = fails(&["quantize", missing.to_str().unwrap(), "--out", out]);
    assert!(e.contains("missing.onnx"), "{e}");
    let e = fails(&[
        "quantize",
        &float,
        "--out",
        out,
        "--calibration-images",
        "0",
    ]);
    assert!(
        e.contains("--calibration-images: must be at least 1"),
        "{e}"
    );
    let e = fails(&["quantize", &float, "--out", out, "--method", "median"]);
    assert!(
        e.contains("--method: unknown method 'median' (expected minmax, percentile or entropy)"),
        "{e}"
    );
    // the template's metadata names no data set
    let e = fails(&[
        "quantize",
        &template,
        "--out",
        out,
        "--calibration-images",
        "4",
    ]);
    assert!(
        e.contains("dataset = 'none'") && e.contains("pass --dataset"),
        "{e}"
    );
    assert!(!Path::new(out).exists(), "no file written");
    // with --dataset it calibrates (normalized with the file's mean 0, std 1)
    let (ok, _, err) = splitnas(&[
        "quantize",
        &template,
        "--out",
        out,
        "--calibration-images",
        "4",
        "--dataset",
        "fashion-mnist",
    ]);
    assert!(ok, "{err}");
    // a data set whose images do not fit the file
    let e = fails(&[
        "quantize",
        &float,
        "--out",
        out,
        "--dataset",
        "cifar10",
        "--data-dir",
        "/nonexistent",
    ]);
    assert!(e.contains("/nonexistent") || e.contains("3x32x32"), "{e}");
}
