//! What the decoder needs besides its weights to place tokens: the KV cache of cached inference
//! (keys and values per layer, each row's key positions) and the token layout of a forward (each
//! new token's position and whether it is padding). Knows tensors and positions; nothing of the
//! weights, attention or what the tokens mean.

use candle_core::{CpuStorage, Device, InplaceOp1, Layout, Tensor};

use crate::error::{ModelError, Result};

/// Keys and values of every layer for the tokens seen so far, with each row's key positions
/// (`None` for padding) so that masks and RoPE stay right across decode steps. It holds values, not
/// a gradient graph: new keys are copied into preallocated buffers.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub(super) layers: Vec<Option<LayerKv>>,
    pub(super) key_positions: Vec<Vec<Option<u32>>>,
}

/// One layer's keys and values in buffers `[B, nkv, capacity, hd]` filled up to `len`: a decode
/// step writes its keys in place instead of copying the whole history (`Tensor::cat`).
#[derive(Clone, Debug)]
pub(super) struct LayerKv {
    k: Tensor,
    v: Tensor,
    pub(super) len: usize,
    /// Shared by clones of the cache: buffers are written in place only when no clone sees them.
    owner: std::sync::Arc<()>,
}

impl LayerKv {
    /// Appends keys and values `[B, nkv, T, hd]` to `slot`; returns views of all it holds.
    pub(super) fn append(
        slot: &mut Option<LayerKv>,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let s = Self::reserve(slot, (b, h, t, d), k.dtype(), k.device())?;
        s.k.slice_set(&k.contiguous()?, 2, s.len)?;
        s.v.slice_set(&v.contiguous()?, 2, s.len)?;
        s.len += t;
        Ok((s.k.narrow(2, 0, s.len)?, s.v.narrow(2, 0, s.len)?))
    }

    /// `slot`'s buffers with room for `t` more slots of `[b, h, _, d]`, grown (the history
    /// copied) or made its own where a clone of the cache shares them.
    fn reserve<'a>(
        slot: &'a mut Option<LayerKv>,
        (b, h, t, d): (usize, usize, usize, usize),
        dtype: candle_core::DType,
        device: &Device,
    ) -> Result<&'a mut LayerKv> {
        let len = slot.as_ref().map_or(0, |s| s.len);
        let need = len + t;
        let fits = match slot.as_ref() {
            Some(s) => s.k.dim(2)? >= need && std::sync::Arc::strong_count(&s.owner) == 1,
            None => false,
        };
        if !fits {
            // Growth by half plus a margin keeps appends amortised O(1) per token.
            let cap = need + need / 2 + 64;
            let nk = Tensor::zeros((b, h, cap, d), dtype, device)?;
            let nv = Tensor::zeros((b, h, cap, d), dtype, device)?;
            if let Some(s) = slot.as_ref().filter(|s| s.len > 0) {
                nk.slice_set(&s.k.narrow(2, 0, s.len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&s.v.narrow(2, 0, s.len)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(LayerKv {
                k: nk,
                v: nv,
                len,
                owner: std::sync::Arc::new(()),
            });
        }
        slot.as_mut()
            .ok_or_else(|| ModelError::Unsupported("kv cache slot left empty".into()))
    }

    /// [`LayerKv::append`] for keys and values given as projection rows `[b, t, h * d]` (f32, on
    /// the CPU), written straight into the buffers; returns the whole buffers `[b, h, cap, d]`,
    /// of which the first `len` slots are filled.
    pub(super) fn append_raw(
        slot: &mut Option<LayerKv>,
        k: &[f32],
        v: &[f32],
        dims: (usize, usize, usize, usize),
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let s = Self::reserve(slot, dims, candle_core::DType::F32, device)?;
        for (buf, src) in [(&s.k, k), (&s.v, v)] {
            buf.inplace_op1(&WriteRows {
                src,
                dims,
                at: s.len,
            })?;
        }
        s.len += dims.2;
        Ok((s.k.clone(), s.v.clone()))
    }

    /// Whether the buffers are f32 on the CPU (what the lean path writes).
    pub(super) fn is_f32_cpu(&self) -> bool {
        self.k.device().is_cpu()
            && self.k.dtype() == candle_core::DType::F32
            && self.v.dtype() == candle_core::DType::F32
            && self.k.is_contiguous()
            && self.v.is_contiguous()
    }
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            key_positions: vec![],
        }
    }
    /// Number of key slots held per row (padding included).
    pub fn len(&self) -> usize {
        self.key_positions.first().map_or(0, |r| r.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn key_positions(&self) -> &[Vec<Option<u32>>] {
        &self.key_positions
    }
    /// Keeps only the rows in `rows` (in that order), e.g. to drop finished sequences.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        let dev = match self.layers.iter().flatten().next() {
            Some(l) => l.k.device().clone(),
            None => Device::Cpu,
        };
        let idx = Tensor::new(rows, &dev)?;
        for l in self.layers.iter_mut().flatten() {
            // New buffers: clones of the cache keep theirs.
            l.k = l.k.index_select(&idx, 0)?;
            l.v = l.v.index_select(&idx, 0)?;
            l.owner = std::sync::Arc::new(());
        }
        self.key_positions = rows
            .iter()
            .map(|&r| self.key_positions[r as usize].clone())
            .collect();
        Ok(())
    }
}

