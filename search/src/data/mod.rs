//! Data sets: Fashion-MNIST / MNIST IDX files (gzip or plain), CIFAR-10 / CIFAR-100
//! binary files and a seeded synthetic set; augmentation and batching.

mod files;

use files::{find_cifar_dir, load_embedded, read_cifar, read_idx_pair};
pub use files::{parse_idx_images, parse_idx_labels};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Where Fashion-MNIST is looked for without a data directory:
/// `$SPLITNAS_FASHION_MNIST_DIR` when set, else [`FASHION_MNIST_DIR`].
pub fn fashion_mnist_dir() -> PathBuf {
    std::env::var_os("SPLITNAS_FASHION_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR))
}

/// The Fashion-MNIST subset compiled into the binary (`data/fashion-mnist/` in the
/// repository: the first 3,000 training and 1,000 test images of the Debian package,
/// MIT-licensed, see `data/fashion-mnist/LICENSE`), used for Fashion-MNIST when no data
/// directory is given and [`FASHION_MNIST_DIR`] is absent.
pub mod embedded {
    /// What [`super::Dataset::source`] says for the embedded subset.
    pub const SOURCE: &str =
        "embedded Fashion-MNIST subset (first 3000 training and 1000 test images)";
    /// Training images in the subset.
    pub const TRAIN_IMAGES: usize = 3000;
    /// Test images in the subset.
    pub const TEST_IMAGES: usize = 1000;
    macro_rules! file {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../data/fashion-mnist/",
                    $name
                )) as &[u8],
            )
        };
    }
    /// `(file name, gzip IDX bytes)` of the four files.
    pub const FILES: [(&str, &[u8]); 4] = [
        file!("train-images-idx3-ubyte.gz"),
        file!("train-labels-idx1-ubyte.gz"),
        file!("t10k-images-idx3-ubyte.gz"),
        file!("t10k-labels-idx1-ubyte.gz"),
    ];
}

/// Problems reading a data set; every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// File absent.
    #[error("{path}: file not found ({})", .dataset.missing_hint("a data directory"))]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// The data set it belongs to.
        dataset: DatasetKind,
    },
    /// Read or decompression error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Content that is not what the format says.
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Unknown data set name.
    #[error("unknown data set '{0}' (use fashion-mnist, mnist, cifar10, cifar100 or synthetic)")]
    UnknownDataset(String),
}

/// The supported data sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST, 28x28 gray, 10 classes.
    FashionMnist,
    /// MNIST, 28x28 gray, 10 classes.
    Mnist,
    /// CIFAR-10, 32x32 RGB.
    Cifar10,
    /// CIFAR-100 (fine labels), 32x32 RGB.
    Cifar100,
    /// Seeded synthetic images, 32x32 RGB, 10 classes.
    Synthetic,
}

impl std::str::FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "fashion-mnist" | "fashionmnist" => DatasetKind::FashionMnist,
            "mnist" => DatasetKind::Mnist,
            "cifar10" | "cifar-10" => DatasetKind::Cifar10,
            "cifar100" | "cifar-100" => DatasetKind::Cifar100,
            "synthetic" => DatasetKind::Synthetic,
            _ => return Err(DataError::UnknownDataset(s.to_string())),
        })
    }
}

impl DatasetKind {
    /// `(classes, image channels, image side)`.
    pub fn shape(self) -> (usize, usize, usize) {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist => (10, 1, 28),
            DatasetKind::Cifar10 | DatasetKind::Synthetic => (10, 3, 32),
            DatasetKind::Cifar100 => (100, 3, 32),
        }
    }

    /// How to provide the files of this data set when they are missing; `dir` is how the
    /// caller names its data directory option.
    pub fn missing_hint(self, dir: &str) -> String {
        match self {
            DatasetKind::FashionMnist => {
                format!("install it with `apt-get install dataset-fashion-mnist` or pass {dir}")
            }
            DatasetKind::Mnist => format!("pass {dir} with the four MNIST IDX files"),
            DatasetKind::Cifar10 => {
                format!("pass {dir} with data_batch_1.bin..data_batch_5.bin and test_batch.bin")
            }
            DatasetKind::Cifar100 => format!("pass {dir} with train.bin and test.bin"),
            DatasetKind::Synthetic => "the synthetic set needs no files".to_string(),
        }
    }

    /// The name used on the command line and in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Synthetic => "synthetic",
        }
    }

    /// Horizontal flips are label-preserving (CIFAR only).
    pub fn flips(self) -> bool {
        matches!(
            self,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::Synthetic
        )
    }
}

/// Images stored as bytes, NCHW, one label per image.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// `len * channels * side * side` bytes.
    pub pixels: Vec<u8>,
    /// Class index per image.
    pub labels: Vec<usize>,
    /// Channels per image.
    pub channels: usize,
    /// Image side (square images).
    pub side: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn image_len(&self) -> usize {
        self.channels * self.side * self.side
    }

    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            let l = self.image_len();
            self.pixels.truncate(n * l);
        }
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        let hw = self.side * self.side;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for img in self.pixels.chunks_exact(self.image_len()) {
            for (c, plane) in img.chunks_exact(hw).enumerate() {
                for &p in plane {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let n = (self.len() * hw).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / n - m * m).max(0.0)).sqrt().max(1e-6) as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }
}

