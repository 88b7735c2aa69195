//! Dataset spec strings and the top-level [`load`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{cifar, edm, idx, imagenet, npy, DataError, Dataset};

/// Where the Debian package `dataset-fashion-mnist` installs Fashion-MNIST
/// (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-…`).
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

const ACCEPTED: &str = "expected one of: cifar10:DIR (or cifar10:FILE.bin), edm:PATH (zip or \
                        folder), imagenet64:DIR (or imagenet64:FILE.npz), idx:FILE, npy:FILE, \
                        fashion-mnist, fashion-mnist:test";

/// A dataset to load, as parsed from a spec string (see the [`FromStr`] impl).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    /// `cifar10:DIR` — the five CIFAR-10 binary training batches in `DIR`, or
    /// `cifar10:FILE.bin` — just that batch (e.g. `test_batch.bin`). 3×32×32, 10 classes.
    Cifar10(PathBuf),
    /// `edm:PATH` — an EDM `dataset_tool.py` zip or folder of PNGs (+ `dataset.json`).
    Edm(PathBuf),
    /// `imagenet64:DIR` — downsampled-ImageNet `train_data_batch_*.npz` in `DIR`, or one
    /// `.npz` file. 1000 classes.
    Imagenet64(PathBuf),
    /// `idx:FILE` — an IDX image file (plain or gzipped), with the label file beside it
    /// attached when present.
    Idx(PathBuf),
    /// `npy:FILE` — a `.npy` float array `[N,C,H,W]`, `[N,H,W]` or `[N,D]`, already scaled.
    Npy(PathBuf),
    /// `fashion-mnist` (train, 60 000) or `fashion-mnist:test` (10 000), read from
    /// [`FASHION_MNIST_DIR`].
    FashionMnist {
        /// Load the 10 000-image test split instead of the training split.
        test: bool,
    },
}

impl FromStr for DataSpec {
    type Err = DataError;

    /// Parses `cifar10:DIR`, `edm:PATH`, `imagenet64:DIR`, `idx:FILE`, `npy:FILE`,
    /// `fashion-mnist` (= `fashion-mnist:train`) or `fashion-mnist:test`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |detail: String| DataError::Spec {
            spec: s.to_string(),
            detail,
        };
        match s {
            "fashion-mnist" | "fashion-mnist:train" => {
                return Ok(DataSpec::FashionMnist { test: false })
            }
            "fashion-mnist:test" => return Ok(DataSpec::FashionMnist { test: true }),
            _ => {}
        }
        let Some((prefix, rest)) = s.split_once(':') else {
            return Err(err(format!("missing 'kind:' prefix; {ACCEPTED}")));
        };
        let make: fn(PathBuf) -> DataSpec = match prefix {
            "cifar10" => DataSpec::Cifar10,
            "edm" => DataSpec::Edm,
            "imagenet64" => DataSpec::Imagenet64,
            "idx" => DataSpec::Idx,
            "npy" => DataSpec::Npy,
            "fashion-mnist" => {
                return Err(err(format!(
                    "unknown Fashion-MNIST split {rest:?}; expected fashion-mnist, \
                     fashion-mnist:train or fashion-mnist:test"
                )))
            }
            _ => return Err(err(format!("unknown dataset kind {prefix:?}; {ACCEPTED}"))),
        };
        if rest.is_empty() {
            return Err(err(format!("empty path after '{prefix}:'; {ACCEPTED}")));
        }
        Ok(make(PathBuf::from(rest)))
    }
}

impl fmt::Display for DataSpec {
    /// Writes the spec string; parsing it back gives the same spec (for UTF-8 paths).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Cifar10(p) => write!(f, "cifar10:{}", p.display()),
            DataSpec::Edm(p) => write!(f, "edm:{}", p.display()),
            DataSpec::Imagenet64(p) => write!(f, "imagenet64:{}", p.display()),
            DataSpec::Idx(p) => write!(f, "idx:{}", p.display()),
            DataSpec::Npy(p) => write!(f, "npy:{}", p.display()),
            DataSpec::FashionMnist { test: false } => write!(f, "fashion-mnist"),
            DataSpec::FashionMnist { test: true } => write!(f, "fashion-mnist:test"),
        }
    }
}

/// Loads the dataset named by `spec`; the result's [`Dataset::source`] is the spec string.
/// X-flip is off; turn it on with [`Dataset::with_xflip`].
pub fn load(spec: &DataSpec) -> Result<Dataset, DataError> {
    let source = spec.to_string();
    match spec {
        DataSpec::Cifar10(p) => cifar::load_cifar10(p, source),
        DataSpec::Edm(p) => edm::load_edm(p, source),
        DataSpec::Imagenet64(p) => imagenet::load_imagenet(p, source),
        DataSpec::Idx(p) => idx::load_idx(p, source),
        DataSpec::Npy(p) => npy::load_npy(p, source),
        DataSpec::FashionMnist { test } => {
            load_fashion_mnist(Path::new(FASHION_MNIST_DIR), *test, source)
        }
    }
}

/// Loads Fashion-MNIST from `dir` laid out like the Debian package (`train-images-idx3-ubyte.gz`,
/// `train-labels-idx1-ubyte.gz`, `t10k-…`; `.gz` optional). Missing files produce an error
/// telling to `apt-get install -y dataset-fashion-mnist`.
pub fn load_fashion_mnist(dir: &Path, test: bool, source: String) -> Result<Dataset, DataError> {
    let split = if test { "t10k" } else { "train" };
    let find = |kind: &str| -> Result<PathBuf, DataError> {
        let gz = dir.join(format!("{split}-{kind}-ubyte.gz"));
        let plain = dir.join(format!("{split}-{kind}-ubyte"));
        if gz.is_file() {
            Ok(gz)
        } else if plain.is_file() {
            Ok(plain)
        } else {
            Err(DataError::NotFound {
                path: gz,
                hint: "Fashion-MNIST is not installed; run `apt-get install -y \
                       dataset-fashion-mnist` (Debian package dataset-fashion-mnist)"
                    .to_string(),
            })
        }
    };
    let images = find("images-idx3")?;
    let labels = find("labels-idx1")?;
    let mut ds = idx::load_idx_pair(&images, Some(&labels), source)?;
    ds.num_classes = Some(10);
    Ok(ds)
}
