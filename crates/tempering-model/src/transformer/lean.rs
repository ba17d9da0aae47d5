//! Cached inference of a few rows (decode steps, short prefills) on the CPU in plain slices: the
//! same decoder as [`Transformer::forward_hidden`], without candle's per-op dispatch. A SmolLM2
//! decode step runs about 25 candle ops per layer, each allocating its output and waking rayon's
//! workers for the products between them; at batch 1 that fixed cost was about as large as
//! streaming the weights. Here a layer is the few-row products ([`ops::few_rows`], the kernel the
//! linear op uses at these sizes), each of which splits over the weight rows on every core, and
//! row loops for the norms, RoPE, attention over the KV cache and SwiGLU in between, with the
//! fused ops' formulas and reductions (so results agree with the candle path to float rounding).
//! Keys and values go straight into the cache's buffers. Values only: no autograd graph, so it
//! serves generation, never a forward that trains. Knows nothing of sampling or file formats.

use candle_core::{DType, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::cache::{LayerKv, Visibility};
use super::{Attention, KvCache, Linear, TokenLayout, Transformer};
use crate::error::{ModelError, Result};
use crate::ops::few_rows;
use crate::ops::kernels::{dot, max};
use crate::ops::simd::wide;
use crate::ops::{rms_norm_row, silu_mul_one, softmax_row};

/// Whether the lean path may run at all: the few-row kernel is there (AVX-512) and
/// `TEMPER_LEAN_DECODE` is not `off` (the switch for A/B measurements against the candle path).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        few_rows::available() && !std::env::var("TEMPER_LEAN_DECODE").is_ok_and(|v| v == "off")
    })
}

/// Below this much attention work (query rows x key slots x head width) a step's attention stays
/// on the calling thread.
const PAR_ATTENTION_WORK: usize = 1 << 16;

/// `t`'s storage as a contiguous CPU slice of `T`, handed to `f`; `None` when it is elsewhere,
/// another dtype or strided.
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Option<R> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(c) = &*s else {
        return None;
    };
    let all = c.as_slice::<T>().ok()?;
    let (a, b) = l.contiguous_offsets()?;
    Some(f(&all[a..b]))
}

fn contiguous_cpu(t: &Tensor, dtype: DType) -> bool {
    t.device().is_cpu() && t.dtype() == dtype && t.is_contiguous()
}

/// Whether the lean path computes `lin` exactly as [`Linear::forward`] would (weights in one of
/// the kernel's element types, an f32 bias, an f32 adapter without active dropout).
fn linear_ok(lin: &Linear) -> bool {
    let weight = match &lin.q8_scales {
        Some(s) => contiguous_cpu(&lin.weight, DType::U8) && contiguous_cpu(s, DType::F32),
        None => contiguous_cpu(&lin.weight, DType::F32) || contiguous_cpu(&lin.weight, DType::BF16),
    };
    let bias = lin
        .bias
        .as_ref()
        .is_none_or(|b| contiguous_cpu(b, DType::F32));
    let lora = lin.lora.as_ref().is_none_or(|l| {
        contiguous_cpu(&l.a, DType::F32)
            && contiguous_cpu(&l.b, DType::F32)
            && (l.dropout_rng.is_none() || l.dropout <= 0.0)
    });
    weight && bias && lora
}

/// `x [m, k] W^T (+ b) (+ LoRA)` for `lin`, in the kernel the linear op uses for few rows.
fn project(lin: &Linear, x: &[f32], m: usize) -> Result<Vec<f32>> {
    let (n, k) = lin.weight.dims2()?;
    let y = match &lin.q8_scales {
        Some(scales) => with_slice::<u8, _>(&lin.weight, |q| {
            with_slice::<f32, _>(scales, |s| {
                few_rows::matmul_xwt_q8(x, few_rows::as_i8(q), s, m, n, k)
            })
        })
        .flatten()
        .flatten(),
        None if lin.weight.dtype() == DType::BF16 => {
            with_slice::<half::bf16, _>(&lin.weight, |w| {
                use half::slice::HalfFloatSliceExt;
                few_rows::matmul_xwt_bf16(x, w.reinterpret_cast(), m, n, k)
            })
            .flatten()
        }
        None => {
            with_slice::<f32, _>(&lin.weight, |w| few_rows::matmul_xwt(x, w, m, n, k)).flatten()
        }
    };
    let mut y = y.ok_or_else(|| lean_error("a projection's weight"))?;
    if let Some(b) = &lin.bias {
        with_slice::<f32, _>(b, |b| {
            for row in y.chunks_mut(n) {
                for (o, &bv) in row.iter_mut().zip(b) {
                    *o += bv;
                }
            }
        })
        .ok_or_else(|| lean_error("a bias"))?;
    }
    if let Some(l) = &lin.lora {
        // PEFT's order, as `LoraLinear::forward`: (x A^T) B^T, then the scale.
        let r = l.rank();
        let scale = l.scale() as f32;
        let h = with_slice::<f32, _>(&l.a, |a| small_xwt(x, a, m, r, k))
            .ok_or_else(|| lean_error("a LoRA factor"))?;
        with_slice::<f32, _>(&l.b, |b| {
            let d = small_xwt(&h, b, m, n, r);
            for (o, dv) in y.iter_mut().zip(d) {
                *o += dv * scale;
            }
        })
        .ok_or_else(|| lean_error("a LoRA factor"))?;
    }
    Ok(y)
}

