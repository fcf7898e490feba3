//! Helpers shared by the end-to-end tests: .npy reading and writing, tract as the independent ONNX
//! implementation, max-abs difference.
#![allow(dead_code)]

use std::path::Path;
use tract_onnx::prelude::*;

/// A float32 .npy file: (shape, values).
pub fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec().unwrap())
}

/// Writes a float32 .npy file (the runtime's writer: what `splitnas run --output` uses).
pub fn write_npy(path: &Path, data: &[f32], shape: &[u64]) {
    splitnas_runtime::input::write_npy(path, data, shape).unwrap();
}

/// tract's logits for `x` (NCHW `shape`) on the ONNX file at `path`.
pub fn tract(path: &Path, x: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input: Tensor = tract_ndarray::Array4::from_shape_vec(shape, x.to_vec())
        .unwrap()
        .into();
    let out = model.run(tvec!(input.into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `n` deterministic images `[n, c, h, w]` with values in [-1, 1) (a fixed pattern, no RNG).
pub fn input_images(n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    (0..n * c * h * w)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Runs the `splitnas` binary with `args`: (success, stdout, stderr). stderr ends with the
/// exit status when the run failed (`signal: 11 (SIGSEGV)` reads differently from `exit
/// status: 1`).
pub fn splitnas(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitnas"))
        .args(args)
        .output()
        .expect("run splitnas");
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        stderr.push_str(&format!("\n[{}]", out.status));
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// Whether a wgpu adapter is here (the GPU tests, built with `--features wgpu`). Without
/// one a test returns early and passes, unless `SPLITNAS_REQUIRE_WGPU=1` (CI, on lavapipe)
/// makes it a failure.
#[cfg(feature = "wgpu")]
pub fn wgpu_here() -> bool {
    match splitnas_search::device::open(splitnas_search::device::DeviceKind::Wgpu) {
        Ok(what) => {
            eprintln!("{what}");
            true
        }
        Err(e) if std::env::var("SPLITNAS_REQUIRE_WGPU").as_deref() != Ok("1") => {
            eprintln!("skipped, no wgpu device: {e}");
            false
        }
        Err(e) => panic!("SPLITNAS_REQUIRE_WGPU=1 but {e}"),
    }
}

/// `splitnas export` of the seeded DARTS_V2 C=8 L=5 network for 1x28x28 images, 10
/// classes (`--init-seed 2`), to `out`.
pub fn export_darts_v2_c8(out: &Path) {
    let (ok, _, err) = splitnas(&[
        "export",
        "--genotype",
        "DARTS_V2",
        "--channels",
        "8",
        "--layers",
        "5",
        "--in-channels",
        "1",
        "--image-size",
        "28",
        "--classes",
        "10",
        "--init-seed",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
}