/// A data set's training and test images with its class names.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Which data set.
    pub kind: DatasetKind,
    /// Training images.
    pub train: ImageSet,
    /// Test images.
    pub test: ImageSet,
    /// One name per class.
    pub classes: Vec<String>,
    /// Where the images came from: a directory, [`embedded::SOURCE`] or "synthetic".
    pub source: String,
}

/// How to load a data set.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Directory holding the files (`None`: the data set's default).
    pub dir: Option<PathBuf>,
    /// Use only the first N training images.
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    pub test_limit: Option<usize>,
    /// Seed of the synthetic data set.
    pub seed: u64,
}

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Loads `kind` as `opts` says.
pub fn load(kind: DatasetKind, opts: &DataOptions) -> Result<Dataset, DataError> {
    let default_dir = |d: &str| opts.dir.clone().unwrap_or_else(|| PathBuf::from(d));
    let source: String;
    let (mut train, mut test, classes) = match kind {
        DatasetKind::FashionMnist
            if opts.dir.is_none()
                && !fashion_mnist_dir()
                    .join("train-images-idx3-ubyte.gz")
                    .exists() =>
        {
            eprintln!(
                "note: {} not found (apt-get install dataset-fashion-mnist for all 70,000 images); using the {}",
                fashion_mnist_dir().display(),
                embedded::SOURCE
            );
            source = embedded::SOURCE.to_string();
            let (train, test) = load_embedded()?;
            (
                train,
                test,
                FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
            )
        }
        DatasetKind::FashionMnist | DatasetKind::Mnist => {
            let dir = if kind == DatasetKind::FashionMnist {
                opts.dir.clone().unwrap_or_else(fashion_mnist_dir)
            } else {
                default_dir("data/mnist")
            };
            let train = read_idx_pair(&dir, "train", kind)?;
            let test = read_idx_pair(&dir, "t10k", kind)?;
            source = dir.display().to_string();
            let names: Vec<String> = if kind == DatasetKind::FashionMnist {
                FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
            } else {
                (0..10).map(|d| d.to_string()).collect()
            };
            (train, test, names)
        }
        DatasetKind::Cifar10 => {
            let dir = find_cifar_dir(
                &default_dir("data/cifar-10-batches-bin"),
                "cifar-10-batches-bin",
            );
            let files: Vec<PathBuf> = (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}.bin")))
                .collect();
            let train = read_cifar(&files, kind)?;
            let test = read_cifar(&[dir.join("test_batch.bin")], kind)?;
            source = dir.display().to_string();
            (
                train,
                test,
                CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            )
        }
        DatasetKind::Cifar100 => {
            let dir = find_cifar_dir(&default_dir("data/cifar-100-binary"), "cifar-100-binary");
            let train = read_cifar(&[dir.join("train.bin")], kind)?;
            let test = read_cifar(&[dir.join("test.bin")], kind)?;
            source = dir.display().to_string();
            let names = std::fs::read_to_string(dir.join("fine_label_names.txt"))
                .map(|t| {
                    t.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| l.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .ok()
                .filter(|n| n.len() == 100)
                .unwrap_or_else(|| (0..100).map(|i| format!("class_{i}")).collect());
            (train, test, names)
        }
        DatasetKind::Synthetic => {
            let n_train = opts.train_limit.unwrap_or(2000);
            let n_test = opts.test_limit.unwrap_or(500);
            let (train, test) = synthetic(n_train, n_test, 3, 32, 10, opts.seed);
            source = format!("synthetic (seed {})", opts.seed);
            (
                train,
                test,
                (0..10).map(|i| format!("pattern_{i}")).collect(),
            )
        }
    };
    if let Some(n) = opts.train_limit {
        train.truncate(n);
    }
    if let Some(n) = opts.test_limit {
        test.truncate(n);
    }
    Ok(Dataset {
        kind,
        train,
        test,
        classes,
        source,
    })
}

/// Seeded synthetic images: each class is a random low-frequency pattern, each image that
/// pattern shifted by a few pixels plus noise. Learnable but not trivial.
pub fn synthetic(
    n_train: usize,
    n_test: usize,
    channels: usize,
    side: usize,
    classes: usize,
    seed: u64,
) -> (ImageSet, ImageSet) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_da7a);
    let cells = 4;
    let protos: Vec<Vec<f32>> = (0..classes)
        .map(|_| {
            (0..channels * cells * cells)
                .map(|_| rng.random::<f32>())
                .collect()
        })
        .collect();
    let mut make = |n: usize| {
        let mut set = ImageSet {
            pixels: Vec::with_capacity(n * channels * side * side),
            labels: Vec::with_capacity(n),
            channels,
            side,
        };
        for _ in 0..n {
            let label = rng.random_range(0..classes);
            let (dy, dx) = (rng.random_range(0..4usize), rng.random_range(0..4usize));
            for c in 0..channels {
                for y in 0..side {
                    for x in 0..side {
                        let gy = ((y + dy) * cells / (side + 4)).min(cells - 1);
                        let gx = ((x + dx) * cells / (side + 4)).min(cells - 1);
                        let v = protos[label][(c * cells + gy) * cells + gx] * 0.7
                            + rng.random::<f32>() * 0.3;
                        set.pixels.push((v * 255.0) as u8);
                    }
                }
            }
            set.labels.push(label);
        }
        set
    };
    let train = make(n_train);
    let test = make(n_test);
    (train, test)
}