/// `x [m, k] @ w [n, k]^T` by plain dot products: LoRA's rank-wide factors.
fn small_xwt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (o, wr) in yr.iter_mut().zip(w.chunks_exact(k)) {
            *o = dot(xr, wr);
        }
    }
    y
}

fn lean_error(what: &str) -> ModelError {
    ModelError::Unsupported(format!(
        "lean decode: {what} is not a contiguous CPU tensor of the expected dtype"
    ))
}

/// RMSNorm of each `w.len()`-wide row of `x`, with the fused op's row.
fn rms_norm_rows(x: &[f32], w: &Tensor, eps: f64) -> Result<Vec<f32>> {
    with_slice::<f32, _>(w, |w| {
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        wide(|| {
            for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                rms_norm_row(xr, w, eps as f32, yr);
            }
        });
        y
    })
    .ok_or_else(|| lean_error("a norm weight"))
}

/// Rotates each head of each row in place: `x [rows, heads * d]`, `cos`/`sin` `[rows, d / 2]`.
fn rope_rows(x: &mut [f32], heads: usize, d: usize, cos: &[f32], sin: &[f32]) {
    let half = d / 2;
    wide(|| rope_rows_in(x, heads, d, half, cos, sin));
}

#[inline(always)]
fn rope_rows_in(x: &mut [f32], heads: usize, d: usize, half: usize, cos: &[f32], sin: &[f32]) {
    for (r, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let (c, s) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        for head in row.chunks_exact_mut(d) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}

impl Transformer {
    /// Whether [`Transformer::lean_forward`] can run this step: an f32 model on the CPU whose
    /// weights the few-row kernel reads, and at most [`few_rows::MAX_ROWS`] new tokens.
    fn lean_eligible(&self, rows: usize, cache: &KvCache) -> bool {
        let vector = |t: &Tensor| contiguous_cpu(t, DType::F32);
        self.lean_decode
            && enabled()
            && rows <= few_rows::MAX_ROWS
            && self.device.is_cpu()
            && self.dtype == DType::F32
            && (contiguous_cpu(&self.embed_tokens, DType::F32)
                || contiguous_cpu(&self.embed_tokens, DType::BF16))
            && vector(&self.norm)
            && cache.layers.len() == self.layers.len()
            && cache.layers.iter().flatten().all(LayerKv::is_f32_cpu)
            && self.layers.iter().all(|l| {
                let a = &l.self_attn;
                vector(&l.input_layernorm)
                    && vector(&l.post_attention_layernorm)
                    && [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
                        .into_iter()
                        .chain([&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj])
                        .all(linear_ok)
            })
    }

    /// The final (normed) hidden states `[B, T, H]` of `input_ids` through the lean path, the
    /// cache updated; `None` (nothing touched) where the step is not eligible. `keys` are the
    /// key positions after this step (the cache's history, then the new tokens), `past` the
    /// slots already cached.
    pub(super) fn lean_forward(
        &self,
        input_ids: &Tensor,
        layout: &TokenLayout,
        cache: &mut KvCache,
        keys: &[Vec<Option<u32>>],
        past: usize,
    ) -> Result<Option<Tensor>> {
        let (b, t) = input_ids.dims2()?;
        if !self.lean_eligible(b * t, cache) {
            return Ok(None);
        }
        let c = &self.config;
        let h = c.hidden_size;
        let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
        let mut x = vec![0f32; b * t * h];
        let vocab = c.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(ModelError::Unsupported(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let gathered = if self.embed_tokens.dtype() == DType::BF16 {
            with_slice::<half::bf16, _>(&self.embed_tokens, |e| {
                for (row, &id) in x.chunks_exact_mut(h).zip(&ids) {
                    for (o, v) in row.iter_mut().zip(&e[id as usize * h..][..h]) {
                        *o = v.to_f32();
                    }
                }
            })
        } else {
            with_slice::<f32, _>(&self.embed_tokens, |e| {
                for (row, &id) in x.chunks_exact_mut(h).zip(&ids) {
                    row.copy_from_slice(&e[id as usize * h..][..h]);
                }
            })
        };
        gathered.ok_or_else(|| lean_error("the embeddings"))?;
        let (cos, sin) = self.rope_angles(layout);
        let visible = self.visibility(layout, keys, past);
        let eps = c.rms_norm_eps;
        let m = b * t;
        for (i, layer) in self.layers.iter().enumerate() {
            let hs = rms_norm_rows(&x, &layer.input_layernorm, eps)?;
            let slot = &mut cache.layers[i];
            let attn =
                self.lean_attention(&layer.self_attn, &hs, (b, t), (&cos, &sin), &visible, slot)?;
            wide(|| {
                for (o, a) in x.iter_mut().zip(&attn) {
                    *o += a;
                }
            });
            let hs = rms_norm_rows(&x, &layer.post_attention_layernorm, eps)?;
            let mut gate = project(&layer.mlp.gate_proj, &hs, m)?;
            let up = project(&layer.mlp.up_proj, &hs, m)?;
            wide(|| {
                for (g, &u) in gate.iter_mut().zip(&up) {
                    *g = silu_mul_one(*g, u);
                }
            });
            let down = project(&layer.mlp.down_proj, &gate, m)?;
            wide(|| {
                for (o, d) in x.iter_mut().zip(&down) {
                    *o += d;
                }
            });
        }
        let out = rms_norm_rows(&x, &self.norm, eps)?;
        Ok(Some(Tensor::from_vec(out, (b, t, h), &self.device)?))
    }

    /// One layer's attention for `x` `[B * T, H]`: projections, RoPE, the new keys and values
    /// written to `slot`, scores over every cached slot a query may see, softmax, `@ V`, output
    /// projection.
    #[allow(clippy::too_many_arguments)]
    fn lean_attention(
        &self,
        a: &Attention,
        x: &[f32],
        (b, t): (usize, usize),
        (cos, sin): (&[f32], &[f32]),
        visible: &Visibility<'_>,
        slot: &mut Option<LayerKv>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let m = b * t;
        let mut q = project(&a.q_proj, x, m)?;
        let mut k = project(&a.k_proj, x, m)?;
        let v = project(&a.v_proj, x, m)?;
        rope_rows(&mut q, nh, hd, cos, sin);
        rope_rows(&mut k, nkv, hd, cos, sin);
        let (kb, vb) = LayerKv::append_raw(slot, &k, &v, (b, nkv, t, hd), &self.device)?;
        let s = visible.past + t;
        let cap = kb.dim(2)?;
        let mut out = vec![0f32; m * nh * hd];
        let dims = RowDims {
            t,
            nh,
            nkv,
            hd,
            cap,
            s,
        };
        let done = with_slice::<f32, _>(&kb, |kc| {
            with_slice::<f32, _>(&vb, |vc| attend_rows(&mut out, &q, kc, vc, visible, dims))
        })
        .flatten();
        done.ok_or_else(|| lean_error("the KV cache"))?;
        project(&a.o_proj, &out, m)
    }
}

/// The sizes [`attend_rows`] works with: new tokens per sequence, query and key/value heads, head
/// width, the cache's slots per sequence and the slots in use.
#[derive(Clone, Copy)]
struct RowDims {
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    cap: usize,
    s: usize,
}

crate::ops::simd::wide_fn! {
    /// Attention of every new query row (one token of one sequence, all heads) over the cached
    /// slots it may see: scores, softmax, `@ V` into `out` `[rows, heads * hd]`; rows in parallel
    /// when there is enough work.
    fn attend_rows(
        out: &mut [f32],
        q: &[f32],
        kc: &[f32],
        vc: &[f32],
        visible: &Visibility<'_>,
        d: RowDims,
    ) {
        let RowDims { t, nh, nkv, hd, cap, s } = d;
        let rep = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let m = out.len() / (nh * hd);
        let row = |r: usize, o: &mut [f32]| {
            let (bi, ti) = (r / t, r % t);
            let (mut scores, mut probs) = (vec![0f32; s], vec![0f32; s]);
            let mut nonzero: Vec<(&[f32], f32)> = Vec::with_capacity(s);
            for head in 0..nh {
                let g = head / rep;
                let qv = &q[(r * nh + head) * hd..][..hd];
                let base = (bi * nkv + g) * cap;
                for (si, sc) in scores.iter_mut().enumerate() {
                    *sc = if visible.at(bi, ti, si) {
                        dot(qv, &kc[(base + si) * hd..][..hd]) * scale
                    } else {
                        super::MASKED
                    };
                }
                softmax_row(&scores, max(&scores), &mut probs);
                let oh = &mut o[head * hd..(head + 1) * hd];
                // `oh += p * v` over the slots with p != 0, in slot order, four slots per pass
                // over `oh`: the same additions in the same order, fewer trips through memory.
                nonzero.clear();
                nonzero.extend(
                    probs
                        .iter()
                        .enumerate()
                        .filter(|&(_, &p)| p != 0.0)
                        .map(|(si, &p)| (&vc[(base + si) * hd..][..hd], p)),
                );
                let quads = nonzero.chunks_exact(4);
                let rest = quads.remainder();
                for quad in quads {
                    let [(v0, p0), (v1, p1), (v2, p2), (v3, p3)] = [quad[0], quad[1], quad[2], quad[3]];
                    let (v0, v1, v2, v3) = (&v0[..hd], &v1[..hd], &v2[..hd], &v3[..hd]);
                    for i in 0..hd {
                        oh[i] = oh[i] + p0 * v0[i] + p1 * v1[i] + p2 * v2[i] + p3 * v3[i];
                    }
                }
                for &(v, p) in rest {
                    for (ov, &vv) in oh.iter_mut().zip(v) {
                        *ov += p * vv;
                    }
                }
            }
        };
        if m > 1 && m * s * nh * hd >= PAR_ATTENTION_WORK {
            out.par_chunks_mut(nh * hd)
                .enumerate()
                .for_each(|(r, o)| row(r, o));
        } else {
            for (r, o) in out.chunks_mut(nh * hd).enumerate() {
                row(r, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Architecture, ModelConfig};
    use candle_core::Device;

    fn tiny() -> Transformer {
        let cfg = ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 40,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            attention_bias: false,
            sliding_window: None,
            bos_token_id: None,
            eos_token_ids: vec![1],
        };
        Transformer::init_random(&cfg, 1, &Device::Cpu, DType::F32).unwrap()
    }

    /// Runs `lean_forward` on one row of `t` fresh tokens.
    fn step(model: &Transformer, t: usize, cache: &mut KvCache) -> Option<Tensor> {
        let ids = Tensor::from_vec(vec![3u32; t], (1, t), &Device::Cpu).unwrap();
        let layout = TokenLayout::contiguous(1, t, 0);
        let keys = vec![(0..t as u32).map(Some).collect::<Vec<_>>()];
        model.lean_forward(&ids, &layout, cache, &keys, 0).unwrap()
    }

    #[test]
    fn eligible_steps_take_the_lean_path_and_others_leave_the_cache_alone() {
        // The equality tests in tests/model.rs compare this path with candle's ops; this one
        // checks they compared something: an eligible step runs here (where the CPU has the
        // few-row kernel), a step of too many rows or a model with the path off does not.
        let mut model = tiny();
        let mut cache = model.new_cache();
        let h = step(&model, 3, &mut cache);
        assert_eq!(h.is_some(), enabled());
        if let Some(h) = h {
            assert_eq!(h.dims(), &[1, 3, 32]);
            assert!(cache
                .layers
                .iter()
                .all(|l| l.as_ref().is_some_and(|l| l.len == 3)));
        }
        let mut fresh = model.new_cache();
        assert!(step(&model, few_rows::MAX_ROWS + 1, &mut fresh).is_none());
        model.set_lean_decode(false);
        assert!(step(&model, 3, &mut fresh).is_none());
        assert!(fresh.layers.iter().all(Option::is_none));
    }
}
