//! Bounds on what an input may make lossfloor allocate.
//!
//! Two rules keep a hostile or corrupt input from aborting the process with a huge
//! allocation:
//!
//! * A size declared by a file (an array shape, IDX dims, a PNG header) is checked against
//!   the bytes actually present, with overflow-checked arithmetic, before anything of that
//!   size is allocated. Compressed data can unpack to at most [`DEFLATE_MAX_RATIO`] times its
//!   size, which bounds what a zip entry, a gzip file or a PNG can honestly hold.
//! * A size chosen by the user (a batch, a channel count, a number of queries) is compared
//!   with the machine's memory ([`memory_limit`]) before the run starts, and refused with a
//!   message that says how much it would need ([`check_memory`]).

/// The most a DEFLATE stream (zip, gzip, zlib inside a PNG) can expand: 258 output bytes per
/// length/distance pair, which takes at least 2 bits, gives 1032:1.
pub const DEFLATE_MAX_RATIO: u64 = 1032;

/// What [`memory_limit`] assumes when `/proc/meminfo` cannot be read (not Linux): 1 TiB,
/// more than any single machine this runs on is likely to have, so that only absurd sizes
/// are refused there.
pub const FALLBACK_MEMORY: u64 = 1 << 40;

/// The machine's total memory in bytes (`MemTotal` of `/proc/meminfo`), if known.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// The most memory one run may plan to use: the machine's total memory ([`total_memory`]),
/// or [`FALLBACK_MEMORY`] where that is unknown. It is an upper bound on what could ever
/// succeed, not a prediction of what is free: sizes are refused only when even an empty
/// machine could not hold them.
pub fn memory_limit() -> u64 {
    total_memory().unwrap_or(FALLBACK_MEMORY)
}

/// Product of `dims`, or `None` when it overflows `usize`.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A byte count for people: `1.5 GiB (1610612736 bytes)`.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {} ({bytes} bytes)", UNITS[u])
}

/// `Ok` when `need` bytes (`None`: more than 2^128, i.e. the computation overflowed) fit in
/// [`memory_limit`]; otherwise a one-line message: "{what} needs N, more than this machine's
/// M of memory".
pub fn check_memory(what: &str, need: Option<u128>) -> Result<(), String> {
    check_memory_within(what, need, memory_limit())
}

/// [`check_memory`] against an explicit `limit` (for tests).
pub fn check_memory_within(what: &str, need: Option<u128>, limit: u64) -> Result<(), String> {
    let source = if total_memory().is_some() {
        "this machine's"
    } else {
        "the assumed"
    };
    match need {
        Some(n) if n <= u128::from(limit) => Ok(()),
        Some(n) => Err(format!(
            "{what} needs {}, more than {source} {} of memory",
            human_bytes(n),
            human_bytes(u128::from(limit))
        )),
        None => Err(format!(
            "{what} needs more than 2^128 bytes, more than {source} {} of memory",
            human_bytes(u128::from(limit))
        )),
    }
}

/// The longest `.npy` header accepted. numpy writes about 128 bytes for a plain array, and
/// its own loader refuses headers over 10 000 bytes by default; the header length is a
/// 4-byte field in format 2.0, so without a bound a few bytes could declare 4 GiB.
pub const NPY_MAX_HEADER: usize = 1 << 16;

/// The deepest bracket nesting accepted in an `.npy` header dict. A plain array's header
/// nests two deep (`{… 'shape': (…)}`); npyz's header parser backtracks exponentially in the
/// nesting depth (14 stray `{` took over a minute), so deeper headers are refused first.
pub const NPY_MAX_NESTING: usize = 4;

