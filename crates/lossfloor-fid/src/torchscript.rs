//! Reader for TorchScript / `torch.save` zip archives, without torch.
//!
//! A TorchScript archive is a zip holding `<root>/data.pkl` (a protocol-2 pickle of
//! the module tree) and one raw little-endian file per tensor storage under
//! `<root>/data/<key>`. Modules are pickled as `NEWOBJ` of a `__torch__.*` class
//! followed by `BUILD` with a dict of attributes; tensors are
//! `torch._utils._rebuild_tensor_v2(persistent_id(('storage', <StorageClass>, key,
//! device, numel)), offset, size, stride, requires_grad, hooks)`.
//!
//! [`TorchScriptArchive::open`] walks the pickle (parsed with candle's
//! [`candle_core::pickle::Stack`]) and flattens it into dotted names:
//! tensors (`net.layers.conv.weight`), integer attributes and integer lists
//! (`net.layers.conv.stride`, `…padding`), and the class of every module.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::FidError;

/// Element type of a tensor storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDType {
    F32,
    F64,
    F16,
    I64,
    U8,
}

impl StorageDType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "LongStorage" => Self::I64,
            "ByteStorage" => Self::U8,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 | Self::I64 => 8,
            Self::F16 => 2,
            Self::U8 => 1,
        }
    }
}

/// Where a tensor lives in the archive and how to view its storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRecord {
    /// Storage key (file name under `<root>/data/`).
    pub storage_key: String,
    pub dtype: StorageDType,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// A non-tensor attribute of a module.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    IntList(Vec<i64>),
    Float(f64),
    Bool(bool),
    Str(String),
    None,
}

/// A parsed TorchScript (or zip `torch.save`) archive.
#[derive(Debug)]
pub struct TorchScriptArchive {
    /// Zip member prefix, e.g. `out_jit_module/`.
    root: String,
    /// Tensors by dotted path.
    pub tensors: BTreeMap<String, TensorRecord>,
    /// Scalar / list attributes by dotted path.
    pub attrs: BTreeMap<String, Attr>,
    /// `module.Class` of every module by dotted path (`""` is the root).
    pub classes: BTreeMap<String, String>,
    storages: BTreeMap<String, Vec<u8>>,
}

/// The most objects an unpickled `data.pkl` may expand to. candle's unpickler copies an
/// object each time the pickle fetches it from the memo, so a few hundred bytes that fetch,
/// pair and store an object again double it each time (a "billion laughs"); the Inception
/// network's pickle expands to tens of thousands of objects.
const MAX_PICKLE_OBJECTS: u64 = 1 << 22;

/// The deepest object nesting accepted: dropping and walking unpickled objects recurses
/// once per level, so a pickle of a million nested tuples would overflow the stack. Real
/// module trees nest a few dozen levels.
const MAX_PICKLE_DEPTH: u32 = 512;

/// Size (objects, counting memo copies) and nesting depth of one simulated stack entry.
/// candle keeps MARK as an object on the stack (ops that pop may take it like any value),
/// so the simulation does too.
#[derive(Clone, Copy)]
struct Shape {
    objects: u64,
    depth: u32,
    mark: bool,
}

const LEAF: Shape = Shape {
    objects: 1,
    depth: 1,
    mark: false,
};

const MARK: Shape = Shape { mark: true, ..LEAF };

