//! User journey: train a genotype on real Fashion-MNIST, kill and resume, bad input.

use std::path::Path;
use std::process::Command;

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

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

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("metrics line is JSON"))
        .collect()
}

fn small_run(out: &Path, epochs: &str) -> Vec<String> {
    [
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
        epochs,
        "--batch-size",
        "64",
        "--train-limit",
        "512",
        "--test-limit",
        "256",
        "--drop-path",
        "0.2",
        "--auxiliary",
        "--cutout",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A 2-epoch run killed (aborted) right after its epoch-1 checkpoint and resumed ends with
/// the same metrics as an uninterrupted 2-epoch run. Drop path, the auxiliary head and
/// cutout are on so that every random stream must be restored.
#[test]
fn killed_run_resumes_to_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let args = small_run(&full, "2");
    let (ok, _, err) = splitnas(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(ok, "{err}");

    let killed = dir.path().join("killed");
    let args = small_run(&killed, "2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, _) = splitnas(&args, &[("SPLITNAS_ABORT_AFTER_EPOCH", "1")]);
    assert!(!ok, "the run should have been aborted");
    assert_eq!(metrics(&killed).len(), 1);

    // Without --resume the directory is protected.
    let (ok, _, err) = splitnas(&args, &[]);
    assert!(!ok);
    assert!(
        err.contains("already holds a training run") && err.contains("--resume"),
        "{err}"
    );

    let mut resume = args.clone();
    resume.push("--resume");
    let (ok, out, err) = splitnas(&resume, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("resuming"), "{out}");

    let (a, b) = (metrics(&full), metrics(&killed));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    for key in ["train_loss", "train_acc", "test_loss", "test_acc"] {
        let (x, y) = (a[1][key].as_f64().unwrap(), b[1][key].as_f64().unwrap());
        assert!(
            (x - y).abs() < 1e-5,
            "{key}: uninterrupted {x} vs resumed {y}"
        );
    }
    for f in ["config.json", "model.mpk", "checkpoint.json"] {
        assert!(killed.join(f).exists(), "{f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["dataset"], "fashion-mnist");
    assert_eq!(cfg["classes"][9], "Ankle boot");
    assert_eq!(cfg["mean"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_input_gives_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    let base = [
        "train",
        "--genotype",
        "DARTS_V2",
        "--channels",
        "4",
        "--layers",
        "3",
        "--epochs",
        "1",
        "--out",
        o,
    ];

    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let d = data.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        splitnas(&a, &[])
    };

    let (ok, _, err) = run(&["--dataset", "fashion-mnist", "--data-dir", d]);
    assert!(
        !ok && err.contains("train-images-idx3-ubyte") && err.contains("file not found"),
        "{err}"
    );

    // Truncated image file (copied header of the real one, cut short).
    let real = std::fs::read(Path::new(FMNIST).join("train-labels-idx1-ubyte.gz")).unwrap();
    std::fs::write(
        data.join("train-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0, 0, 9],
    )
    .unwrap();
    std::fs::write(data.join("train-labels-idx1-ubyte.gz"), &real).unwrap();
    let (ok, _, err) = run(&["--dataset", "mnist", "--data-dir", d]);
    assert!(
        !ok && err.contains("train-images-idx3-ubyte: truncated"),
        "{err}"
    );

    // Labels file where images are expected: wrong magic.
    std::fs::write(data.join("train-images-idx3-ubyte.gz"), &real).unwrap();
    let (ok, _, err) = run(&["--dataset", "mnist", "--data-dir", d]);
    assert!(!ok && err.contains("wrong magic number"), "{err}");

    let (ok, _, err) = run(&["--dataset", "imagenet"]);
    assert!(!ok && err.contains("unknown data set 'imagenet'"), "{err}");
    let (ok, _, err) = run(&["--dataset", "synthetic", "--device", "tpu"]);
    assert!(!ok && err.contains("unknown device 'tpu'"), "{err}");
    let (ok, _, err) = run(&["--dataset", "synthetic", "--batch-size", "0"]);
    assert!(!ok && err.contains("--batch-size"), "{err}");
    let (ok, _, err) = run(&["--dataset", "synthetic", "--drop-path", "1.5"]);
    assert!(!ok && err.contains("--drop-path"), "{err}");
    let (ok, _, err) = run(&["--dataset", "synthetic", "--resume"]);
    assert!(!ok && err.contains("no checkpoint.json"), "{err}");
    #[cfg(not(feature = "cuda"))]
    {
        let (ok, _, err) = run(&["--dataset", "synthetic", "--device", "cuda"]);
        assert!(
            !ok && err.contains("built without the 'cuda' feature"),
            "{err}"
        );
    }
    let mut a: Vec<&str> = base.to_vec();
    a[2] = "NOPE";
    a.extend_from_slice(&["--dataset", "synthetic"]);
    let (ok, _, err) = splitnas(&a, &[]);
    assert!(
        !ok && err.contains("--genotype") && err.contains("NOPE"),
        "{err}"
    );
    for e in [&err] {
        assert!(!e.contains("panicked"), "{e}");
    }
}
