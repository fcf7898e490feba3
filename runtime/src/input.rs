//! Inputs and outputs of `splitnas run`: float32 NCHW `.npy` tensors (used as is), image
//! files (PNG/JPEG, resized to the model's input, gray or RGB as it expects, normalized
//! with its mean/std) and logits written as `.npy`.

use crate::RuntimeError;
use std::path::Path;

fn bad(path: &Path, problem: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Input(format!("{}: {problem}", path.display()))
}

/// Reads a float32 `.npy` tensor of shape `[N, C, H, W]` (or `[C, H, W]`, one image) that
/// must fit `chw`. Returns the values and N.
pub fn read_npy(path: &Path, chw: [usize; 3]) -> Result<(Vec<f32>, usize), RuntimeError> {
    let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(path, format!("not a .npy file: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(bad(
            path,
            "Fortran-ordered arrays are not supported (save with C order)",
        ));
    }
    let descr = npy.dtype().descr().trim_matches('\'').to_string();
    if descr != "<f4" {
        return Err(bad(
            path,
            format!("dtype {descr}, float32 ('<f4') is needed"),
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let n = match shape[..] {
        [n, c, h, w] if [c, h, w] == chw => n,
        [c, h, w] if [c, h, w] == chw => 1,
        _ => {
            let [c, h, w] = chw;
            return Err(bad(
                path,
                format!("shape {shape:?} does not fit the model's input [N, {c}, {h}, {w}]"),
            ));
        }
    };
    let data: Vec<f32> = npy
        .into_vec()
        .map_err(|e| bad(path, format!("cannot read the values: {e}")))?;
    Ok((data, n))
}

/// Reads an image file, resizes it to the model's `[C, H, W]` (C = 1: gray, 3: RGB) and
/// normalizes each channel: `(pixel / 255 - mean) / std`.
pub fn read_image(
    path: &Path,
    chw: [usize; 3],
    mean: &[f32],
    std: &[f32],
) -> Result<Vec<f32>, RuntimeError> {
    let [c, h, w] = chw;
    if mean.len() != c || std.len() != c {
        return Err(bad(
            path,
            format!(
                "normalization for {} channels, the model has {c}",
                mean.len()
            ),
        ));
    }
    let img = image::open(path).map_err(|e| bad(path, format!("cannot read the image: {e}")))?;
    let img = img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle);
    let pixels: Vec<u8> = match c {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        _ => {
            return Err(bad(
                path,
                format!("the model expects {c} channels; images give 1 or 3"),
            ))
        }
    };
    let mut out = vec![0f32; c * h * w];
    for (i, p) in pixels.iter().enumerate() {
        let (pix, ch) = (i / c, i % c);
        out[ch * h * w + pix] = (*p as f32 / 255.0 - mean[ch]) / std[ch];
    }
    Ok(out)
}

/// Writes `data` of `shape` as a float32 `.npy` file (temporary name, then rename).
pub fn write_npy(path: &Path, data: &[f32], shape: &[u64]) -> Result<(), RuntimeError> {
    let io = |source| RuntimeError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = vec![];
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut bytes)
            .begin_nd()
            .map_err(io)?;
        w.extend(data.iter().copied()).map_err(io)?;
        w.finish().map_err(io)?;
    }
    splitnas_host::fs::write_atomic(path, &bytes).map_err(|e| RuntimeError::Write {
        path: e.path,
        source: e.source,
    })
}