/// Walks the opcodes of a pickle up to STOP before candle's unpickler runs, refusing what
/// would make it allocate without bound: a length-prefixed argument longer than the bytes
/// that follow (candle allocates a BINUNICODE string's declared length, up to 4 GiB, before
/// reading it), an expansion past [`MAX_PICKLE_OBJECTS`] objects, or nesting deeper than
/// [`MAX_PICKLE_DEPTH`]. The stack is simulated with each entry's size and depth only.
/// Where the simulation cannot follow (a pop from an empty stack, a missing memo entry:
/// candle refuses those itself) it stops, but the length checks go on to STOP; an unknown
/// opcode ends the walk, since candle stops there with an error.
fn check_pickle(pkl: &[u8]) -> Result<(), String> {
    let need = |at: usize, n: usize, what: &str| -> Result<(), String> {
        let left = pkl.len().saturating_sub(at);
        if left < n {
            Err(format!(
                "{what} at byte {at} declares {n} bytes but only {left} remain"
            ))
        } else {
            Ok(())
        }
    };
    let mut stack: Vec<Shape> = Vec::new();
    let mut memo: HashMap<u32, Shape> = HashMap::new();
    let mut simulating = true;
    // Pops `n` entries (or down to the last mark) and merges them into one parent.
    fn merge(parts: &[Shape]) -> Shape {
        parts.iter().fold(LEAF, |acc, p| Shape {
            objects: acc.objects.saturating_add(p.objects),
            depth: acc.depth.max(p.depth.saturating_add(1)),
            mark: false,
        })
    }
    let mut at = 0usize;
    while at < pkl.len() {
        let op_at = at;
        let op = pkl[at];
        at += 1;
        let arg = match op {
            b'.' => return Ok(()),
            0x80 | b'q' | b'K' | b'h' => 1,
            b'M' => 2,
            b'r' | b'J' | b'j' => 4,
            b'G' => 8,
            0x8a => {
                need(at, 1, "LONG1")?;
                1 + usize::from(pkl[at])
            }
            b'X' => {
                need(at, 4, "BINUNICODE length")?;
                let len = u32::from_le_bytes(pkl[at..at + 4].try_into().expect("4 bytes"));
                need(at + 4, len as usize, "BINUNICODE string")?;
                4 + len as usize
            }
            b'c' => {
                // Module and class names, each ending in a newline.
                for _ in 0..2 {
                    match pkl[at..].iter().position(|&b| b == b'\n') {
                        Some(end) => at += end + 1,
                        None => return Err(format!("GLOBAL name at byte {at} has no newline")),
                    }
                }
                0
            }
            b')' | b'R' | b'(' | b't' | b'Q' | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | b'N' | b's'
            | b'u' | b'}' | b'd' | b'b' | 0x81 | b']' | b'a' | b'e' => 0,
            _ => return Ok(()),
        };
        need(at, arg, "opcode argument")?;
        let argument = &pkl[at..at + arg];
        at += arg;
        if !simulating {
            continue;
        }
        let memo_id = || match arg {
            1 => u32::from(argument[0]),
            _ => u32::from_le_bytes(argument.try_into().expect("4 bytes")),
        };
        let pop = |stack: &mut Vec<Shape>, n: usize| -> Option<Vec<Shape>> {
            let from = stack.len().checked_sub(n)?;
            Some(stack.split_off(from))
        };
        let to_mark = |stack: &mut Vec<Shape>| -> Option<Vec<Shape>> {
            let mark = stack.iter().rposition(|s| s.mark)?;
            let items = stack.split_off(mark + 1);
            stack.pop();
            Some(items)
        };
        // `None`: candle will refuse this pickle itself; stop simulating.
        let pushed: Option<Shape> = match op {
            b'(' => Some(MARK),
            0x80 => continue,
            b'q' | b'r' => match stack.last() {
                Some(top) => {
                    memo.insert(memo_id(), *top);
                    continue;
                }
                None => None,
            },
            b'h' | b'j' => memo.get(&memo_id()).copied(),
            b'R' | 0x81 => pop(&mut stack, 2).map(|p| merge(&p)),
            b't' => to_mark(&mut stack).map(|p| merge(&p)),
            0x85 | b'Q' => pop(&mut stack, 1).map(|p| merge(&p)),
            0x86 => pop(&mut stack, 2).map(|p| merge(&p)),
            0x87 => pop(&mut stack, 3).map(|p| merge(&p)),
            // Items added to the container below them.
            b's' | b'a' | b'b' | b'u' | b'e' => {
                let parts = match op {
                    b's' => pop(&mut stack, 2),
                    b'a' | b'b' => pop(&mut stack, 1),
                    _ => to_mark(&mut stack),
                };
                match (parts, stack.pop()) {
                    (Some(p), Some(container)) => {
                        // The container keeps its level; its new items sit one below it.
                        let items = merge(&p);
                        Some(Shape {
                            objects: container.objects.saturating_add(items.objects - 1),
                            depth: container.depth.max(items.depth),
                            mark: false,
                        })
                    }
                    _ => None,
                }
            }
            _ => Some(LEAF),
        };
        let Some(shape) = pushed else {
            simulating = false;
            continue;
        };
        if shape.objects > MAX_PICKLE_OBJECTS {
            return Err(format!(
                "opcode at byte {op_at} expands to more than {MAX_PICKLE_OBJECTS} objects \
                 (memo entries copied into themselves); expected a TorchScript module tree"
            ));
        }
        if shape.depth > MAX_PICKLE_DEPTH {
            return Err(format!(
                "opcode at byte {op_at} nests objects deeper than {MAX_PICKLE_DEPTH} levels; \
                 expected a TorchScript module tree"
            ));
        }
        stack.push(shape);
    }
    Ok(())
}

