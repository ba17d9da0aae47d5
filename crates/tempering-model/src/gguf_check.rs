//! Checks a GGUF file against its own length before candle reads it, so that a crafted file gives
//! an error and never a panic or an allocation sized by an unchecked number: every count, string
//! and array length of the header must fit in the bytes left, `general.alignment` must be a
//! non-zero power of two, and every tensor's element count must not overflow and its data must lie
//! inside the file. Walks the header without keeping it; knows the format, not the model.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::error::{ModelError, Result};

const MAX_DEPTH: usize = 8;
const MAX_DIMS: u32 = 4;

struct Walker {
    r: BufReader<File>,
    pos: u64,
    len: u64,
    /// v1 files use 32-bit lengths.
    wide: bool,
}

type Fail = String;

impl Walker {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], Fail> {
        if (N as u64) > self.left() {
            return Err(format!("truncated at byte {} (reading {what})", self.pos));
        }
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("byte {}: {e}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, Fail> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, Fail> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    fn length(&mut self, what: &str) -> std::result::Result<u64, Fail> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn skip(&mut self, n: u64, what: &str) -> std::result::Result<(), Fail> {
        if n > self.left() {
            return Err(format!(
                "byte {}: {what} needs {n} bytes, only {} left in the file",
                self.pos,
                self.left()
            ));
        }
        let step = i64::try_from(n).map_err(|_| format!("byte {}: {what} too long", self.pos))?;
        self.r
            .seek_relative(step)
            .map_err(|e| format!("byte {}: {e}", self.pos))?;
        self.pos += n;
        Ok(())
    }

    /// A string's bytes, read only when `keep` (keys); skipped otherwise.
    fn string(&mut self, what: &str, keep: bool) -> std::result::Result<Vec<u8>, Fail> {
        let n = self.length(what)?;
        if n > self.left() {
            return Err(format!(
                "byte {}: {what} claims {n} bytes, only {} left in the file",
                self.pos,
                self.left()
            ));
        }
        if !keep {
            self.skip(n, what)?;
            return Ok(Vec::new());
        }
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|e| format!("byte {}: {e}", self.pos))?;
        self.pos += n;
        Ok(v)
    }

    /// The fixed size of a scalar value type, `None` for strings and arrays.
    fn scalar_size(t: u32) -> std::result::Result<Option<u64>, Fail> {
        Ok(match t {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            8 | 9 => None,
            _ => return Err(format!("unknown metadata value type {t}")),
        })
    }

    /// Skips one value of type `t`; returns its integer value for the small integer types (for
    /// `general.alignment`).
    fn value(&mut self, t: u32, key: &str, depth: usize) -> std::result::Result<Option<i64>, Fail> {
        if depth > MAX_DEPTH {
            return Err(format!("`{key}`: arrays nested deeper than {MAX_DEPTH}"));
        }
        if let Some(size) = Self::scalar_size(t)? {
            return Ok(match t {
                0 => Some(i64::from(self.bytes::<1>(key)?[0])),
                1 => Some(i64::from(self.bytes::<1>(key)?[0] as i8)),
                2 => Some(i64::from(u16::from_le_bytes(self.bytes::<2>(key)?))),
                3 => Some(i64::from(i16::from_le_bytes(self.bytes::<2>(key)?))),
                4 => Some(i64::from(self.u32(key)?)),
                5 => Some(i64::from(self.u32(key)? as i32)),
                _ => {
                    self.skip(size, key)?;
                    None
                }
            });
        }
        if t == 8 {
            self.string(key, false)?;
            return Ok(None);
        }
        let elem = self.u32(key)?;
        let count = self.length(key)?;
        match Self::scalar_size(elem)? {
            Some(size) => {
                let total = count
                    .checked_mul(size)
                    .ok_or_else(|| format!("`{key}`: an array of {count} elements overflows"))?;
                self.skip(total, key)?;
            }
            None => {
                // Each string or array element takes at least its length prefix.
                let min = if self.wide { 8 } else { 4 };
                if count.saturating_mul(min) > self.left() {
                    return Err(format!(
                        "`{key}`: an array of {count} elements cannot fit in the {} bytes left",
                        self.left()
                    ));
                }
                for _ in 0..count {
                    self.value(elem, key, depth + 1)?;
                }
            }
        }
        Ok(None)
    }
}