/// Reads the preamble and header of an `.npy` stream from `r` and checks them before any
/// `.npy` parser sees them: the magic, a declared header length that fits both
/// [`NPY_MAX_HEADER`] and `stream_len` (the most bytes the whole stream can hold), and a
/// bracket nesting of at most [`NPY_MAX_NESTING`]. Returns the bytes read, to be put back
/// in front of the rest of the stream (`Cursor::new(head).chain(r)`). The error says what
/// was wrong, for the caller to prefix with the file's name.
pub fn read_npy_head<R: std::io::Read + ?Sized>(
    r: &mut R,
    stream_len: u64,
) -> Result<Vec<u8>, String> {
    let mut head = vec![0u8; 10];
    r.read_exact(&mut head)
        .map_err(|_| "shorter than the 10-byte .npy preamble".to_string())?;
    if &head[..6] != b"\x93NUMPY" {
        return Err("does not start with the .npy magic \\x93NUMPY".into());
    }
    let header_len = match head[6] {
        1 => usize::from(u16::from_le_bytes([head[8], head[9]])),
        2 | 3 => {
            let mut rest = [0u8; 2];
            r.read_exact(&mut rest)
                .map_err(|_| "shorter than the 12-byte .npy 2.0 preamble".to_string())?;
            head.extend_from_slice(&rest);
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize
        }
        major => return Err(format!(".npy format version {major} is not 1, 2 or 3")),
    };
    let present = stream_len.saturating_sub(head.len() as u64);
    if header_len > NPY_MAX_HEADER || header_len as u64 > present {
        return Err(format!(
            ".npy header declares {header_len} bytes; expected at most {} (the limit is \
             {NPY_MAX_HEADER}, and {present} bytes follow the preamble)",
            present.min(NPY_MAX_HEADER as u64)
        ));
    }
    let start = head.len();
    head.resize(start + header_len, 0);
    r.read_exact(&mut head[start..])
        .map_err(|_| format!(".npy header truncated: expected {header_len} bytes"))?;
    let mut depth = 0usize;
    for &b in &head[start..] {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > NPY_MAX_NESTING {
                    return Err(format!(
                        ".npy header nests brackets deeper than {NPY_MAX_NESTING}; expected a \
                         dict like {{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }}"
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_overflow_to_none() {
        assert_eq!(checked_product(&[2, 3, 4]), Some(24));
        assert_eq!(checked_product(&[]), Some(1));
        if usize::BITS == 64 {
            assert_eq!(checked_product(&[1 << 31, 1 << 31, 4]), None);
        }
        assert_eq!(checked_product(&[usize::MAX, 2]), None);
    }

    #[test]
    fn memory_messages() {
        assert!(check_memory_within("x", Some(10), 10).is_ok());
        let e = check_memory_within("train.batch = 7", Some(11 << 30), 10 << 30).unwrap_err();
        assert!(e.contains("train.batch = 7 needs 11.0 GiB"), "{e}");
        assert!(e.contains("10.0 GiB"), "{e}");
        let e = check_memory_within("y", None, 1 << 30).unwrap_err();
        assert!(e.contains("2^128"), "{e}");
        assert_eq!(human_bytes(5), "5 bytes");
    }

    #[test]
    fn meminfo_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let m = total_memory().expect("MemTotal");
            assert!(m > 1 << 20);
            assert_eq!(memory_limit(), m);
        }
    }

    #[test]
    fn npy_head_checks_magic_length_and_nesting() {
        let ok = b"\x93NUMPY\x01\x00\x06\x00{(1,)}rest";
        let head = read_npy_head(&mut &ok[..], ok.len() as u64).unwrap();
        assert_eq!(head, &ok[..16]);
        let e = read_npy_head(&mut &b"PK\x03\x04......"[..], 12).unwrap_err();
        assert!(e.contains("magic"), "{e}");
        let long = b"\x93NUMPY\x02\x00\x00\x00\x02\x00";
        let e = read_npy_head(&mut &long[..], 1 << 30).unwrap_err();
        assert!(e.contains("declares 131072 bytes"), "{e}");
        let deep = b"\x93NUMPY\x01\x00\x05\x00(((((";
        let e = read_npy_head(&mut &deep[..], 15).unwrap_err();
        assert!(e.contains("nests brackets"), "{e}");
    }
}
