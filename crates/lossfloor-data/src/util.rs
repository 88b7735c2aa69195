//! Small shared helpers: file reading with good errors, natural sort.

use std::io::Read;
use std::path::Path;

use crate::DataError;

/// Reads a whole file; a missing file becomes [`DataError::NotFound`] with `expected` as hint.
pub(crate) fn read_file(path: &Path, expected: &str) -> Result<Vec<u8>, DataError> {
    if !path.exists() {
        return Err(not_found(path, expected));
    }
    std::fs::read(path).map_err(|e| DataError::io(path, "reading file", e))
}

/// `NotFound` error for `path` with hint "expected {expected}".
pub(crate) fn not_found(path: &Path, expected: &str) -> DataError {
    DataError::NotFound {
        path: path.to_path_buf(),
        hint: format!("expected {expected}"),
    }
}

/// Fills `buf` from `r`; on early end of data returns `Err(bytes_read)`.
pub(crate) fn fill<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<(), FillError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(FillError::Eof(got)),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FillError::Io(e)),
        }
    }
    Ok(())
}

/// Why [`fill`] stopped early.
pub(crate) enum FillError {
    /// The data ended after this many bytes.
    Eof(usize),
    /// A read failed.
    Io(std::io::Error),
}

/// One run of a natural-sort key.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum NatPart {
    Num(u128),
    Text(String),
}

/// Natural sort key: digit runs compare numerically ("batch_2" < "batch_10").
pub(crate) fn natural_key(s: &str) -> Vec<NatPart> {
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digit = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != digit {
                break;
            }
            run.push(c);
            chars.next();
        }
        parts.push(if digit {
            NatPart::Num(run.parse().unwrap_or(u128::MAX))
        } else {
            NatPart::Text(run)
        });
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["b_10.npz", "b_2.npz", "b_1.npz", "a.npz"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["a.npz", "b_1.npz", "b_2.npz", "b_10.npz"]);
    }
}
