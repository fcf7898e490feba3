//! User journey on a GPU backend: search, train, export, run and the two benchmarks with
//! `--device wgpu`, each compared with the same command on `--device cpu`. Built with
//! `--features wgpu`; CI runs it on lavapipe (Mesa's Vulkan driver on the CPU), which runs
//! the same CubeCL kernels a GPU runs. Without a wgpu adapter the tests print why and pass,
//! unless `SPLITNAS_REQUIRE_WGPU=1` (set by `.ci/run`) makes that a failure.
//!
//! Tolerances, and why: the GPU runs Burn's generic kernels, the CPU the host kernels, so
//! every float sum is taken in another order. One forward pass of these networks agrees to
//! ~1e-6 (the runtime's logits are held to the project's 1e-4). A search or training run
//! feeds each step's rounding into the next weights: after the few steps here the losses
//! must agree within 1e-3 relative and the architecture weights (softmax(alpha), in [0, 1])
//! within 1e-3 absolute: far below what a wrong kernel, a lost gradient or a skipped step
//! gives (1e-2 and more), far above float32 rounding.
#![cfg(feature = "wgpu")]

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Runs `args` on `device` and insists on success; a wgpu run must name its adapter.
fn on(device: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--device", device]);
    let (ok, stdout, stderr) = common::splitnas(&all);
    assert!(ok, "{all:?} failed:\n{stdout}\n{stderr}");
    if device == "wgpu" {
        assert!(
            stderr.contains("device: wgpu on "),
            "{all:?} did not name its adapter:\n{stderr}"
        );
    }
    stdout
}

fn fashion_mnist_here() -> bool {
    Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Compares every number of two JSON values (skipping wall times and memory, which are
/// the machine's); returns the largest relative difference `|a - b| / max(|a|, floor)`.
fn json_diff(a: &Value, b: &Value, floor: f64, at: &str) -> f64 {
    const MACHINE: [&str; 3] = ["seconds", "host_peak_rss_mb", "device_reserved_mb"];
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() / x.abs().max(floor)
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths differ");
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (x, y))| json_diff(x, y, floor, &format!("{at}[{i}]")))
                .fold(0.0, f64::max)
        }
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .filter(|(k, _)| !MACHINE.contains(&k.as_str()))
            .map(|(k, v)| {
                let w = y.get(k).unwrap_or_else(|| panic!("{at}.{k}: missing"));
                json_diff(v, w, floor, &format!("{at}.{k}"))
            })
            .fold(0.0, f64::max),
        _ => {
            assert_eq!(a, b, "{at}");
            0.0
        }
    }
}

