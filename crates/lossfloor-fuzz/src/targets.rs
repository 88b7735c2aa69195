//! The fuzz targets: one per reader or parser, each a seed corpus, a packing and a run
//! function that hands the packed input to the project's public entry point.
//!
//! A run function returns the reader's verdict as `Ok(())` or `Err(message)`; both are fine
//! outcomes. Only a panic, an abort or a hang is a finding.

use std::path::Path;

use candle_core::Device;

use crate::{seeds, Case, Input, Packing};

/// One reader or parser under fuzz.
pub struct Target {
    /// The name given on the command line.
    pub name: &'static str,
    /// What the target feeds, and to which function.
    pub about: &'static str,
    /// How an input becomes files.
    pub packing: Packing,
    /// The valid inputs mutations start from.
    pub seeds: fn() -> Vec<Input>,
    /// Runs the reader on a packed input inside `scratch` (a private folder).
    pub run: fn(&Case, &Path) -> Result<(), String>,
}

fn io_err(e: std::io::Error) -> String {
    format!("harness could not write the input: {e}")
}

/// Loads a dataset spec of `kind` naming `path`; reads a row so lazily checked data is
/// touched too.
fn load_dataset(kind: &str, path: &Path) -> Result<(), String> {
    let spec: lossfloor_data::DataSpec = format!("{kind}:{}", path.display())
        .parse()
        .map_err(|e: lossfloor_data::DataError| e.to_string())?;
    let data = lossfloor_data::load(&spec).map_err(|e| e.to_string())?;
    if !data.is_empty() {
        let mut row = vec![0f32; data.dim()];
        data.read_row(data.len() - 1, &mut row);
    }
    Ok(())
}

fn run_npy(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case.write_file(scratch, "data.npy").map_err(io_err)?;
    load_dataset("npy", &path)
}

fn run_idx(case: &Case, scratch: &Path) -> Result<(), String> {
    let dir = case.write_dir(scratch, "idx").map_err(io_err)?;
    let images = match case {
        Case::Files(files) => files
            .first()
            .map(|(name, _)| dir.join(name))
            .unwrap_or_else(|| dir.join(seeds::IDX_IMAGES)),
        Case::Bytes(_) => dir.join(seeds::IDX_IMAGES),
    };
    load_dataset("idx", &images)
}

fn run_cifar(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case.write_file(scratch, "test_batch.bin").map_err(io_err)?;
    load_dataset("cifar10", &path)
}

fn run_imagenet(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case
        .write_file(scratch, "train_data_batch_1.npz")
        .map_err(io_err)?;
    load_dataset("imagenet64", &path)
}

fn run_edm_zip(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case.write_file(scratch, "dataset.zip").map_err(io_err)?;
    load_dataset("edm", &path)
}

fn run_edm_dir(case: &Case, scratch: &Path) -> Result<(), String> {
    let dir = case.write_dir(scratch, "edm").map_err(io_err)?;
    load_dataset("edm", &dir)
}

