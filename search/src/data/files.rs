//! The data files: Fashion-MNIST / MNIST IDX files (gzip or plain), CIFAR-10 / CIFAR-100
//! binary records and the embedded Fashion-MNIST subset, read into [`ImageSet`]s.

use super::{embedded, DataError, DatasetKind, ImageSet};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The embedded Fashion-MNIST subset: (training, test) images.
pub(super) fn load_embedded() -> Result<(ImageSet, ImageSet), DataError> {
    let open = |i: usize| -> Result<(PathBuf, Vec<u8>), DataError> {
        let (name, gz) = embedded::FILES[i];
        let path = PathBuf::from(format!("<embedded>/{name}"));
        let mut out = Vec::new();
        GzDecoder::new(gz)
            .read_to_end(&mut out)
            .map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
        Ok((path, out))
    };
    let pair = |i: usize| -> Result<ImageSet, DataError> {
        let (ip, ib) = open(i)?;
        let (lp, lb) = open(i + 1)?;
        idx_pair(ip, &ib, lp, &lb)
    };
    Ok((pair(0)?, pair(2)?))
}

pub(super) fn find_cifar_dir(dir: &Path, sub: &str) -> PathBuf {
    if dir.join(sub).is_dir() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    }
}

/// Reads a file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path, dataset: DatasetKind) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                dataset,
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format {
                path: path.to_path_buf(),
                problem: format!("corrupt or truncated gzip data ({e})"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// `dir/{prefix}-images-idx3-ubyte[.gz]` and the matching labels.
pub(super) fn read_idx_pair(
    dir: &Path,
    prefix: &str,
    dataset: DatasetKind,
) -> Result<ImageSet, DataError> {
    let pick = |stem: String| {
        let gz = dir.join(format!("{stem}.gz"));
        if gz.exists() {
            gz
        } else {
            dir.join(stem)
        }
    };
    let img_path = pick(format!("{prefix}-images-idx3-ubyte"));
    let lbl_path = pick(format!("{prefix}-labels-idx1-ubyte"));
    let images = read_maybe_gz(&img_path, dataset)?;
    let labels = read_maybe_gz(&lbl_path, dataset)?;
    idx_pair(img_path, &images, lbl_path, &labels)
}

/// Parses an IDX image file and its label file into one set.
fn idx_pair(
    img_path: PathBuf,
    images: &[u8],
    lbl_path: PathBuf,
    labels: &[u8],
) -> Result<ImageSet, DataError> {
    let (n, rows, cols, pixels) = parse_idx_images(&img_path, images)?;
    let labels = parse_idx_labels(&lbl_path, labels)?;
    if labels.len() != n {
        return Err(DataError::Format {
            path: lbl_path,
            problem: format!(
                "{} labels but {} has {n} images",
                labels.len(),
                img_path.display()
            ),
        });
    }
    if rows != cols {
        return Err(DataError::Format {
            path: img_path,
            problem: format!("images are {rows}x{cols}; only square images are supported"),
        });
    }
    Ok(ImageSet {
        pixels,
        labels,
        channels: 1,
        side: rows,
    })
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Parses an IDX3 image file: `(count, rows, cols, pixels)`.
pub fn parse_idx_images(
    path: &Path,
    b: &[u8],
) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let fmt = |problem: String| DataError::Format {
        path: path.to_path_buf(),
        problem,
    };
    if b.len() < 16 {
        return Err(fmt(format!(
            "truncated: {} bytes, an IDX image header alone is 16",
            b.len()
        )));
    }
    if be32(b, 0) != 0x0803 {
        return Err(fmt(format!(
            "wrong magic number 0x{:08x}: not an IDX image file (expected 0x00000803)",
            be32(b, 0)
        )));
    }
    let (n, rows, cols) = (be32(b, 4), be32(b, 8), be32(b, 12));
    let want = n
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| fmt("header sizes overflow".into()))?;
    if b.len() - 16 < want {
        return Err(fmt(format!(
            "truncated: header says {n} images of {rows}x{cols} ({want} bytes), file holds {}",
            b.len() - 16
        )));
    }
    Ok((n, rows, cols, b[16..16 + want].to_vec()))
}

/// Parses an IDX1 label file.
pub fn parse_idx_labels(path: &Path, b: &[u8]) -> Result<Vec<usize>, DataError> {
    let fmt = |problem: String| DataError::Format {
        path: path.to_path_buf(),
        problem,
    };
    if b.len() < 8 {
        return Err(fmt(format!(
            "truncated: {} bytes, an IDX label header alone is 8",
            b.len()
        )));
    }
    if be32(b, 0) != 0x0801 {
        return Err(fmt(format!(
            "wrong magic number 0x{:08x}: not an IDX label file (expected 0x00000801)",
            be32(b, 0)
        )));
    }
    let n = be32(b, 4);
    if b.len() - 8 < n {
        return Err(fmt(format!(
            "truncated: header says {n} labels, file holds {}",
            b.len() - 8
        )));
    }
    Ok(b[8..8 + n].iter().map(|&l| l as usize).collect())
}

/// Reads CIFAR-10 or CIFAR-100 (fine labels) binary files.
pub(super) fn read_cifar(files: &[PathBuf], dataset: DatasetKind) -> Result<ImageSet, DataError> {
    // The label byte; CIFAR-100 records start with the coarse label.
    let label_offset = usize::from(dataset == DatasetKind::Cifar100);
    let rec = 3072 + 1 + label_offset;
    let mut set = ImageSet {
        pixels: vec![],
        labels: vec![],
        channels: 3,
        side: 32,
    };
    for path in files {
        let b = read_maybe_gz(path, dataset)?;
        if b.is_empty() || b.len() % rec != 0 {
            return Err(DataError::Format {
                path: path.clone(),
                problem: format!("{} bytes is not a whole number of {rec}-byte CIFAR records (truncated or wrong file)", b.len()),
            });
        }
        for r in b.chunks_exact(rec) {
            set.labels.push(r[label_offset] as usize);
            set.pixels.extend_from_slice(&r[1 + label_offset..]);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::super::{load, DataOptions};
    use super::*;

    fn idx_images(n: u32, side: u32) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for v in [n, side, side] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend((0..n * side * side).map(|i| (i % 251) as u8));
        b
    }

    fn idx_labels(n: u32) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 1];
        b.extend_from_slice(&n.to_be_bytes());
        b.extend((0..n).map(|i| (i % 10) as u8));
        b
    }

    fn write_mnist(dir: &Path, n_train_labels: u32) {
        std::fs::write(dir.join("train-images-idx3-ubyte"), idx_images(5, 4)).unwrap();
        std::fs::write(
            dir.join("train-labels-idx1-ubyte"),
            idx_labels(n_train_labels),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &idx_images(3, 4)).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(3)).unwrap();
    }

    fn opts(dir: &Path) -> DataOptions {
        DataOptions {
            dir: Some(dir.to_path_buf()),
            train_limit: None,
            test_limit: None,
            seed: 0,
        }
    }

    #[test]
    fn reads_plain_and_gzip_idx() {
        let dir = std::env::temp_dir().join(format!("splitnas-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_mnist(&dir, 5);
        let d = load(DatasetKind::Mnist, &opts(&dir)).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.train.side), (5, 3, 4));
        assert_eq!(d.train.pixels[17], 17);
        assert_eq!(d.test.labels, vec![0, 1, 2]);
        write_mnist(&dir, 4);
        let e = load(DatasetKind::Mnist, &opts(&dir))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-labels-idx1-ubyte")
                && e.contains("4 labels but")
                && e.contains("5 images"),
            "{e}"
        );
        std::fs::write(dir.join("train-images-idx3-ubyte"), &idx_images(5, 4)[..40]).unwrap();
        let e = load(DatasetKind::Mnist, &opts(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("train-images-idx3-ubyte: truncated"), "{e}");
        std::fs::write(dir.join("train-images-idx3-ubyte"), idx_labels(20)).unwrap();
        let e = load(DatasetKind::Mnist, &opts(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong magic number"), "{e}");
        std::fs::remove_file(dir.join("train-images-idx3-ubyte")).unwrap();
        let e = load(DatasetKind::Mnist, &opts(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("train-images-idx3-ubyte: file not found"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cifar_records_are_checked() {
        let dir = std::env::temp_dir().join(format!("splitnas-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rec = vec![7u8];
        rec.extend((0..3072).map(|i| (i % 256) as u8));
        std::fs::write(dir.join("train.bin"), [vec![3u8], rec.clone()].concat()).unwrap();
        std::fs::write(dir.join("test.bin"), &rec[..100]).unwrap();
        let e = load(DatasetKind::Cifar100, &opts(&dir))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.bin") && e.contains("3074-byte CIFAR records"),
            "{e}"
        );
        std::fs::write(dir.join("test.bin"), [vec![3u8], rec].concat()).unwrap();
        let d = load(DatasetKind::Cifar100, &opts(&dir)).unwrap();
        assert_eq!(d.train.labels, vec![7]);
        assert_eq!(d.train.pixels[1024], 0); // start of the green plane: byte 1024 % 256
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod embedded_tests {
    use super::super::{load, DataOptions, Dataset, FASHION_CLASSES, FASHION_MNIST_DIR};
    use super::*;

    /// The embedded subset, loaded through the fallback, against the Debian package's
    /// files (the independent source it was cut from): same first images and labels.
    #[test]
    fn embedded_subset_is_the_start_of_the_debian_files() {
        let (train, test) = load_embedded().unwrap();
        let emb = Dataset {
            kind: DatasetKind::FashionMnist,
            train,
            test,
            classes: FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
            source: embedded::SOURCE.into(),
        };
        assert_eq!(emb.train.len(), embedded::TRAIN_IMAGES);
        assert_eq!(emb.test.len(), embedded::TEST_IMAGES);
        assert_eq!((emb.train.channels, emb.train.side), (1, 28));
        // All ten classes occur in both parts.
        for set in [&emb.train, &emb.test] {
            let mut seen = [false; 10];
            set.labels.iter().for_each(|&l| seen[l] = true);
            assert!(seen.iter().all(|&s| s));
        }
        let debian = Path::new(FASHION_MNIST_DIR);
        if !debian.join("train-images-idx3-ubyte.gz").exists() {
            eprintln!("skipping the comparison: {FASHION_MNIST_DIR} not installed");
            return;
        }
        let full = load(
            DatasetKind::FashionMnist,
            &DataOptions {
                dir: Some(debian.to_path_buf()),
                train_limit: Some(embedded::TRAIN_IMAGES),
                test_limit: Some(embedded::TEST_IMAGES),
                seed: 0,
            },
        )
        .unwrap();
        assert_eq!(full.source, FASHION_MNIST_DIR);
        assert!(emb.train.pixels == full.train.pixels && emb.train.labels == full.train.labels);
        assert!(emb.test.pixels == full.test.pixels && emb.test.labels == full.test.labels);
    }
}
