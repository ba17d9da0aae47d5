//! Named weight tensors read from HF safetensors (single file or shards) or GGUF (dequantised, with
//! llama.cpp's tensor names and q/k row permutation mapped back to HF's), and written back as an HF
//! `model.safetensors`. Knows the on-disk formats and the HF tensor names, not the decoder's maths.
//! Also home to the workspace's one atomic file write, [`write_atomic`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};

use crate::config::{Architecture, ModelConfig};
use crate::error::{ModelError, Result};

/// How one tensor was stored on disk (for `temper inspect`).
#[derive(Clone, Debug)]
pub struct StoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `f32`, `bf16`, `q4_1`, ...
    pub storage: String,
}

/// A set of weights under HF names, converted to one dtype on one device.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    stored: Vec<StoredTensor>,
    /// The file the weights came from, for error messages.
    pub source: PathBuf,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>, source: PathBuf) -> Self {
        let mut stored: Vec<StoredTensor> = tensors
            .iter()
            .map(|(n, t)| StoredTensor {
                name: n.clone(),
                shape: t.dims().to_vec(),
                storage: dtype_name(t.dtype()).to_string(),
            })
            .collect();
        stored.sort_by(|a, b| a.name.cmp(&b.name));
        Weights {
            tensors,
            stored,
            source,
        }
    }

    /// The tensor `name`, checked to have `shape`; errors name the file and the tensor.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::tensor(&self.source, name, "missing from the weights"))?;
        if t.dims() != shape {
            return Err(ModelError::tensor(
                &self.source,
                name,
                format!("has shape {:?}, the config implies {:?}", t.dims(), shape),
            ));
        }
        Ok(t.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn stored(&self) -> &[StoredTensor] {
        &self.stored
    }

    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// Reads an HF directory's `model.safetensors`, or its shards through
    /// `model.safetensors.index.json`, converting every tensor to `dtype` on `device`.
    pub fn from_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (files, source) = hf_weight_files(dir)?;
        let mut tensors = HashMap::new();
        let mut stored = Vec::new();
        for file in &files {
            read_safetensors_into(file, dtype, device, &mut tensors, &mut stored)?;
        }
        stored.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Weights {
            tensors,
            stored,
            source,
        })
    }

    /// Reads and dequantises every tensor of a GGUF file, renaming to HF names.
    pub fn from_gguf(
        content: &gguf_file::Content,
        path: &Path,
        cfg: &ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut tensors = HashMap::new();
        let mut stored = Vec::new();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for gguf_name in names {
            let info = &content.tensor_infos[gguf_name];
            let Some(hf_name) = gguf_to_hf_name(gguf_name) else {
                // llama3's rope_freqs and similar helpers carry no weights of the decoder.
                tracing::debug!("{}: skipping GGUF tensor {gguf_name}", path.display());
                continue;
            };
            check_supported_quant(info.ggml_dtype, path, gguf_name)?;
            let q = content
                .tensor(&mut file, gguf_name, &Device::Cpu)
                .map_err(|e| ModelError::tensor(path, gguf_name, e.to_string()))?;
            let mut t = q
                .dequantize(&Device::Cpu)
                .map_err(|e| ModelError::tensor(path, gguf_name, e.to_string()))?;
            if cfg.architecture == Architecture::Llama {
                if hf_name.ends_with("q_proj.weight") {
                    t = unpermute_qk(&t, cfg.num_heads)?;
                } else if hf_name.ends_with("k_proj.weight") {
                    t = unpermute_qk(&t, cfg.num_kv_heads)?;
                } else if hf_name.ends_with("q_proj.bias") {
                    t = unpermute_qk(&t.unsqueeze(1)?, cfg.num_heads)?.squeeze(1)?;
                } else if hf_name.ends_with("k_proj.bias") {
                    t = unpermute_qk(&t.unsqueeze(1)?, cfg.num_kv_heads)?.squeeze(1)?;
                }
            }
            stored.push(StoredTensor {
                name: hf_name.clone(),
                shape: t.dims().to_vec(),
                storage: format!("{:?}", info.ggml_dtype).to_lowercase(),
            });
            tensors.insert(hf_name, t.to_dtype(dtype)?.to_device(device)?);
        }
        stored.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Weights {
            tensors,
            stored,
            source: path.to_path_buf(),
        })
    }

    /// Writes the tensors as one safetensors file (temporary name, then rename), in `dtype`.
    pub fn save_safetensors(
        tensors: &BTreeMap<String, Tensor>,
        path: &Path,
        dtype: DType,
    ) -> Result<()> {
        let converted: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| {
                Ok((
                    n.clone(),
                    t.to_dtype(dtype)?.to_device(&Device::Cpu)?.contiguous()?,
                ))
            })
            .collect::<Result<_>>()?;
        let tmp = tmp_path(path);
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        safetensors::serialize_to_file(converted, Some(metadata), &tmp)
            .map_err(|e| ModelError::format(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    }
}

