//! Where weight bytes come from and what they mean: safetensors headers (validated before any
//! byte is trusted), the shard index, and a `ByteSource` that reads tensor bytes in bounded chunks
//! (from files natively, from `synthetic` generators for benchmarks, from fetch streams on the web).

pub mod synthetic;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    U32,
    BF16,
    F16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::U32 | DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        match d {
            safetensors::Dtype::U32 => Some(DType::U32),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::F32 => Some(DType::F32),
            _ => None,
        }
    }

    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::U32 => "U32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
        }
    }
}

/// One tensor: which file, where its bytes are (absolute offsets in that file), what they are.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub file: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub start: u64,
    pub len: u64,
}

/// All tensors of a model, across its shards.
#[derive(Clone, Debug, Default)]
pub struct WeightIndex {
    pub files: Vec<String>,
    pub tensors: BTreeMap<String, TensorEntry>,
}

impl WeightIndex {
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn file_name(&self, t: &TensorEntry) -> &str {
        &self.files[t.file]
    }

    /// Add one safetensors file given its total length and its header JSON (the bytes after the
    /// 8-byte length prefix). Offsets are checked against the file length, so a truncated file or
    /// a header that lies is reported here, naming the file and tensor, before anything is read.
    pub fn add_file(&mut self, file_name: &str, file_len: u64, header: &[u8]) -> Result<()> {
        let err = |m: String| Error::weights(file_name, m);
        let metadata: safetensors::tensor::Metadata = serde_json::from_slice(header).map_err(|e| {
            err(format!("invalid safetensors header ({e}); the file is corrupt: delete it and download it again"))
        })?;
        let data_start = 8 + header.len() as u64;
        let data_len = metadata.data_len() as u64;
        if data_start.checked_add(data_len).is_none_or(|end| end > file_len) {
            return Err(err(format!(
                "file is truncated or its header lies: the header describes {} bytes of tensor data but the file holds {} \
                 (delete it and download it again)",
                data_len,
                file_len.saturating_sub(data_start)
            )));
        }
        let file = self.files.len();
        self.files.push(file_name.to_string());
        for (name, info) in metadata.tensors() {
            let dtype = DType::from_safetensors(info.dtype).ok_or_else(|| {
                err(format!("tensor {name}: dtype {:?} is not supported (U32, BF16, F16, F32 are)", info.dtype))
            })?;
            let (s, e) = info.data_offsets;
            let entry = TensorEntry {
                file,
                dtype,
                shape: info.shape.clone(),
                start: data_start + s as u64,
                len: (e - s) as u64,
            };
            if let Some(prev) = self.tensors.insert(name.clone(), entry) {
                return Err(err(format!("tensor {name} also appears in {}", self.files[prev.file])));
            }
        }
        Ok(())
    }
}

/// Reads tensor bytes. Natively a file; on the web a stream that must be read in file order,
/// which is why the loader always asks for tensors sorted by (file, offset).
pub trait ByteSource {
    fn read(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// `model.safetensors.index.json`
#[derive(Deserialize)]
pub struct ShardIndex {
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Parse an index; every shard it names must be a plain `*.safetensors` file name (no
    /// directories, no `..`), so an index can only point at files beside it.
    pub fn parse(text: &str) -> std::result::Result<ShardIndex, String> {
        let index: ShardIndex = serde_json::from_str(text).map_err(|e| format!("invalid index: {e}"))?;
        if let Some(bad) = index.weight_map.values().find(|name| !is_shard_name(name)) {
            return Err(format!(
                "names the shard {bad:?}; a shard must be a plain *.safetensors file name in the model's directory"
            ));
        }
        Ok(index)
    }

    /// The shard files in a stable order, deduplicated.
    pub fn files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.weight_map.values().cloned().collect();
        files.sort();
        files.dedup();
        files
    }
}

/// A plain file name ending in `.safetensors`: no path separators, not hidden, no control
/// characters.
pub fn is_shard_name(name: &str) -> bool {
    name.len() > ".safetensors".len()
        && name.len() <= 255
        && name.ends_with(".safetensors")
        && !name.starts_with('.')
        && !name.chars().any(|c| c == '/' || c == '\\' || c == ':' || c.is_control())
}

/// Split a safetensors file's first bytes into (header length); errors name the file.
pub fn header_len(file_name: &str, prefix: &[u8; 8], file_len: u64) -> Result<u64> {
    let n = u64::from_le_bytes(*prefix);
    if n > 100_000_000 {
        return Err(Error::weights(
            file_name,
            format!("not a safetensors file (its header length would be {n} bytes)"),
        ));
    }
    if 8 + n > file_len {
        return Err(Error::weights(
            file_name,
            format!(
                "file is truncated: its header alone needs {} bytes but the file has {file_len} (download it again)",
                8 + n
            ),
        ));
    }
    Ok(n)
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{open_dir, FileSource};

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};

    pub struct FileSource {
        dir: PathBuf,
        names: Vec<String>,
        open: Vec<Option<File>>,
    }

    /// Index the safetensors files of a model directory (sharded or not) without reading tensor data.
    pub fn open_dir(dir: &Path) -> Result<(WeightIndex, FileSource)> {
        let io = |p: &Path, e: std::io::Error| Error::Io { path: p.display().to_string(), source: e };
        let index_path = dir.join("model.safetensors.index.json");
        let files = if index_path.exists() {
            regular_file(&index_path)?;
            let text = std::fs::read_to_string(&index_path).map_err(|e| io(&index_path, e))?;
            ShardIndex::parse(&text).map_err(|m| Error::weights(index_path.display().to_string(), m))?.files()
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(Error::weights(
                dir.display().to_string(),
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };
        let mut index = WeightIndex::default();
        for name in &files {
            let path = dir.join(name);
            regular_file(&path)?;
            let mut f = File::open(&path).map_err(|e| io(&path, e))?;
            let len = f.metadata().map_err(|e| io(&path, e))?.len();
            let mut prefix = [0u8; 8];
            f.read_exact(&mut prefix)
                .map_err(|_| Error::weights(path.display().to_string(), "file is too short to be safetensors"))?;
            let n = header_len(&path.display().to_string(), &prefix, len)?;
            let mut header = vec![0u8; n as usize];
            f.read_exact(&mut header).map_err(|e| io(&path, e))?;
            index.add_file(&path.display().to_string(), len, &header)?;
        }
        let open = files.iter().map(|_| None).collect();
        Ok((index, FileSource { dir: dir.to_path_buf(), names: files, open }))
    }

    /// Only regular files (or links to them, as in the Hugging Face cache) are opened: opening a
    /// FIFO or a device could block forever.
    fn regular_file(path: &Path) -> Result<()> {
        let meta = std::fs::metadata(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
        if !meta.is_file() {
            return Err(Error::weights(path.display().to_string(), "is not a regular file"));
        }
        Ok(())
    }

    impl ByteSource for FileSource {
        fn read(&mut self, file: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
            let path = self.dir.join(&self.names[file]);
            let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), source: e };
            if self.open[file].is_none() {
                self.open[file] = Some(File::open(&path).map_err(io)?);
            }
            let f = self.open[file].as_mut().unwrap();
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            f.read_exact(buf).map_err(io)
        }
    }
}

/// bf16/f16/f32 bytes to f32 (small tensors only: norms).
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 | DType::U32 => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        DType::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    }
}
