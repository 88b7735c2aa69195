//! Writing files so that a crash never leaves one half-written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is
/// flushed, fsynced and renamed over `path` (the folder is fsynced too where the OS allows),
/// so `path` is either the old file or the complete new one. On error the temporary file is
/// removed. `io_error` turns an I/O failure on the named file into the caller's error type.
pub fn write_atomic_with<E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), E>,
    io_error: impl Fn(&Path, std::io::Error) -> E,
) -> Result<(), E> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path");
        return Err(io_error(path, e));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        {
            let mut w = BufWriter::new(&file);
            write(&mut w)?;
            w.flush().map_err(|e| io_error(&tmp, e))?;
        }
        file.sync_all().map_err(|e| io_error(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic_with`] for a byte buffer.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes), |_, e| e)
}

/// A hidden sibling of `path` for staging it: `DIR/.NAME.tmpPID` for a name without an
/// extension, `DIR/.STEM.tmpPID.EXT` otherwise (writers that pick a format by extension,
/// such as PNG plotting, keep working on it). [`temporary_owner`] recognises both.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pid = std::process::id();
    let name = match (path.file_stem(), path.extension()) {
        (Some(stem), Some(ext)) => format!(
            ".{}.tmp{pid}.{}",
            stem.to_string_lossy(),
            ext.to_string_lossy()
        ),
        _ => format!(
            ".{}.tmp{pid}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
    };
    dir.join(name)
}

/// The process id of a temporary file name made by [`write_atomic_with`] (`.NAME.tmpPID`)
/// or [`temporary_sibling`] (`.STEM.tmpPID.EXT`), or None for any other name.
pub fn temporary_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(".tmp")?;
    let after = &rest[at + 4..];
    let digits = after.split('.').next()?;
    // At most one extension after the pid, without further dots.
    if after.len() > digits.len() && after[digits.len() + 1..].contains('.') {
        return None;
    }
    if digits.is_empty() || at == 0 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether process `pid` still runs (Linux: `/proc/PID` exists). Elsewhere every process
/// counts as running, so that nothing another process may still be writing is removed.
fn process_runs(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the temporary files and folders in `dir` (not below it) that an interrupted
/// write of a process that no longer runs left behind, and returns their paths. A missing
/// `dir` has none.
pub fn remove_leftover_temporaries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = temporary_owner(&name.to_string_lossy()) else {
            continue;
        };
        if process_runs(pid) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed.push(path);
    }
    removed.sort();
    Ok(removed)
}

/// Several output files made all-or-nothing: each is written to its
/// [`temporary_sibling`] first ([`StagedOutputs::stage`]), and only [`StagedOutputs::commit`]
/// renames them all into place. Dropped without a commit (an error on the way), it removes
/// the temporaries, so a failed command leaves none of its outputs behind.
#[derive(Default)]
pub struct StagedOutputs {
    pending: Vec<(PathBuf, PathBuf)>,
}

impl StagedOutputs {
    /// Nothing staged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The path to write `path`'s content to, in the same folder.
    pub fn stage(&mut self, path: &Path) -> PathBuf {
        let tmp = temporary_sibling(path);
        self.pending.push((tmp.clone(), path.to_path_buf()));
        tmp
    }

    /// Renames every staged file into place (renames within one folder, which do not need
    /// free space). A staged file that was never written is an error naming it.
    pub fn commit(mut self) -> std::io::Result<()> {
        for (tmp, _) in &self.pending {
            if !tmp.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} was staged but not written", tmp.display()),
                ));
            }
        }
        let pending = std::mem::take(&mut self.pending);
        for (k, (tmp, path)) in pending.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp, path) {
                for (t, _) in &pending[k..] {
                    let _ = std::fs::remove_file(t);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for StagedOutputs {
    fn drop(&mut self) {
        for (tmp, _) in &self.pending {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporary_on_error() {
        let dir = std::env::temp_dir().join(format!("lossfloor-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.txt");
        write_atomic(&p, b"old").unwrap();
        let failed: Result<(), std::io::Error> = write_atomic_with(
            &p,
            |w| {
                w.write_all(b"partial")?;
                Err(std::io::Error::other("interrupted"))
            },
            |_, e| e,
        );
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temporary file left behind"
        );
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporary_names_are_recognised_and_nothing_else() {
        assert_eq!(temporary_owner(".stats.jsonl.tmp123"), Some(123));
        assert_eq!(temporary_owner(".curve.tmp77.png"), Some(77));
        assert_eq!(temporary_owner("stats.jsonl.tmp123"), None);
        assert_eq!(temporary_owner(".a.tmp12x"), None);
        assert_eq!(temporary_owner(".a.tmp"), None);
        assert_eq!(temporary_owner(".tmp5"), None);
        assert_eq!(temporary_owner(".a.tmp5.b.c"), None);
        assert_eq!(
            temporary_owner("network-snapshot-0000000032.safetensors"),
            None
        );
        let sib = temporary_sibling(Path::new("out/curve.png"));
        let name = sib.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(temporary_owner(&name), Some(std::process::id()));
        assert_eq!(sib.extension().unwrap(), "png");
        let sib = temporary_sibling(Path::new("samples"));
        let name = sib.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(temporary_owner(&name), Some(std::process::id()));
    }

    #[test]
    fn leftovers_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // Pid 4194304 is above Linux's pid_max limit (2^22), so no process has it.
        let dead = dir.path().join(".stats.jsonl.tmp4194304");
        let dead_dir = dir.path().join(".samples.tmp4194304");
        let own = dir.path().join(format!(".x.tmp{}", std::process::id()));
        let keep = dir.path().join("stats.jsonl");
        for p in [&dead, &own, &keep] {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::create_dir(&dead_dir).unwrap();
        std::fs::write(dead_dir.join("000000.png"), b"x").unwrap();
        let removed = remove_leftover_temporaries(dir.path()).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(removed, vec![dead_dir.clone(), dead.clone()]);
            assert!(!dead.exists() && !dead_dir.exists());
        }
        assert!(own.exists() && keep.exists());
    }

    #[test]
    fn staged_outputs_appear_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.csv"));
        {
            let mut staged = StagedOutputs::new();
            std::fs::write(staged.stage(&a), b"a").unwrap();
            let _never_written = staged.stage(&b);
            // Dropped without commit: the written temporary goes too.
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut staged = StagedOutputs::new();
        std::fs::write(staged.stage(&a), b"a").unwrap();
        let _never_written = staged.stage(&b);
        assert!(staged.commit().is_err());
        assert!(!a.exists() && !b.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut staged = StagedOutputs::new();
        std::fs::write(staged.stage(&a), b"a").unwrap();
        std::fs::write(staged.stage(&b), b"b").unwrap();
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"a");
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