/// `path` with `.tmp` appended: where a file is written before it is renamed into place.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never half
/// of one: into a temporary file beside it (`.NAME.tmpPID`, so two processes do not share it),
/// synced to disk, then renamed over `path`. The temporary file is removed when a step fails. The
/// one atomic write of the workspace (`tempering_model::write_atomic`; `tempering_eval` re-exports
/// it with its own error type).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        DType::U32 => "u32",
        DType::U8 => "u8",
        DType::I64 => "i64",
        _ => "other",
    }
}

/// The error for a safetensors file the `safetensors` crate refused with `e`, naming the culprit
/// where its message does not: the header length against the file's, or the first tensor whose
/// shape and dtype do not fill its `data_offsets` or whose data lies past the end.
pub(crate) fn invalid_safetensors(
    file: &Path,
    bytes: &[u8],
    e: safetensors::SafeTensorError,
) -> ModelError {
    let why = explain_safetensors(bytes).unwrap_or_else(|| e.to_string());
    ModelError::format(file, format!("not a valid safetensors file: {why}"))
}

fn explain_safetensors(bytes: &[u8]) -> Option<String> {
    let len = bytes.len() as u64;
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    if n > len - 8 {
        return Some(format!(
            "the header claims {n} bytes, the file has {len} in all"
        ));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n as usize]).ok()?;
    let data_len = len - 8 - n;
    let mut ends = Vec::new();
    for (name, t) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype = t.get("dtype")?.as_str()?;
        let bits: u64 = match dtype {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
            "I16" | "U16" | "F16" | "BF16" => 16,
            "I32" | "U32" | "F32" => 32,
            "I64" | "U64" | "F64" => 64,
            _ => return None,
        };
        let shape: Option<Vec<u64>> = t
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect();
        let shape = shape?;
        let offsets: Option<Vec<u64>> = t
            .get("data_offsets")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect();
        let [start, end] = offsets?[..] else {
            return None;
        };
        let needed = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|e| e.checked_mul(bits / 8));
        if end < start || end > data_len {
            return Some(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] lie outside the {data_len} bytes \
                 of data"
            ));
        }
        if needed != Some(end - start) {
            return Some(format!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {} bytes, its data_offsets \
                 [{start}, {end}] hold {}",
                needed.map_or("more than 2^64".to_string(), |b| b.to_string()),
                end - start
            ));
        }
        ends.push((start, end));
    }
    ends.sort();
    let covered = ends
        .iter()
        .try_fold(0u64, |at, &(s, e)| (s == at).then_some(e));
    match covered {
        Some(at) if at != data_len => Some(format!(
            "the tensors' data ends at byte {at} of the {data_len} bytes of data"
        )),
        None => Some("the tensors' data_offsets overlap or leave gaps".into()),
        _ => None,
    }
}

