//! Mutation fuzzing of every lossfloor reader and parser: hostile bytes must give clean `Err`s, never a panic, an abort or a hang.
//!
//! Each [`Target`] owns a corpus of small valid inputs written by the project's own writers
//! (or by hand where the project only reads the format), a [`Packing`] that says how an input
//! becomes files, and a `run` function that hands those files to the reader. The [`engine`]
//! mutates the seeds with [`mutate`], runs each input under `catch_unwind` with a watchdog for
//! hangs, and saves anything that panics, hangs or aborts under the findings folder. An abort
//! (a failed allocation, a stack overflow) kills the process, so the binary runs every target
//! in a child process and reports the input the child was on ([`engine::supervise`]).

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

pub mod alloc_guard;
pub mod engine;
pub mod mutate;
pub mod seeds;
pub mod targets;

pub use targets::{all_targets, find_target, Target};

/// One named part of an input: a file of a zip or directory, or a section of a text input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The name inside the zip or directory (never mutated, so never a path outside the
    /// scratch folder).
    pub name: String,
    /// The contents, before any compression the packing applies.
    pub bytes: Vec<u8>,
    /// Store this member deflated (zip) or gzipped (directory with gzip); mutations flip it.
    pub compressed: bool,
}

impl Member {
    /// A member stored as-is.
    pub fn plain(name: &str, bytes: impl Into<Vec<u8>>) -> Member {
        Member {
            name: name.to_string(),
            bytes: bytes.into(),
            compressed: false,
        }
    }
}

/// One fuzz input before packing: one member for single-file and text targets, several for
/// archives and directories.
pub type Input = Vec<Member>;

/// How a target's input becomes what its reader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// One file (or string): the first member's bytes.
    File,
    /// A zip archive of the members. Members are mutated before zipping, so the archive's CRCs
    /// stay valid and the fuzz reaches the inner format; the archive bytes are sometimes
    /// mutated too, to test the zip layer.
    Zip,
    /// Files in a directory, gzipped when `gzip` and the member says so.
    Dir {
        /// Gzip the members marked `compressed` (IDX `.gz` pairs).
        gzip: bool,
    },
    /// Several in-memory parts (e.g. a config text and its `--set` overrides).
    Parts,
}

/// A packed input: what the reader is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Case {
    /// The bytes of one file (or one string).
    Bytes(Vec<u8>),
    /// Named files or parts, with their final (compressed, possibly mutated) bytes.
    Files(Vec<(String, Vec<u8>)>),
}

impl Case {
    /// The bytes of a [`Case::Bytes`]; the first part of a [`Case::Files`].
    pub fn bytes(&self) -> &[u8] {
        match self {
            Case::Bytes(b) => b,
            Case::Files(f) => f.first().map(|(_, b)| b.as_slice()).unwrap_or(&[]),
        }
    }

    /// Part `i` of a [`Case::Files`] (empty when absent).
    pub fn part(&self, i: usize) -> &[u8] {
        match self {
            Case::Bytes(b) if i == 0 => b,
            Case::Bytes(_) => &[],
            Case::Files(f) => f.get(i).map(|(_, b)| b.as_slice()).unwrap_or(&[]),
        }
    }

    /// Writes the bytes to `scratch/name` and returns the path.
    pub fn write_file(&self, scratch: &Path, name: &str) -> std::io::Result<PathBuf> {
        let path = scratch.join(name);
        std::fs::write(&path, self.bytes())?;
        Ok(path)
    }

    /// Writes the files into a fresh `scratch/name` directory and returns it.
    pub fn write_dir(&self, scratch: &Path, name: &str) -> std::io::Result<PathBuf> {
        let dir = scratch.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        if let Case::Files(files) = self {
            for (file, bytes) in files {
                let path = dir.join(file);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, bytes)?;
            }
        }
        Ok(dir)
    }

    /// The bytes saved for a finding: the file itself, or a stored zip of the files (which
    /// [`Case::from_saved`] reads back).
    pub fn to_saved(&self) -> Vec<u8> {
        match self {
            Case::Bytes(b) => b.clone(),
            Case::Files(files) => {
                let members: Vec<Member> = files
                    .iter()
                    .map(|(n, b)| Member::plain(n, b.clone()))
                    .collect();
                zip_members(&members).unwrap_or_default()
            }
        }
    }

    /// Reads back a saved finding for a target of `packing`.
    pub fn from_saved(packing: Packing, saved: &[u8]) -> Result<Case, String> {
        match packing {
            Packing::File | Packing::Zip => Ok(Case::Bytes(saved.to_vec())),
            Packing::Dir { .. } | Packing::Parts => {
                let members = unzip_members(saved)
                    .map_err(|e| format!("a saved multi-file input is a zip of the files: {e}"))?;
                Ok(Case::Files(
                    members.into_iter().map(|m| (m.name, m.bytes)).collect(),
                ))
            }
        }
    }
}

/// Zips members (deflated when `compressed`); an error for names the zip writer refuses.
pub fn zip_members(members: &[Member]) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut out);
    for m in members {
        let method = if m.compressed {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        writer
            .start_file(m.name.as_str(), options)
            .map_err(|e| e.to_string())?;
        writer.write_all(&m.bytes).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// The members of a zip archive (for seeds written by the project's own zip writers).
pub fn unzip_members(bytes: &[u8]) -> Result<Vec<Member>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| e.to_string())?;
        members.push(Member {
            name: file.name().to_string(),
            bytes: data,
            compressed: file.compression() != zip::CompressionMethod::Stored,
        });
    }
    Ok(members)
}

/// Gzips `bytes` (fast level: the fuzz loop does this per input).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}