fn bad(msg: impl Into<String>) -> FidError {
    FidError::Archive(msg.into())
}

impl TorchScriptArchive {
    /// Opens and parses an archive from a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FidError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| FidError::io(path, e))?;
        Self::from_reader(BufReader::new(file))
    }

    /// Parses an archive from any seekable reader; all storages are read into memory.
    pub fn from_reader<R: Read + Seek>(reader: R) -> Result<Self, FidError> {
        let mut zip = zip::ZipArchive::new(reader).map_err(|e| bad(format!("not a zip: {e}")))?;
        let pkl_name = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .map(str::to_owned)
            .ok_or_else(|| bad("no data.pkl in archive"))?;
        let root = pkl_name[..pkl_name.len() - "data.pkl".len()].to_owned();

        let mut pkl = Vec::new();
        zip.by_name(&pkl_name)
            .map_err(|e| bad(e.to_string()))?
            .read_to_end(&mut pkl)
            .map_err(|e| bad(e.to_string()))?;
        check_pickle(&pkl).map_err(|e| bad(format!("{pkl_name}: pickle: {e}")))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::Cursor::new(&pkl))
            .map_err(|e| bad(format!("pickle: {e}")))?;
        let top = stack.finalize().map_err(|e| bad(format!("pickle: {e}")))?;

        let mut archive = Self {
            root,
            tensors: BTreeMap::new(),
            attrs: BTreeMap::new(),
            classes: BTreeMap::new(),
            storages: BTreeMap::new(),
        };
        archive.walk(top, "")?;

        let keys: Vec<String> = archive
            .tensors
            .values()
            .map(|t| t.storage_key.clone())
            .collect();
        for key in keys {
            if archive.storages.contains_key(&key) {
                continue;
            }
            let name = format!("{}data/{}", archive.root, key);
            let mut buf = Vec::new();
            zip.by_name(&name)
                .map_err(|e| bad(format!("{name}: {e}")))?
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            archive.storages.insert(key, buf);
        }
        for (name, t) in &archive.tensors {
            let len = archive.storages[&t.storage_key].len() / t.dtype.size();
            let last = t.offset
                + t.shape
                    .iter()
                    .zip(&t.stride)
                    .map(|(&n, &s)| n.saturating_sub(1) * s)
                    .sum::<usize>();
            if t.shape.iter().all(|&n| n > 0) && last >= len {
                return Err(bad(format!("tensor {name} overruns its storage")));
            }
        }
        Ok(archive)
    }

    fn walk(&mut self, obj: Object, path: &str) -> Result<(), FidError> {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_owned()
            } else {
                format!("{path}.{k}")
            }
        };
        match obj {
            // A module: NEWOBJ(class, ()) then BUILD(state dict).
            Object::Build { callable, args } => {
                let class = match *callable {
                    Object::Reduce { callable, .. } => match *callable {
                        Object::Class {
                            module_name,
                            class_name,
                        } => format!("{module_name}.{class_name}"),
                        other => return Err(bad(format!("{path}: unexpected {other:?}"))),
                    },
                    Object::Class {
                        module_name,
                        class_name,
                    } => format!("{module_name}.{class_name}"),
                    other => return Err(bad(format!("{path}: unexpected build target {other:?}"))),
                };
                self.classes.insert(path.to_owned(), class);
                let Object::Dict(items) = *args else {
                    return Err(bad(format!("{path}: module state is not a dict")));
                };
                for (k, v) in items {
                    let Object::Unicode(k) = k else {
                        return Err(bad(format!("{path}: non-string attribute name")));
                    };
                    self.walk(v, &join(&k))?;
                }
            }
            // A plain dict of things (e.g. a state dict saved with torch.save).
            Object::Dict(items) => {
                for (k, v) in items {
                    let k = match k {
                        Object::Unicode(k) => k,
                        Object::Int(i) => i.to_string(),
                        other => return Err(bad(format!("{path}: key {other:?}"))),
                    };
                    self.walk(v, &join(&k))?;
                }
            }
            Object::Reduce { callable, args } => {
                let (module, class) = match &*callable {
                    Object::Class {
                        module_name,
                        class_name,
                    } => (module_name.as_str(), class_name.as_str()),
                    other => return Err(bad(format!("{path}: cannot call {other:?}"))),
                };
                match (module, class) {
                    ("torch._utils", "_rebuild_tensor_v2") => {
                        let rec = tensor_record(*args).map_err(|e| bad(format!("{path}: {e}")))?;
                        self.tensors.insert(path.to_owned(), rec);
                    }
                    ("torch._utils", "_rebuild_parameter") => {
                        let mut a = tuple(*args, path)?;
                        if a.is_empty() {
                            return Err(bad(format!("{path}: empty _rebuild_parameter")));
                        }
                        self.walk(a.swap_remove(0), path)?;
                    }
                    ("torch.jit._pickle", "build_intlist") => {
                        let mut a = tuple(*args, path)?;
                        let list = match a.pop() {
                            Some(Object::List(l)) | Some(Object::Tuple(l)) => l,
                            other => return Err(bad(format!("{path}: intlist {other:?}"))),
                        };
                        let ints = list
                            .into_iter()
                            .map(|o| o.int_or_long())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|o| bad(format!("{path}: intlist item {o:?}")))?;
                        self.attrs.insert(path.to_owned(), Attr::IntList(ints));
                    }
                    // A module whose state was never BUILT (no attributes).
                    _ if module.starts_with("__torch__") => {
                        self.classes
                            .insert(path.to_owned(), format!("{module}.{class}"));
                    }
                    _ => return Err(bad(format!("{path}: unsupported call {module}.{class}"))),
                }
            }
            Object::Int(i) => {
                self.attrs.insert(path.to_owned(), Attr::Int(i as i64));
            }
            Object::Long(i) => {
                self.attrs.insert(path.to_owned(), Attr::Int(i));
            }
            Object::Float(f) => {
                self.attrs.insert(path.to_owned(), Attr::Float(f));
            }
            Object::Bool(b) => {
                self.attrs.insert(path.to_owned(), Attr::Bool(b));
            }
            Object::Unicode(s) => {
                self.attrs.insert(path.to_owned(), Attr::Str(s));
            }
            Object::None => {
                self.attrs.insert(path.to_owned(), Attr::None);
            }
            Object::List(items) | Object::Tuple(items) => {
                if let Ok(ints) = items
                    .iter()
                    .map(|o| o.clone().int_or_long())
                    .collect::<Result<Vec<_>, _>>()
                {
                    self.attrs.insert(path.to_owned(), Attr::IntList(ints));
                } else {
                    for (i, v) in items.into_iter().enumerate() {
                        self.walk(v, &join(&i.to_string()))?;
                    }
                }
            }
            other => return Err(bad(format!("{path}: unsupported object {other:?}"))),
        }
        Ok(())
    }

    /// Integer attribute (an `int`) or the single value of a one-element list.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attrs.get(name)? {
            Attr::Int(i) => Some(*i),
            Attr::IntList(l) if l.len() == 1 => Some(l[0]),
            _ => None,
        }
    }

    /// Integer list attribute; a scalar `int` is returned as a one-element list.
    pub fn int_list(&self, name: &str) -> Option<Vec<i64>> {
        match self.attrs.get(name)? {
            Attr::Int(i) => Some(vec![*i]),
            Attr::IntList(l) => Some(l.clone()),
            _ => None,
        }
    }

    /// Reads a tensor's elements as f64 in row-major (C) order, honouring offset and strides.
    pub fn tensor_f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>), FidError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| bad(format!("missing tensor {name}")))?;
        let bytes = &self.storages[&t.storage_key];
        let elem = |i: usize| -> f64 {
            let s = i * t.dtype.size();
            match t.dtype {
                StorageDType::F32 => f32::from_le_bytes(bytes[s..s + 4].try_into().unwrap()) as f64,
                StorageDType::F64 => f64::from_le_bytes(bytes[s..s + 8].try_into().unwrap()),
                StorageDType::F16 => {
                    f16_to_f32(u16::from_le_bytes([bytes[s], bytes[s + 1]])) as f64
                }
                StorageDType::I64 => i64::from_le_bytes(bytes[s..s + 8].try_into().unwrap()) as f64,
                StorageDType::U8 => bytes[s] as f64,
            }
        };
        let numel: usize = t.shape.iter().product();
        let mut out = Vec::with_capacity(numel);
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let pos = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.push(elem(pos));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok((t.shape.clone(), out))
    }

    /// Reads a tensor as a contiguous f32 candle tensor.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, FidError> {
        let (shape, data) = self.tensor_f64(name)?;
        Ok(Tensor::from_vec(data, shape, device)?.to_dtype(DType::F32)?)
    }
}