fn field(records: &[Value], key: &str) -> Vec<f64> {
    records.iter().map(|r| r[key].as_f64().unwrap()).collect()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitnas-gpu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Search (first order, then second order with the attention selector), each on cpu and
/// wgpu from the same seed: the same losses and architecture weights.
#[test]
fn search_on_wgpu_equals_cpu() {
    if !common::wgpu_here() || !fashion_mnist_here() {
        return;
    }
    for (name, extra) in [
        ("split", vec![]),
        (
            "attention",
            vec!["--selector", "attention", "--order", "second"],
        ),
    ] {
        let mut runs = vec![];
        for device in ["cpu", "wgpu"] {
            let out = tmp(&format!("search-{name}-{device}"));
            let o = out.to_str().unwrap();
            let mut args = vec![
                "search",
                "--dataset",
                "fashion-mnist",
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
                "--train-limit",
                "64",
                "--out",
                o,
            ];
            args.extend(&extra);
            on(device, &args);
            runs.push(out);
        }
        let (cpu, gpu) = (
            lines(&runs[0].join("search.jsonl")),
            lines(&runs[1].join("search.jsonl")),
        );
        assert_eq!(cpu.len(), 2);
        for key in ["train_loss", "valid_loss"] {
            let (a, b) = (field(&cpu, key), field(&gpu, key));
            let d = json_diff(&a.clone().into(), &b.clone().into(), 1e-6, key);
            eprintln!("search {name}: {key} cpu {a:?} wgpu {b:?} (rel {d:.2e})");
            assert!(d <= 1e-3, "search {name}: {key} cpu {a:?} wgpu {b:?}");
        }
        // softmax(alpha) and softmax(beta) per edge after each epoch: absolute (floor 1)
        for (i, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
            let d = json_diff(&a["weights"], &b["weights"], 1.0, "weights");
            eprintln!(
                "search {name}: epoch {} architecture weights differ by {d:.2e}",
                i + 1
            );
            assert!(d <= 1e-3, "search {name} epoch {}: {d}", i + 1);
            // the genotype is the argmax of nearly equal weights after two epochs: a
            // rounding difference may flip it, so the weights above are what is compared
        }
        for r in &gpu {
            assert!(r["device_reserved_mb"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}

/// Training on wgpu gives the CPU's loss curve and accuracy; its run exports to the same
/// ONNX file on both devices; the runtime gives the same logits on both devices; the
/// benchmarks print their figures.
#[test]
fn train_export_run_and_bench_on_wgpu_equal_cpu() {
    if !common::wgpu_here() || !fashion_mnist_here() {
        return;
    }
    let mut runs = vec![];
    for device in ["cpu", "wgpu"] {
        let out = tmp(&format!("train-{device}"));
        on(
            device,
            &[
                "train",
                "--genotype",
                "DARTS_V2",
                "--dataset",
                "fashion-mnist",
                "--channels",
                "4",
                "--layers",
                "3",
                "--epochs",
                "2",
                "--batch-size",
                "32",
                "--train-limit",
                "128",
                "--test-limit",
                "64",
                "--drop-path",
                "0",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        runs.push(out);
    }
    let (cpu, gpu) = (
        lines(&runs[0].join("metrics.jsonl")),
        lines(&runs[1].join("metrics.jsonl")),
    );
    assert_eq!(cpu.len(), 2);
    for key in ["train_loss", "test_loss"] {
        let (a, b) = (field(&cpu, key), field(&gpu, key));
        let d = json_diff(&a.clone().into(), &b.clone().into(), 1e-6, key);
        eprintln!("train: {key} cpu {a:?} wgpu {b:?} (rel {d:.2e})");
        assert!(d <= 1e-3, "train: {key} cpu {a:?} wgpu {b:?}");
    }
    // accuracy on 64 test images: one image is 1/64; rounding may flip at most one
    let (a, b) = (field(&cpu, "test_acc"), field(&gpu, "test_acc"));
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1.0 / 64.0 + 1e-9,
            "test_acc cpu {a:?} wgpu {b:?}"
        );
    }

    // export: the weights are folded on the host, so the files are the same bytes
    let mut files = vec![];
    for (device, run) in ["cpu", "wgpu"].iter().zip(&runs) {
        let file = run.join("exported.onnx");
        on(
            device,
            &[
                "export",
                "--run",
                run.to_str().unwrap(),
                "--out",
                file.to_str().unwrap(),
            ],
        );
        files.push(file);
    }
    let onnx = &files[1];
    let from_cpu_run_on_wgpu = runs[0].join("cpu-run-on-wgpu.onnx");
    on(
        "wgpu",
        &[
            "export",
            "--run",
            runs[0].to_str().unwrap(),
            "--out",
            from_cpu_run_on_wgpu.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&from_cpu_run_on_wgpu).unwrap(),
        "export of one run differs between cpu and wgpu"
    );

    // run: logits on wgpu equal the CPU's (1e-4) and tract's
    let x = common::input_images(3, 1, 28, 28);
    let xin = runs[1].join("x.npy");
    common::write_npy(&xin, &x, &[3, 1, 28, 28]);
    let mut logits = vec![];
    for device in ["cpu", "wgpu"] {
        let out = runs[1].join(format!("logits-{device}.npy"));
        on(
            device,
            &[
                "run",
                onnx.to_str().unwrap(),
                "--input",
                xin.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
            ],
        );
        logits.push(common::read_npy(&out).1);
    }
    let d = common::max_abs(&logits[0], &logits[1]);
    let t = common::max_abs(&logits[1], &common::tract(onnx, &x, [3, 1, 28, 28]));
    eprintln!("run: wgpu vs cpu logits {d:.2e}, wgpu vs tract {t:.2e}");
    assert!(
        d <= 1e-4 && t <= 1e-4,
        "wgpu logits: {d} from cpu, {t} from tract"
    );

    // the benchmarks print their figures on the device, with its memory
    let out = on(
        "wgpu",
        &[
            "bench",
            "run",
            onnx.to_str().unwrap(),
            "--batch",
            "2",
            "--iters",
            "2",
        ],
    );
    assert!(out.contains("p50_ms="), "{out}");
    let out = on(
        "wgpu",
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
    );
    assert!(out.contains("step_s="), "{out}");
    let reserved = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("device_reserved_mb="))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(reserved.is_some_and(|v| v > 0.0), "{out}");
    for run in runs {
        let _ = std::fs::remove_dir_all(run);
    }
}
