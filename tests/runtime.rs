//! User journey: export a network, run it with `splitnas run` (Burn runtime) on a .npy
//! tensor and on image files; logits equal tract's within 1e-4 (max abs). With
//! `SPLITNAS_ONNX_CHECKS=DIR` the files and the runtime's logits are kept for `.ci/run`'s
//! onnxruntime comparison.

use std::path::Path;
use std::process::{Command, Output};
mod common;
use common::{max_abs, read_npy, tract};

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
        "splitnas {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = splitnas(args);
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "splitnas {args:?}: {e}");
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn exported_darts_networks_run_like_tract() {
    let dir = tempfile::tempdir().unwrap();
    for (name, in_c, side) in [
        ("DARTS_V1", 3, 32),
        ("DARTS_V2", 1, 28),
        ("PC_DARTS", 3, 32),
    ] {
        let onnx = dir.path().join(format!("{name}.onnx"));
        let (c, s) = (in_c.to_string(), side.to_string());
        ok(&[
            "export",
            "--genotype",
            name,
            "--init-seed",
            "5",
            "--channels",
            "8",
            "--layers",
            "5",
            "--in-channels",
            &c,
            "--image-size",
            &s,
            "--identity",
            "--out",
            onnx.to_str().unwrap(),
        ]);
        let shape = [4, in_c, side, side];
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| ((i * 7919 % 2000) as f32 / 1000.0 - 1.0) * 2.0)
            .collect();
        let npy = dir.path().join(format!("{name}.in.npy"));
        common::write_npy(&npy, &x, &shape.map(|d| d as u64));
        let out = dir.path().join(format!("{name}.logits.npy"));
        let stdout = ok(&[
            "run",
            onnx.to_str().unwrap(),
            "--input",
            npy.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--top-k",
            "2",
        ]);
        // one line per image with two classes, then the --output line
        assert_eq!(
            stdout.lines().filter(|l| l.contains("class")).count(),
            4,
            "{stdout}"
        );
        let (oshape, ours) = read_npy(&out);
        assert_eq!(oshape, vec![4, 10]);
        let reference = tract(&onnx, &x, shape);
        let d = max_abs(&ours, &reference);
        eprintln!("{name}: splitnas run vs tract {d:.2e}");
        assert!(d < 1e-4, "{name}: {d}");
        let nd = dir.path().join(format!("{name}.nd.npy"));
        ok(&[
            "run",
            onnx.to_str().unwrap(),
            "--input",
            npy.to_str().unwrap(),
            "--output",
            nd.to_str().unwrap(),
            "--device",
            "ndarray",
        ]);
        assert!(max_abs(&read_npy(&nd).1, &reference) < 1e-4);
        if let Ok(keep) = std::env::var("SPLITNAS_ONNX_CHECKS") {
            let keep = Path::new(&keep);
            std::fs::create_dir_all(keep).unwrap();
            std::fs::copy(&onnx, keep.join(format!("runtime_{name}.onnx"))).unwrap();
            let json = serde_json::json!({"input_shape": shape, "input": x, "logits": ours, "tolerance": 1e-4});
            std::fs::write(keep.join(format!("runtime_{name}.json")), json.to_string()).unwrap();
        }
    }
}

#[test]
fn images_are_normalized_with_the_file_metadata_and_bad_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("gray.onnx");
    let onnx_s = onnx.to_str().unwrap();
    ok(&[
        "export",
        "--genotype",
        "DARTS_V2",
        "--channels",
        "4",
        "--layers",
        "3",
        "--in-channels",
        "1",
        "--image-size",
        "16",
        "--out",
        onnx_s,
    ]);
    // 16x16 gray PNGs: no resizing; the template's metadata says mean 0, std 1.
    let mut pixels_all = vec![];
    let mut paths = vec![];
    for k in 0..2u32 {
        let img = image::GrayImage::from_fn(16, 16, |x, y| {
            image::Luma([((x * 16 + y * 3 + k * 50) % 256) as u8])
        });
        let p = dir.path().join(format!("img{k}.png"));
        img.save(&p).unwrap();
        pixels_all.extend(img.pixels().map(|p| p.0[0] as f32 / 255.0));
        paths.push(p);
    }
    let out = dir.path().join("img.npy");
    ok(&[
        "run",
        onnx_s,
        "--input",
        paths[0].to_str().unwrap(),
        paths[1].to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let (shape, ours) = read_npy(&out);
    assert_eq!(shape, vec![2, 10]);
    let reference = tract(&onnx, &pixels_all, [2, 1, 16, 16]);
    assert!(max_abs(&ours, &reference) < 1e-4);

    // wrong tensor shape, wrong dtype, missing files, not ONNX, unknown device
    let bad = dir.path().join("bad.npy");
    common::write_npy(&bad, &vec![0.0; 3 * 16 * 16], &[1, 3, 16, 16]);
    let e = fails(&["run", onnx_s, "--input", bad.to_str().unwrap()]);
    assert!(
        e.contains("bad.npy") && e.contains("[1, 3, 16, 16]") && e.contains("[N, 1, 16, 16]"),
        "{e}"
    );
    let e = fails(&["run", onnx_s, "--input", "/nonexistent/x.npy"]);
    assert!(e.contains("/nonexistent/x.npy"), "{e}");
    let e = fails(&["run", onnx_s, "--input", "/nonexistent/x.png"]);
    assert!(e.contains("/nonexistent/x.png"), "{e}");
    let e = fails(&[
        "run",
        bad.to_str().unwrap(),
        "--input",
        paths[0].to_str().unwrap(),
    ]);
    assert!(
        e.contains("bad.npy") && e.contains("not an ONNX model"),
        "{e}"
    );
    // one image with one bad flag
    let run_with = |flag: &str, value: &str| {
        fails(&[
            "run",
            onnx_s,
            "--input",
            paths[0].to_str().unwrap(),
            flag,
            value,
        ])
    };
    let e = run_with("--device", "tpu");
    assert!(e.contains("--device") && e.contains("tpu"), "{e}");
    let e = run_with("--output", "/nonexistent/logits.npy");
    assert!(
        e.contains("--output") && e.contains("cannot write /nonexistent/logits.npy"),
        "{e}"
    );
    let e = run_with("--top-k", "0");
    assert!(e.contains("--top-k: must be at least 1"), "{e}");
    let e = fails(&["bench", "run", onnx_s, "--batch", "0"]);
    assert!(e.contains("--batch"), "{e}");
    let stdout = ok(&["bench", "run", onnx_s, "--batch", "2", "--iters", "3"]);
    let last = stdout.lines().last().unwrap();
    let keys: Vec<&str> = last
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|p| p.0))
        .collect();
    assert_eq!(keys, ["p50_ms", "p90_ms", "images_per_s"], "{last}");
}