fn tuple(obj: Object, path: &str) -> Result<Vec<Object>, FidError> {
    obj.tuple()
        .map_err(|o| bad(format!("{path}: expected tuple, got {o:?}")))
}

fn usizes(obj: Object) -> Result<Vec<usize>, String> {
    let items = match obj {
        Object::Tuple(v) | Object::List(v) => v,
        other => return Err(format!("expected tuple, got {other:?}")),
    };
    items
        .into_iter()
        .map(|o| match o.int_or_long() {
            Ok(i) if i >= 0 => Ok(i as usize),
            Ok(i) => Err(format!("negative {i}")),
            Err(o) => Err(format!("expected int, got {o:?}")),
        })
        .collect()
}

/// Parses the arguments of `_rebuild_tensor_v2`.
fn tensor_record(args: Object) -> Result<TensorRecord, String> {
    let mut a = match args {
        Object::Tuple(a) if a.len() >= 4 => a,
        other => return Err(format!("bad _rebuild_tensor_v2 args {other:?}")),
    };
    let stride = usizes(a.remove(3))?;
    let shape = usizes(a.remove(2))?;
    let offset = a
        .remove(1)
        .int_or_long()
        .map_err(|o| format!("bad offset {o:?}"))? as usize;
    let storage = match a.remove(0) {
        Object::PersistentLoad(id) => *id,
        other => return Err(format!("expected persistent id, got {other:?}")),
    };
    let s = match storage {
        Object::Tuple(s) if s.len() >= 3 => s,
        other => return Err(format!("bad storage id {other:?}")),
    };
    let dtype = match &s[1] {
        Object::Class { class_name, .. } => StorageDType::from_class(class_name)
            .ok_or_else(|| format!("unsupported storage {class_name}"))?,
        other => return Err(format!("bad storage class {other:?}")),
    };
    let storage_key = match &s[2] {
        Object::Unicode(k) => k.clone(),
        other => return Err(format!("bad storage key {other:?}")),
    };
    if shape.len() != stride.len() {
        return Err("shape and stride ranks differ".into());
    }
    Ok(TensorRecord {
        storage_key,
        dtype,
        offset,
        shape,
        stride,
    })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24.
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod hostile_tests {
    use std::io::{Cursor, Write};

    use super::*;

    fn archive_with_pickle(pkl: &[u8]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut out);
        z.start_file("net/data.pkl", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(pkl).unwrap();
        z.finish().unwrap();
        out.into_inner()
    }

    /// Found by `lossfloor-fuzz torchscript`: a BINUNICODE string declaring 2 GiB in an
    /// eight-byte pickle made the unpickler allocate the declared size.
    #[test]
    fn string_longer_than_the_pickle_is_refused_before_allocating() {
        let pkl = [0x80, 2, b'X', 0x07, 0x00, 0x00, 0x80, b'a'];
        let e = TorchScriptArchive::from_reader(Cursor::new(archive_with_pickle(&pkl)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("net/data.pkl") && e.contains("BINUNICODE") && e.contains("2147483655"),
            "{e}"
        );
    }

    /// A memo entry paired with itself and stored back, 40 times: 2^40 copies for candle.
    #[test]
    fn self_doubling_memo_is_refused() {
        let mut pkl = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..40 {
            pkl.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        pkl.push(b'.');
        let t = std::time::Instant::now();
        let e = TorchScriptArchive::from_reader(Cursor::new(archive_with_pickle(&pkl)))
            .unwrap_err()
            .to_string();
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        assert!(e.contains("more than 4194304 objects"), "{e}");
    }

    /// A million nested tuples would overflow the stack when dropped or walked.
    #[test]
    fn deep_nesting_is_refused() {
        let mut pkl = vec![0x80, 2, b'N'];
        pkl.extend(std::iter::repeat_n(0x85, 100_000));
        pkl.push(b'.');
        let e = TorchScriptArchive::from_reader(Cursor::new(archive_with_pickle(&pkl)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("deeper than 512 levels"), "{e}");
        // A long flat list is fine for the walk.
        let mut flat = vec![0x80, 2, b']'];
        for _ in 0..5000 {
            flat.extend_from_slice(b"Na");
        }
        flat.push(b'.');
        assert!(check_pickle(&flat).is_ok());
    }

    /// Found by the long `lossfloor-fuzz torchscript` run: the walk stopped where its stack
    /// model lost track (it kept marks apart, candle keeps them on the stack), and a huge
    /// string after that point went unchecked. Lengths are now checked to STOP regardless.
    #[test]
    fn lengths_are_checked_after_the_simulation_loses_track() {
        // `t` with no mark: the simulation stops; the 4 GiB string after it must still fail.
        let pkl = [b't', b'X', 0x01, 0x00, 0xff, 0xff, b'a', b'.'];
        let e = check_pickle(&pkl).unwrap_err();
        assert!(
            e.contains("BINUNICODE string") && e.contains("4294901761"),
            "{e}"
        );
        // A MARK popped as a value, as candle allows: the walk follows on.
        assert!(check_pickle(b"(\x85N.").is_ok());
    }

    #[test]
    fn pickle_length_walk_accepts_valid_and_stops_at_stop() {
        assert!(check_pickle(&[0x80, 2, b'X', 1, 0, 0, 0, b'a', b'.']).is_ok());
        // Bytes after STOP are not the pickle's business.
        assert!(check_pickle(&[b'N', b'.', b'X', 0xff, 0xff]).is_ok());
        assert!(check_pickle(b"cm\nx").is_err());
        assert!(check_pickle(&[b'G', 0, 0]).is_err());
    }
}
