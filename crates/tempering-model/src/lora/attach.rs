//! Adapters on a [`Transformer`]: adding fresh ones (PEFT's initialisation), putting a loaded PEFT
//! adapter on, listing their tensors and `Var`s, seeded dropout, merging them into the base weights
//! and the reference model with adapters off. Knows the decoder's layers; reading and writing files
//! is `peft`'s.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};

use super::*;
use crate::error::{ModelError, Result};
use crate::rng::SplitMix64;
use crate::transformer::Transformer;

impl Transformer {
    /// Adds adapters as `cfg` says to every decoder layer, initialised as PEFT does (A
    /// kaiming-uniform with `a = sqrt(5)`, i.e. uniform in `±1/sqrt(in)`, drawn from `seed`; B
    /// zeros, so the model's output is unchanged). Returns the adapter's `Var`s under PEFT's names,
    /// layer by layer, A before B. Base weights stay as they are (frozen unless made trainable).
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<(String, Var)>> {
        cfg.validate()?;
        self.no_adapters_yet()?;
        // Only the adapters train: base weights that are `Var`s must not collect gradients.
        self.freeze_base()?;
        let (device, dtype) = (self.device().clone(), self.dtype());
        let mut rng = SplitMix64(seed);
        let targets = cfg.sorted_targets();
        let mut vars = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for &t in &targets {
                let lin = t.linear_mut(layer);
                let (out, inp) = lin.weight.dims2()?;
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..cfg.r * inp)
                    .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                    .collect();
                let a = Var::from_tensor(
                    &Tensor::from_vec(a, (cfg.r, inp), &device)?.to_dtype(dtype)?,
                )?;
                let b = Var::from_tensor(&Tensor::zeros((out, cfg.r), dtype, &device)?)?;
                lin.lora = Some(LoraLinear {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    alpha: cfg.alpha,
                    use_rslora: cfg.use_rslora,
                    dropout: cfg.dropout,
                    dropout_rng: None,
                });
                let (na, nb) = peft_tensor_names(i, t);
                vars.push((na, a));
                vars.push((nb, b));
            }
        }
        Ok(vars)
    }

    fn no_adapters_yet(&self) -> Result<()> {
        if self.has_lora() {
            return Err(ModelError::Unsupported(
                "the model already carries LoRA adapters (merge them or use without_adapters() \
                 before adding others)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn loras(&self) -> impl Iterator<Item = (usize, LoraTarget, &LoraLinear)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            LoraTarget::ALL
                .into_iter()
                .filter_map(move |t| t.linear(l).lora.as_ref().map(|a| (i, t, a)))
        })
    }

    /// Whether any layer carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.loras().next().is_some()
    }

    /// The adapters' configuration, read back from the layers (`None` without adapters). Errors if
    /// layers disagree on rank, alpha or dropout, or not every layer has the same targets.
    pub fn lora_config(&self) -> Result<Option<LoraConfig>> {
        let Some((_, _, first)) = self.loras().next() else {
            return Ok(None);
        };
        let mut targets: Vec<LoraTarget> = self.loras().map(|(_, t, _)| t).collect();
        targets.sort();
        targets.dedup();
        for (i, t, l) in self.loras() {
            if l.rank() != first.rank()
                || l.alpha != first.alpha
                || l.dropout != first.dropout
                || l.use_rslora != first.use_rslora
            {
                return Err(ModelError::Unsupported(format!(
                    "LoRA on layer {i} {t} differs in rank, alpha or dropout from the others: \
                     PEFT's format holds one configuration per adapter"
                )));
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for &t in &targets {
                if t.linear(layer).lora.is_none() {
                    return Err(ModelError::Unsupported(format!(
                        "layer {i} has no LoRA on {t} while other layers do"
                    )));
                }
            }
        }
        Ok(Some(LoraConfig {
            r: first.rank(),
            alpha: first.alpha,
            dropout: first.dropout,
            targets,
            use_rslora: first.use_rslora,
        }))
    }

    /// The adapter's tensors under PEFT's names (what `adapter_model.safetensors` holds).
    pub fn lora_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        for (i, t, l) in self.loras() {
            let (na, nb) = peft_tensor_names(i, t);
            m.insert(na, l.a.clone());
            m.insert(nb, l.b.clone());
        }
        m
    }

    /// The adapter's `Var`s under PEFT's names (layer by layer, A before B), sharing storage with
    /// the model: what an optimiser updates, e.g. after [`Transformer::apply_peft`] on resume.
    pub fn lora_vars(&self) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        for (i, t, l) in self.loras() {
            let (na, nb) = peft_tensor_names(i, t);
            for (name, x) in [(na, &l.a), (nb, &l.b)] {
                if !x.is_variable() {
                    return Err(ModelError::Unsupported(format!(
                        "LoRA tensor `{name}` is not a Var"
                    )));
                }
                vars.push((name, Var::from_tensor(x)?));
            }
        }
        Ok(vars)
    }

    /// Switches LoRA dropout on (training: `Some(rng)`, masks drawn from `rng`) or off (`None`:
    /// inference, deterministic). Adapters start with dropout off.
    pub fn set_lora_dropout(&mut self, rng: Option<DropoutRng>) {
        for layer in &mut self.layers {
            for t in LoraTarget::ALL {
                if let Some(l) = t.linear_mut(layer).lora.as_mut() {
                    l.dropout_rng = rng.clone();
                }
            }
        }
    }

    /// The same model with adapters switched off: a cheap clone sharing every base weight (no second
    /// copy in memory), e.g. the reference model of DPO and RL.
    pub fn without_adapters(&self) -> Transformer {
        let mut m = self.clone();
        for layer in &mut m.layers {
            for t in LoraTarget::ALL {
                t.linear_mut(layer).lora = None;
            }
        }
        m
    }

    /// A model whose weights are `W + B A * scale` (computed in f32, stored in `W`'s dtype), with no
    /// adapters and no `Var`s among the merged weights. Other weights are shared.
    pub fn merge_lora(&self) -> Result<Transformer> {
        let mut m = self.clone();
        for layer in &mut m.layers {
            for t in LoraTarget::ALL {
                let lin = t.linear_mut(layer);
                if let Some(l) = lin.lora.take() {
                    let w = &lin.weight;
                    let merged = (w.to_dtype(DType::F32)? + l.delta_weight()?)?;
                    lin.weight = merged.to_dtype(w.dtype())?.detach();
                }
            }
        }
        Ok(m)
    }

    /// Loads the PEFT adapter in `dir` ([`load_peft`]) onto this model; returns its `Var`s as
    /// [`Transformer::add_lora`] does.
    pub fn apply_peft(&mut self, dir: &Path) -> Result<Vec<(String, Var)>> {
        let adapter = load_peft(dir)?;
        self.apply_adapter(&adapter)
    }

    /// Puts `adapter` onto this model (converted to the model's dtype and device). Every targeted
    /// module of every layer must have both tensors with the right shapes, and every tensor must
    /// belong to one; errors name the file and the tensor.
    pub fn apply_adapter(&mut self, adapter: &PeftAdapter) -> Result<Vec<(String, Var)>> {
        let cfg = &adapter.config;
        cfg.validate().map_err(|e| {
            ModelError::format(adapter.dir.join(ADAPTER_CONFIG_FILE), e.to_string())
        })?;
        self.no_adapters_yet()?;
        self.freeze_base()?;
        let file = adapter.dir.join(ADAPTER_WEIGHTS_FILE);
        let (device, dtype) = (self.device().clone(), self.dtype());
        let mut used = 0usize;
        let mut lin_adapters = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for t in cfg.sorted_targets() {
                let (out, inp) = t.linear(layer).weight.dims2()?;
                let (na, nb) = peft_tensor_names(i, t);
                let get = |name: &str, shape: [usize; 2], what: &str| -> Result<Var> {
                    let x = adapter.tensors.get(name).ok_or_else(|| {
                        ModelError::tensor(
                            &file,
                            name,
                            format!("missing: adapter_config.json targets {t}"),
                        )
                    })?;
                    if x.dims() != shape {
                        return Err(ModelError::tensor(
                            &file,
                            name,
                            format!("shape {:?}, expected {shape:?} ({what})", x.dims()),
                        ));
                    }
                    Ok(Var::from_tensor(&x.to_dtype(dtype)?.to_device(&device)?)?)
                };
                let a = get(
                    &na,
                    [cfg.r, inp],
                    &format!(
                        "r = {} from adapter_config.json, in = {inp} from the base model",
                        cfg.r
                    ),
                )?;
                let b = get(
                    &nb,
                    [out, cfg.r],
                    &format!(
                        "out = {out} from the base model, r = {} from adapter_config.json",
                        cfg.r
                    ),
                )?;
                used += 2;
                lin_adapters.push((i, t, na, a, nb, b));
            }
        }
        if used != adapter.tensors.len() {
            let expected: std::collections::HashSet<&String> =
                lin_adapters.iter().flat_map(|x| [&x.2, &x.4]).collect();
            if let Some(extra) = adapter.tensors.keys().find(|k| !expected.contains(k)) {
                return Err(ModelError::tensor(
                    &file,
                    extra,
                    format!(
                        "not a LoRA weight of a targeted module of this {}-layer model \
                         (targets: {})",
                        self.layers.len(),
                        cfg.sorted_targets()
                            .iter()
                            .map(|t| t.module_name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let mut vars = Vec::with_capacity(used);
        for (i, t, na, a, nb, b) in lin_adapters {
            t.linear_mut(&mut self.layers[i]).lora = Some(LoraLinear {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                alpha: cfg.alpha,
                use_rslora: cfg.use_rslora,
                dropout: cfg.dropout,
                dropout_rng: None,
            });
            vars.push((na, a));
            vars.push((nb, b));
        }
        Ok(vars)
    }
}