fn run_safetensors(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case
        .write_file(scratch, "net.safetensors")
        .map_err(io_err)?;
    lossfloor_nets::checkpoint::load_network(&path, &Device::Cpu)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn run_network_toml(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case.write_file(scratch, "network.toml").map_err(io_err)?;
    lossfloor_nets::checkpoint::read_config_toml(&path)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn run_torchscript(case: &Case, _scratch: &Path) -> Result<(), String> {
    let archive =
        lossfloor_fid::TorchScriptArchive::from_reader(std::io::Cursor::new(case.bytes()))
            .map_err(|e| e.to_string())?;
    // Reading a tensor applies its declared offset, sizes and strides to its storage, which
    // is where a hostile archive would index out of bounds.
    let names: Vec<String> = archive.tensors.keys().cloned().collect();
    for name in names {
        archive.tensor_f64(&name).map_err(|e| e.to_string())?;
        archive
            .tensor(&name, &Device::Cpu)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn run_fid_stats(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case.write_file(scratch, "stats.npz").map_err(io_err)?;
    lossfloor_fid::load_stats_npz(&path)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn run_latents(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case.write_file(scratch, "latents.npy").map_err(io_err)?;
    lossfloor_sampler::latents_from_npy(&path, [3, 4, 4], &Device::Cpu)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn run_curve(case: &Case, scratch: &Path) -> Result<(), String> {
    let path = case.write_file(scratch, "curve.json").map_err(io_err)?;
    let curve = lossfloor_optimal::Curve::load(&path).map_err(|e| e.to_string())?;
    // A curve that loads must be usable: interpolation and σ* on any accepted file.
    for sigma in [1e-3, 0.5, 1e3] {
        curve.loss_at(sigma);
    }
    curve.sigma_star(0.01);
    curve.dataset.normalized();
    Ok(())
}

fn run_train_config(case: &Case, _scratch: &Path) -> Result<(), String> {
    let text = String::from_utf8_lossy(case.part(0));
    let overrides: Vec<String> = String::from_utf8_lossy(case.part(1))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lossfloor_train::config::Config::parse(&text, &overrides)
        .map(drop)
        .map_err(|e| format!("{e:#}"))
}

fn run_seeds(case: &Case, _scratch: &Path) -> Result<(), String> {
    lossfloor_sampler::parse_seeds(&String::from_utf8_lossy(case.bytes()))
        .map(drop)
        .map_err(|e| e.to_string())
}

fn run_sigmas(case: &Case, _scratch: &Path) -> Result<(), String> {
    lossfloor_optimal::sigmas::parse_sigmas(&String::from_utf8_lossy(case.bytes()))
        .map(drop)
        .map_err(|e| e.to_string())
}

fn run_data_spec(case: &Case, _scratch: &Path) -> Result<(), String> {
    String::from_utf8_lossy(case.bytes())
        .parse::<lossfloor_data::DataSpec>()
        .map(drop)
        .map_err(|e| e.to_string())
}

fn seeds_seeds() -> Vec<Input> {
    seeds::text_seeds(&[
        "0-63,100,200-202",
        "5",
        " 1, 2 ,3-4",
        "18446744073709551615",
    ])
}

fn sigmas_seeds() -> Vec<Input> {
    seeds::text_seeds(&[
        "0.1,0.5,2",
        "logspace:0.002:80:32",
        "1e-3, 1e2",
        "logspace:1:2:2",
    ])
}

fn data_spec_seeds() -> Vec<Input> {
    seeds::text_seeds(&[
        "cifar10:/data/cifar",
        "fashion-mnist:test",
        "edm:data.zip",
        "imagenet64:d",
        "idx:train-images-idx3-ubyte.gz",
        "npy:x.npy",
    ])
}

fn idx_plain_seeds() -> Vec<Input> {
    seeds::idx_seeds(false)
}

fn idx_gz_seeds() -> Vec<Input> {
    seeds::idx_seeds(true)
}

fn latents_seeds() -> Vec<Input> {
    let values: Vec<u8> = (0..96)
        .flat_map(|i| (i as f32 * 0.01 - 0.5).to_le_bytes())
        .collect();
    let f64s: Vec<u8> = (0..48).flat_map(|i| (i as f64).to_le_bytes()).collect();
    vec![
        vec![crate::Member::plain(
            "latents.npy",
            seeds::npy("<f4", &[2, 3, 4, 4], &values),
        )],
        vec![crate::Member::plain(
            "latents.npy",
            seeds::npy("<f8", &[1, 3, 4, 4], &f64s),
        )],
    ]
}

/// Every target, in the order `all` runs them.
pub fn all_targets() -> Vec<Target> {
    vec![
        Target {
            name: "npy",
            about: "npy:FILE dataset (lossfloor_data::load): f32/f64/u8, both byte orders",
            packing: Packing::File,
            seeds: seeds::npy_seeds,
            run: run_npy,
        },
        Target {
            name: "idx",
            about: "idx:FILE images with the label file beside them (plain IDX)",
            packing: Packing::Dir { gzip: false },
            seeds: idx_plain_seeds,
            run: run_idx,
        },
        Target {
            name: "idx-gz",
            about: "idx:FILE.gz images and labels, gzipped (gzip layer mutated too)",
            packing: Packing::Dir { gzip: true },
            seeds: idx_gz_seeds,
            run: run_idx,
        },
        Target {
            name: "cifar",
            about: "cifar10:FILE.bin, one CIFAR-10 binary batch",
            packing: Packing::File,
            seeds: seeds::cifar_seeds,
            run: run_cifar,
        },
        Target {
            name: "imagenet-npz",
            about: "imagenet64:FILE.npz (data + labels arrays in a zip)",
            packing: Packing::Zip,
            seeds: seeds::imagenet_seeds,
            run: run_imagenet,
        },
        Target {
            name: "edm-zip",
            about: "edm:FILE.zip, PNGs + dataset.json labels",
            packing: Packing::Zip,
            seeds: seeds::edm_seeds,
            run: run_edm_zip,
        },
        Target {
            name: "edm-dir",
            about: "edm:DIR, a folder of PNGs + dataset.json labels",
            packing: Packing::Dir { gzip: false },
            seeds: seeds::edm_seeds,
            run: run_edm_dir,
        },
        Target {
            name: "safetensors",
            about: "network checkpoint (lossfloor_nets::checkpoint::load_network)",
            packing: Packing::File,
            seeds: seeds::safetensors_seeds,
            run: run_safetensors,
        },
        Target {
            name: "network-toml",
            about: "network TOML config (lossfloor_nets::checkpoint::read_config_toml)",
            packing: Packing::File,
            seeds: seeds::network_toml_seeds,
            run: run_network_toml,
        },
        Target {
            name: "torchscript",
            about: "TorchScript zip + pickle (TorchScriptArchive::from_reader, every tensor read)",
            packing: Packing::Zip,
            seeds: seeds::torchscript_seeds,
            run: run_torchscript,
        },
        Target {
            name: "fid-stats",
            about: "FID reference statistics .npz (lossfloor_fid::load_stats_npz)",
            packing: Packing::Zip,
            seeds: seeds::fid_stats_seeds,
            run: run_fid_stats,
        },
        Target {
            name: "latents-npy",
            about: "sampler latents .npy (lossfloor_sampler::latents_from_npy)",
            packing: Packing::File,
            seeds: latents_seeds,
            run: run_latents,
        },
        Target {
            name: "curve-json",
            about: "optimal-loss curve JSON (Curve::load, then loss_at/sigma_star)",
            packing: Packing::File,
            seeds: seeds::curve_seeds,
            run: run_curve,
        },
        Target {
            name: "train-config",
            about:
                "training TOML config + --set overrides (lossfloor_train::config::Config::parse)",
            packing: Packing::Parts,
            seeds: seeds::train_config_seeds,
            run: run_train_config,
        },
        Target {
            name: "seeds",
            about: "seed list spec (lossfloor_sampler::parse_seeds)",
            packing: Packing::File,
            seeds: seeds_seeds,
            run: run_seeds,
        },
        Target {
            name: "sigmas",
            about: "σ grid spec (lossfloor_optimal::sigmas::parse_sigmas)",
            packing: Packing::File,
            seeds: sigmas_seeds,
            run: run_sigmas,
        },
        Target {
            name: "data-spec",
            about: "dataset spec string (DataSpec::from_str)",
            packing: Packing::File,
            seeds: data_spec_seeds,
            run: run_data_spec,
        },
    ]
}

/// The target called `name`.
pub fn find_target(name: &str) -> Option<Target> {
    all_targets().into_iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pack_unmutated;

    /// A seed the reader refuses would leave the fuzz at the reader's front door.
    #[test]
    fn every_seed_is_accepted() {
        for target in all_targets() {
            let scratch = tempfile::tempdir().unwrap();
            let seeds = (target.seeds)();
            assert!(!seeds.is_empty(), "{}", target.name);
            for (i, seed) in seeds.iter().enumerate() {
                let case = pack_unmutated(target.packing, seed);
                if let Err(e) = (target.run)(&case, scratch.path()) {
                    panic!("target {} seed {i} refused: {e}", target.name);
                }
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = all_targets().iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all_targets().len());
    }
}
