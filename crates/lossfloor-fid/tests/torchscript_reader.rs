//! The TorchScript reader on a tiny archive whose `data.pkl` is written opcode by opcode.

use std::io::{Cursor, Write};

use lossfloor_fid::torchscript::{Attr, StorageDType, TorchScriptArchive};

/// Minimal protocol-2 pickle writer.
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    fn text(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(&mut self, v: u16) -> &mut Self {
        if v < 256 {
            self.0.extend_from_slice(&[b'K', v as u8]);
        } else {
            self.0.push(b'M');
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        self
    }
    fn put(&mut self, i: u8) -> &mut Self {
        self.0.extend_from_slice(&[b'q', i]);
        self
    }
    fn get(&mut self, i: u8) -> &mut Self {
        self.0.extend_from_slice(&[b'h', i]);
        self
    }
    fn ints(&mut self, v: &[u16]) -> &mut Self {
        self.op(b'(');
        for &x in v {
            self.int(x);
        }
        self.op(b't')
    }
    /// `_rebuild_tensor_v2((storage, class, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`
    #[allow(clippy::too_many_arguments)]
    fn tensor(
        &mut self,
        first: bool,
        class: &str,
        key: &str,
        numel: u16,
        offset: u16,
        size: &[u16],
        stride: &[u16],
    ) -> &mut Self {
        if first {
            self.global("torch._utils", "_rebuild_tensor_v2").put(0);
        } else {
            self.get(0);
        }
        self.op(b'(')
            .op(b'(')
            .text("storage")
            .global("torch", class);
        self.text(key).text("cpu").int(numel).op(b't').op(b'Q');
        self.int(offset).ints(size).ints(stride).op(0x89);
        self.global("collections", "OrderedDict").op(b')').op(b'R');
        self.op(b't').op(b'R')
    }
    /// `NEWOBJ(class, ())` followed by an empty state dict and a MARK.
    fn module_begin(&mut self, module: &str, name: &str) -> &mut Self {
        self.global(module, name)
            .op(b')')
            .op(0x81)
            .op(b'}')
            .op(b'(')
    }
    /// SETITEMS then BUILD.
    fn module_end(&mut self) -> &mut Self {
        self.op(b'u').op(b'b')
    }
}

fn tiny_archive() -> Vec<u8> {
    let mut p = Pickle::default();
    p.op(0x80).op(2);
    p.module_begin("__torch__.tiny", "Tiny");
    p.text("training").op(0x88);
    p.text("w")
        .tensor(true, "FloatStorage", "0", 6, 0, &[2, 3], &[3, 1]);
    p.text("wt")
        .tensor(false, "FloatStorage", "0", 6, 0, &[3, 2], &[1, 3]);
    p.text("sub").module_begin("__torch__.tiny", "Sub");
    p.text("b")
        .tensor(false, "DoubleStorage", "1", 4, 1, &[3], &[1]);
    p.text("stride").int(2);
    p.text("padding")
        .global("torch.jit._pickle", "build_intlist")
        .op(b'(')
        .op(b']')
        .op(b'(')
        .int(0)
        .int(3)
        .op(b'e')
        .op(b't')
        .op(b'R');
    p.module_end();
    p.module_end();
    p.op(b'.');

    let s0: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let s1: Vec<u8> = [10.0f64, 20.0, 30.0, 40.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut buf = Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in [
            ("tiny/version", b"3\n".to_vec()),
            ("tiny/data.pkl", p.0.clone()),
            ("tiny/data/0", s0),
            ("tiny/data/1", s1),
        ] {
            z.start_file(name, o).unwrap();
            z.write_all(&bytes).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn reads_hand_written_torchscript_archive() {
    let a = TorchScriptArchive::from_reader(Cursor::new(tiny_archive())).unwrap();
    assert_eq!(a.classes[""], "__torch__.tiny.Tiny");
    assert_eq!(a.classes["sub"], "__torch__.tiny.Sub");
    assert_eq!(a.attrs["training"], Attr::Bool(true));
    assert_eq!(a.int("sub.stride"), Some(2));
    assert_eq!(a.int_list("sub.padding"), Some(vec![0, 3]));
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        vec!["sub.b", "w", "wt"]
    );
    assert_eq!(a.tensors["w"].dtype, StorageDType::F32);
    assert_eq!(a.tensors["sub.b"].dtype, StorageDType::F64);

    let (shape, w) = a.tensor_f64("w").unwrap();
    assert_eq!(shape, vec![2, 3]);
    assert_eq!(w, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // Transposed view of the same storage.
    let (shape, wt) = a.tensor_f64("wt").unwrap();
    assert_eq!(shape, vec![3, 2]);
    assert_eq!(wt, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    // Storage offset.
    let (shape, b) = a.tensor_f64("sub.b").unwrap();
    assert_eq!(shape, vec![3]);
    assert_eq!(b, vec![20.0, 30.0, 40.0]);

    let t = a.tensor("wt", &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 4.0], vec![2.0, 5.0], vec![3.0, 6.0]]
    );
}

#[test]
fn rejects_non_zip_and_missing_pickle() {
    assert!(TorchScriptArchive::from_reader(Cursor::new(b"not a zip".to_vec())).is_err());
    let mut buf = Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("x/version", zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(b"3").unwrap();
        z.finish().unwrap();
    }
    let err = TorchScriptArchive::from_reader(Cursor::new(buf.into_inner())).unwrap_err();
    assert!(err.to_string().contains("data.pkl"), "{err}");
}