/// The tensors of an HF directory as stored (names, shapes, dtypes), from the headers only.
pub fn list_hf_dir(dir: &Path) -> Result<Vec<StoredTensor>> {
    let mut out = Vec::new();
    for file in hf_weight_files(dir)?.0 {
        let f = File::open(&file).map_err(|e| ModelError::io(&file, e))?;
        // SAFETY: read-only map dropped before return.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(&file, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| invalid_safetensors(&file, &mmap, e))?;
        for (name, info) in meta.tensors() {
            out.push(StoredTensor {
                name,
                shape: info.shape.clone(),
                storage: format!("{:?}", info.dtype).to_lowercase(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The tensors of a GGUF file as stored, under HF names where they map to one.
pub fn list_gguf(content: &gguf_file::Content) -> Vec<StoredTensor> {
    let mut out: Vec<StoredTensor> = content
        .tensor_infos
        .iter()
        .map(|(n, info)| StoredTensor {
            name: gguf_to_hf_name(n).unwrap_or_else(|| n.clone()),
            shape: info.shape.dims().to_vec(),
            storage: format!("{:?}", info.ggml_dtype).to_lowercase(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The safetensors files of an HF directory, and the path errors should name.
fn hf_weight_files(dir: &Path) -> Result<(Vec<PathBuf>, PathBuf)> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return Ok((vec![single.clone()], single));
    }
    if !index.is_file() {
        return Err(ModelError::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in this directory",
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(&index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::format(&index, "expected an object `weight_map`"))?;
    let mut shards: Vec<String> = map
        .values()
        .map(|f| {
            f.as_str()
                .map(str::to_string)
                .ok_or_else(|| ModelError::format(&index, "`weight_map` values must be file names"))
        })
        .collect::<Result<_>>()?;
    shards.sort();
    shards.dedup();
    let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(ModelError::format(
            &index,
            format!("names shard {} which does not exist", missing.display()),
        ));
    }
    Ok((files, index))
}

fn read_safetensors_into(
    file: &Path,
    dtype: DType,
    device: &Device,
    out: &mut HashMap<String, Tensor>,
    stored: &mut Vec<StoredTensor>,
) -> Result<()> {
    let f = File::open(file).map_err(|e| ModelError::io(file, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file truncated by
    // another process while we read it is outside what we can defend against.
    let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(file, e))?;
    let st = safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| invalid_safetensors(file, &mmap, e))?;
    for (name, view) in st.tensors() {
        let storage = match view.dtype() {
            safetensors::Dtype::F32 => "f32",
            safetensors::Dtype::F16 => "f16",
            safetensors::Dtype::BF16 => "bf16",
            safetensors::Dtype::F64 => "f64",
            other => {
                return Err(ModelError::tensor(
                    file,
                    &name,
                    format!("unsupported dtype {other:?} (expected f32, f16 or bf16)"),
                ))
            }
        };
        let t = view
            .load(&Device::Cpu)
            .map_err(|e| ModelError::tensor(file, &name, e.to_string()))?;
        stored.push(StoredTensor {
            name: name.clone(),
            shape: t.dims().to_vec(),
            storage: storage.to_string(),
        });
        out.insert(name, t.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(())
}

fn check_supported_quant(d: GgmlDType, path: &Path, name: &str) -> Result<()> {
    use GgmlDType::*;
    match d {
        F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4K | Q5K | Q6K | Q8K | Q2K | Q3K => {
            Ok(())
        }
        #[allow(unreachable_patterns)]
        other => Err(ModelError::tensor(
            path,
            name,
            format!("unsupported GGUF quantisation {other:?}"),
        )),
    }
}

/// llama.cpp's tensor names to HF's (`None` for tensors the decoder does not use).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = tail.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's interleaving of the q/k rows (done by its converter for its RoPE layout).
fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / n_head / 2;
    Ok(w.reshape((n_head, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf() {
        assert_eq!(
            gguf_to_hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.0.attn_k.bias").as_deref(),
            Some("model.layers.0.self_attn.k_proj.bias")
        );
        assert_eq!(
            gguf_to_hf_name("output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() -> Result<()> {
        // llama.cpp: w.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(out, in)
        let (h, d, inp) = (2usize, 4usize, 3usize);
        let w = Tensor::arange(0f32, (h * d * inp) as f32, &Device::Cpu)?.reshape((h * d, inp))?;
        let permuted = w
            .reshape((h, 2, d / 2, inp))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((h * d, inp))?;
        assert_ne!(permuted.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        let back = unpermute_qk(&permuted, h)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        Ok(())
    }
}