impl KvCache {
    /// Puts `other`'s rows after this cache's (a sequence joining a batch mid-decode), the shorter
    /// history left-padded with empty key slots (position `None`, never attended to), so every
    /// row keeps its own keys and positions. Either side may be empty.
    pub fn append_rows(&mut self, other: &KvCache) -> Result<()> {
        if other.key_positions.is_empty() {
            return Ok(());
        }
        if self.key_positions.is_empty() {
            *self = other.clone();
            return Ok(());
        }
        if self.layers.len() != other.layers.len() {
            return Err(ModelError::Unsupported(format!(
                "caches of {} and {} layers cannot share a batch",
                self.layers.len(),
                other.layers.len()
            )));
        }
        let (la, lb) = (self.len(), other.len());
        let len = la.max(lb);
        // Keys and values `[B, nkv, l, hd]` with `len - l` empty slots in front.
        let padded = |t: &Tensor, l: usize| -> Result<Tensor> {
            let t = t.narrow(2, 0, l)?;
            if l == len {
                return Ok(t.contiguous()?);
            }
            let (b, h, _, d) = t.dims4()?;
            let pad = Tensor::zeros((b, h, len - l, d), t.dtype(), t.device())?;
            Ok(Tensor::cat(&[&pad, &t], 2)?)
        };
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            match (a.as_mut(), b) {
                (Some(a), Some(b)) if a.len == la && b.len == lb => {
                    a.k = Tensor::cat(&[padded(&a.k, la)?, padded(&b.k, lb)?], 0)?;
                    a.v = Tensor::cat(&[padded(&a.v, la)?, padded(&b.v, lb)?], 0)?;
                    a.len = len;
                    a.owner = std::sync::Arc::new(());
                }
                (None, None) => {}
                _ => {
                    return Err(ModelError::Unsupported(
                        "caches at different stages cannot share a batch".into(),
                    ))
                }
            }
        }
        let pad_row = |row: &Vec<Option<u32>>| -> Vec<Option<u32>> {
            let mut r = vec![None; len - row.len()];
            r.extend_from_slice(row);
            r
        };
        let mut rows: Vec<Vec<Option<u32>>> = self.key_positions.iter().map(pad_row).collect();
        rows.extend(other.key_positions.iter().map(pad_row));
        self.key_positions = rows;
        Ok(())
    }
}

/// Where each new token sits: its position (for RoPE and causality) and whether it is real or
/// padding (padding keys are never attended to).
#[derive(Clone, Debug)]
pub struct TokenLayout {
    pub positions: Vec<Vec<u32>>,
    pub valid: Vec<Vec<bool>>,
}

impl TokenLayout {
    /// `b` rows of `t` real tokens at positions `start..start + t`.
    pub fn contiguous(b: usize, t: usize, start: u32) -> Self {
        TokenLayout {
            positions: vec![(start..start + t as u32).collect(); b],
            valid: vec![vec![true; t]; b],
        }
    }
    /// Rows of the given lengths, right-padded to `t` (training batches).
    pub fn right_padded(lengths: &[usize], t: usize) -> Self {
        TokenLayout {
            positions: lengths.iter().map(|_| (0..t as u32).collect()).collect(),
            valid: lengths
                .iter()
                .map(|&l| (0..t).map(|i| i < l).collect())
                .collect(),
        }
    }
    /// Rows of the given lengths, left-padded to `t` (generation prompts): positions start at 0 on
    /// each row's first real token.
    pub fn left_padded(lengths: &[usize], t: usize) -> Self {
        TokenLayout {
            positions: lengths
                .iter()
                .map(|&l| (0..t).map(|i| (i + l).saturating_sub(t) as u32).collect())
                .collect(),
            valid: lengths
                .iter()
                .map(|&l| (0..t).map(|i| i + l >= t).collect())
                .collect(),
        }
    }
}

/// Writes new keys or values `[b, t, heads * d]` (rows of a projection) at slots `at..at + t` of
/// a cache buffer `[b, heads, cap, d]`.
struct WriteRows<'a> {
    src: &'a [f32],
    dims: (usize, usize, usize, usize),
    at: usize,
}

impl InplaceOp1 for WriteRows<'_> {
    fn name(&self) -> &'static str {
        "tempering-kv-write"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (b, heads, t, d) = self.dims;
        let (_, _, cap, _) = layout.shape().dims4()?;
        let CpuStorage::F32(buf) = storage else {
            candle_core::bail!("kv cache: an f32 buffer was expected");
        };
        let Some((o0, o1)) = layout.contiguous_offsets() else {
            candle_core::bail!("kv cache: the buffer must be contiguous");
        };
        let buf = &mut buf[o0..o1];
        if self.at + t > cap
            || buf.len() != b * heads * cap * d
            || self.src.len() != b * t * heads * d
        {
            candle_core::bail!("kv cache: the new rows do not fit the buffer");
        }
        for bi in 0..b {
            for ti in 0..t {
                let row = &self.src[(bi * t + ti) * heads * d..][..heads * d];
                for (h, v) in row.chunks_exact(d).enumerate() {
                    let at = ((bi * heads + h) * cap + self.at + ti) * d;
                    buf[at..at + d].copy_from_slice(v);
                }
            }
        }
        Ok(())
    }
}

/// Which key slots each new token may attend to: a real key (not padding) at or before the
/// query's own slot and position, and within the sliding window where the model has one. The one
/// rule of both the attention mask and the lean decode path.
pub(super) struct Visibility<'a> {
    pub(super) layout: &'a TokenLayout,
    /// Each row's key positions: the cache's history, then the new tokens' (`None` for padding).
    pub(super) keys: &'a [Vec<Option<u32>>],
    /// Key slots cached before this step.
    pub(super) past: usize,
    pub(super) window: Option<u32>,
}

impl Visibility<'_> {
    /// Whether new token `ti` of row `bi` sees key slot `si`.
    #[inline]
    pub(super) fn at(&self, bi: usize, ti: usize, si: usize) -> bool {
        let qp = self.layout.positions[bi][ti];
        match self.keys[bi][si] {
            None => false,
            Some(kp) => si <= self.past + ti && kp <= qp && self.window.is_none_or(|w| qp - kp < w),
        }
    }
}
