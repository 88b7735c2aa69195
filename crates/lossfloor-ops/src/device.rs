//! The `--device cpu|cuda[:N]` option shared by every command that computes.

use candle_core::Device;

/// A device name the user gave that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {0:?}: expected \"cpu\", \"cuda\" or \"cuda:N\" (N = GPU ordinal)")]
    BadName(String),
    #[error(
        "device {0:?}: this lossfloor binary was built without CUDA; build one with scripts/build-cuda.sh (cargo feature `cuda`)"
    )]
    NoCudaSupport(String),
    #[error("device {name:?}: CUDA could not start GPU {ordinal}: {source}")]
    Cuda {
        name: String,
        ordinal: usize,
        source: candle_core::Error,
    },
}

/// Parses a device name: `None` is the CPU, `Some(N)` CUDA GPU number N (`cuda` is `cuda:0`).
pub fn parse_device_name(name: &str) -> Result<Option<usize>, DeviceError> {
    match name.trim() {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(0)),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Some(i)),
            _ => Err(DeviceError::BadName(name.to_string())),
        },
    }
}

/// Opens the device a name stands for, with a clear error when CUDA is not compiled in or the
/// GPU cannot be opened.
pub fn open_device(name: &str) -> Result<Device, DeviceError> {
    match parse_device_name(name)? {
        None => Ok(Device::Cpu),
        Some(_) if !candle_core::utils::cuda_is_available() => {
            Err(DeviceError::NoCudaSupport(name.to_string()))
        }
        Some(ordinal) => Device::new_cuda(ordinal).map_err(|source| DeviceError::Cuda {
            name: name.to_string(),
            ordinal,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_names_are_refused() {
        assert_eq!(parse_device_name("cpu").unwrap(), None);
        assert_eq!(parse_device_name("cuda").unwrap(), Some(0));
        assert_eq!(parse_device_name("cuda:3").unwrap(), Some(3));
        for bad in ["", "cuda:", "cuda:x", "tpu", "cuda:-1"] {
            let e = parse_device_name(bad).unwrap_err().to_string();
            assert!(e.contains("expected \"cpu\""), "{bad}: {e}");
        }
        assert!(matches!(open_device("cpu"), Ok(Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_the_build_script() {
        let e = open_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("scripts/build-cuda.sh"), "{e}");
    }
}