fn walk(path: &Path) -> std::result::Result<(), Fail> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut w = Walker {
        r: BufReader::new(file),
        pos: 0,
        len,
        wide: true,
    };
    if &w.bytes::<4>("the magic")? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = w.u32("the version")?;
    w.wide = match version {
        1 => false,
        2 | 3 => true,
        v => return Err(format!("unsupported GGUF version {v}")),
    };
    let tensors = w.length("the tensor count")?;
    let kvs = w.length("the metadata count")?;
    let min = if w.wide { 8 } else { 4 };
    let needed = kvs
        .saturating_mul(min + 4 + 1)
        .saturating_add(tensors.saturating_mul(min + 4 + 4 + 8));
    if needed > w.left() {
        return Err(format!(
            "the header claims {tensors} tensors and {kvs} metadata entries, which cannot fit in \
             the {} bytes left",
            w.left()
        ));
    }
    for _ in 0..kvs {
        let key = w.string("a metadata key", true)?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let t = w.u32(&key)?;
        let v = w.value(t, &key, 0)?;
        if key == "general.alignment" && matches!(t, 0..=5) {
            match v {
                Some(a) if a > 0 && (a as u64).is_power_of_two() => {}
                Some(a) => {
                    return Err(format!(
                        "`general.alignment` is {a}, expected a power of two"
                    ))
                }
                None => {}
            }
        }
    }
    for _ in 0..tensors {
        w.string("a tensor name", false)?;
        let dims = w.u32("a tensor's dimension count")?;
        if dims > MAX_DIMS {
            return Err(format!(
                "a tensor has {dims} dimensions, at most {MAX_DIMS} are allowed"
            ));
        }
        w.skip(u64::from(dims) * min, "a tensor's dimensions")?;
        w.skip(4 + 8, "a tensor's type and offset")?;
    }
    Ok(())
}

/// Checks the header of the GGUF file at `path` (see the module's doc).
pub(crate) fn check_header(path: &Path) -> Result<()> {
    walk(path).map_err(|msg| ModelError::format(path, format!("not a readable GGUF file: {msg}")))
}

/// Checks that every tensor of `content` has an element count that fits in memory arithmetic and
/// data inside the file (`file_len` bytes), so reading any of them allocates only what is there.
pub(crate) fn check_tensors(
    content: &gguf_file::Content,
    path: &Path,
    file_len: u64,
) -> Result<()> {
    for (name, info) in &content.tensor_infos {
        let bad = |msg: String| Err(ModelError::tensor(path, name, msg));
        let Some(elems) = info
            .shape
            .dims()
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        else {
            return bad(format!("shape {:?} overflows", info.shape.dims()));
        };
        // candle views a tensor's bytes as a slice of its blocks; an empty buffer's pointer is not
        // aligned for them (an abort with debug assertions, undefined behaviour without).
        if elems == 0 {
            return bad(format!(
                "shape {:?} has no elements (a dimension of 0)",
                info.shape.dims()
            ));
        }
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return bad(format!(
                "{elems} elements are not a whole number of {:?} blocks of {block}",
                info.ggml_dtype
            ));
        }
        let bytes = (elems / block).checked_mul(info.ggml_dtype.type_size());
        let end = bytes.and_then(|b| {
            content
                .tensor_data_offset
                .checked_add(info.offset)?
                .checked_add(b as u64)
        });
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return bad(format!(
                    "its data (offset {}, shape {:?}, {:?}) lies beyond the end of the file \
                     ({file_len} bytes)",
                    info.offset,
                    info.shape.dims(),
                    info.ggml_dtype
                ))
            }
        }
    }
    Ok(())
}
