//! Reads the plan and the image the firmware embeds (`SPLITNAS_PLAN`, `SPLITNAS_INPUT`,
//! set by `run-qemu.sh`), checks them with splitnas-micro on the host, and writes to
//! `OUT_DIR`: `model.plan` (copied), `input.f32` (the image's float32 values, little
//! endian) and `sizes.rs` (the arena's and the tensors' lengths: the arena is a static
//! buffer, so a plan whose arena and the stack exceed the RAM region fails at link time).
//! Bad input stops the build with a message naming the file.

use std::path::{Path, PathBuf};
use std::{env, fs, process};

fn fail(msg: String) -> ! {
    eprintln!("error: {msg}");
    process::exit(1)
}

fn var(name: &str, what: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={name}");
    match env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => fail(format!(
            "{name} is not set: the path of {what} (firmware/run-qemu.sh PLAN INPUT.npy sets it)"
        )),
    }
}

fn read(path: &Path) -> Vec<u8> {
    println!("cargo:rerun-if-changed={}", path.display());
    fs::read(path).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())))
}

/// The float32 values of a C-order `<f4` `.npy` file and its shape.
fn npy_f32(path: &Path, bytes: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let bad = |why: &str| -> ! { fail(format!("{}: {why}", path.display())) };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bad("not a .npy file (no \\x93NUMPY magic)");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bad(&format!(".npy version {v} is not 1, 2 or 3")),
    };
    let header = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or_else(|| bad("truncated or non-text .npy header"));
    let field = |key: &str| -> &str {
        let at = header
            .find(&format!("'{key}'"))
            .unwrap_or_else(|| bad(&format!("no '{key}' in the .npy header")));
        header[at + key.len() + 2..].trim_start_matches([':', ' '])
    };
    if !field("descr").starts_with("'<f4'") {
        bad("dtype is not float32 ('<f4')");
    }
    if !field("fortran_order").starts_with("False") {
        bad("Fortran-order arrays are not supported");
    }
    let shape = field("shape");
    let shape = &shape[1..shape.find(')').unwrap_or_else(|| bad("malformed shape"))];
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|_| bad("malformed shape")))
        .collect();
    let count: usize = dims.iter().product();
    let data = &bytes[start + len..];
    if data.len() != count * 4 {
        bad(&format!(
            "{} data bytes for shape {dims:?} ({} expected)",
            data.len(),
            count * 4
        ));
    }
    (data.to_vec(), dims)
}

fn main() {
    let plan_path = var(
        "SPLITNAS_PLAN",
        "the plan (splitnas compile --target cortex-m4)",
    );
    let input_path = var("SPLITNAS_INPUT", "one image as a float32 NCHW .npy");
    let plan_bytes = read(&plan_path);
    let plan = splitnas_micro::Plan::parse(&plan_bytes)
        .unwrap_or_else(|e| fail(format!("{}: not a valid plan: {e}", plan_path.display())));
    let (data, dims) = npy_f32(&input_path, &read(&input_path));
    let values = data.len() / 4;
    if values != plan.input_len() {
        let what = if plan.input_len() > 0 && values % plan.input_len() == 0 {
            format!(
                "{} images; the firmware runs one (take one with numpy: x[i:i+1])",
                values / plan.input_len()
            )
        } else {
            format!("{values} values, the plan's input has {}", plan.input_len())
        };
        fail(format!("{}: shape {dims:?}: {what}", input_path.display()));
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let write = |name: &str, bytes: &[u8]| {
        fs::write(out.join(name), bytes)
            .unwrap_or_else(|e| fail(format!("{}: {e}", out.join(name).display())))
    };
    write("model.plan", &plan_bytes);
    write("input.f32", &data);
    write(
        "sizes.rs",
        format!(
            "/// The plan's arena bytes.\npub const ARENA_LEN: usize = {};\n\
             /// Values of the input image.\npub const INPUT_LEN: usize = {};\n\
             /// Logits.\npub const OUTPUT_LEN: usize = {};\n",
            plan.arena_len().max(1),
            plan.input_len(),
            plan.output_len()
        )
        .as_bytes(),
    );
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed={}", dir.join("link.x").display());
    println!("cargo:rustc-link-search={}", dir.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}