/// Training-time augmentation.
#[derive(Clone, Debug, Default)]
pub struct Augment {
    /// Random-crop padding (4 for 32x32, 2 for 28x28; 0 = off).
    pub crop_padding: usize,
    /// Random horizontal flip with probability 0.5.
    pub flip: bool,
    /// Cutout square side (0 = off), applied after normalization.
    pub cutout: usize,
}

impl Augment {
    /// The standard recipe for `kind`: crop padding by image size, flips for CIFAR.
    pub fn standard(kind: DatasetKind, side: usize, cutout: usize) -> Self {
        Augment {
            crop_padding: if side >= 32 { 4 } else { 2 },
            flip: kind.flips(),
            cutout,
        }
    }
}

/// Writes normalized images `indices` of `set` into a flat NCHW vector, augmenting when
/// `augment` is given. Returns `(pixels, labels)`.
pub fn make_batch(
    set: &ImageSet,
    indices: &[usize],
    mean: &[f32],
    std: &[f32],
    augment: Option<&Augment>,
    rng: &mut StdRng,
) -> (Vec<f32>, Vec<i64>) {
    let (c, s) = (set.channels, set.side);
    let il = c * s * s;
    let mut out = vec![0f32; indices.len() * il];
    let mut labels = Vec::with_capacity(indices.len());
    for (k, &i) in indices.iter().enumerate() {
        labels.push(set.labels[i] as i64);
        let src = &set.pixels[i * il..(i + 1) * il];
        let dst = &mut out[k * il..(k + 1) * il];
        let (mut dy, mut dx, mut flip) = (0isize, 0isize, false);
        if let Some(a) = augment {
            let p = a.crop_padding as i32;
            if p > 0 {
                dy = rng.random_range(-p..=p) as isize;
                dx = rng.random_range(-p..=p) as isize;
            }
            flip = a.flip && rng.random::<bool>();
        }
        for ch in 0..c {
            for y in 0..s {
                for x in 0..s {
                    let sy = y as isize + dy;
                    let xx = if flip { s - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    let v = if sy >= 0 && sx >= 0 && (sy as usize) < s && (sx as usize) < s {
                        src[ch * s * s + sy as usize * s + sx as usize] as f32 / 255.0
                    } else {
                        0.0
                    };
                    dst[ch * s * s + y * s + x] = (v - mean[ch]) / std[ch];
                }
            }
        }
        if let Some(a) = augment.filter(|a| a.cutout > 0) {
            let cy = rng.random_range(0..s) as isize;
            let cx = rng.random_range(0..s) as isize;
            let h = (a.cutout / 2) as isize;
            let (y0, y1) = ((cy - h).max(0) as usize, ((cy + h) as usize).min(s));
            let (x0, x1) = ((cx - h).max(0) as usize, ((cx + h) as usize).min(s));
            for ch in 0..c {
                for y in y0..y1 {
                    for x in x0..x1 {
                        dst[ch * s * s + y * s + x] = 0.0;
                    }
                }
            }
        }
    }
    (out, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_and_normalized_batch() {
        let set = ImageSet {
            pixels: vec![0, 255, 0, 255],
            labels: vec![1],
            channels: 1,
            side: 2,
        };
        let (m, s) = set.mean_std();
        assert!((m[0] - 0.5).abs() < 1e-6 && (s[0] - 0.5).abs() < 1e-6);
        let mut rng = StdRng::seed_from_u64(0);
        let (x, y) = make_batch(&set, &[0], &m, &s, None, &mut rng);
        assert_eq!(x, vec![-1.0, 1.0, -1.0, 1.0]);
        assert_eq!(y, vec![1]);
        // Cutout covering the whole image zeroes everything.
        let a = Augment {
            crop_padding: 0,
            flip: false,
            cutout: 8,
        };
        let (x, _) = make_batch(&set, &[0], &m, &s, Some(&a), &mut rng);
        assert_eq!(x, vec![0.0; 4]);
    }

    #[test]
    fn synthetic_is_seeded() {
        let (a, _) = synthetic(4, 2, 3, 8, 10, 1);
        let (b, _) = synthetic(4, 2, 3, 8, 10, 1);
        let (c, _) = synthetic(4, 2, 3, 8, 10, 2);
        assert_eq!(a.pixels, b.pixels);
        assert_ne!(a.pixels, c.pixels);
    }
}
