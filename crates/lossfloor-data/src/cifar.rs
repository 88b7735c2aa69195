//! CIFAR-10 binary version (`cifar-10-batches-bin`).

use std::path::{Path, PathBuf};

use crate::util::{not_found, read_file};
use crate::{DataError, Dataset, ImageShape};

/// Bytes per record: 1 label byte + 3×32×32 pixel bytes.
pub(crate) const RECORD: usize = 1 + 3 * 32 * 32;

/// Loads CIFAR-10: a directory means the five training batches `data_batch_1.bin` …
/// `data_batch_5.bin`; a file path means just that batch (e.g. `test_batch.bin`).
pub(crate) fn load_cifar10(path: &Path, source: String) -> Result<Dataset, DataError> {
    const BATCH: &str = "a CIFAR-10 binary batch (records of 3073 bytes: 1 label byte, then \
                         1024 R, 1024 G, 1024 B bytes)";
    if !path.exists() {
        return Err(not_found(
            path,
            "a CIFAR-10 binary directory (cifar-10-batches-bin) holding data_batch_1.bin … \
             data_batch_5.bin, or one .bin batch file",
        ));
    }
    let files: Vec<PathBuf> = if path.is_dir() {
        (1..=5)
            .map(|i| path.join(format!("data_batch_{i}.bin")))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut pixels = Vec::with_capacity(files.len() * 10_000 * (RECORD - 1));
    let mut labels = Vec::with_capacity(files.len() * 10_000);
    for file in &files {
        let bytes = read_file(file, BATCH)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(DataError::format(
                file,
                format!(
                    "size {} bytes is not a multiple of the {RECORD}-byte CIFAR-10 record \
                     (1 label byte + 3x32x32 pixel bytes); expected the binary version, not the \
                     python pickle",
                    bytes.len()
                ),
            ));
        }
        for (r, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] >= 10 {
                return Err(DataError::format(
                    file,
                    format!(
                        "record {r} (byte offset {}): label {} is not a CIFAR-10 class; expected 0..=9",
                        r * RECORD,
                        rec[0]
                    ),
                ));
            }
            labels.push(u32::from(rec[0]));
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    Dataset::from_u8(
        source,
        ImageShape::new(3, 32, 32),
        pixels,
        Some(labels),
        Some(10),
    )
}
