//! `--rollout-backend URL`: online RL whose rollouts are generated on an OpenAI-compatible server
//! (vLLM with runtime LoRA updating, or `temper serve --allow-runtime-lora`) running the same base
//! model. Before each rollout batch the policy's LoRA adapter is written atomically under the run
//! directory (`rollout-adapters/policy-step-N`), loaded on the server under that name, requests
//! switch to it, and the previous version is unloaded and deleted. The learner recomputes every
//! logprob locally, as with the local engine. Holds no training logic.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tempering_generate::{Backend, RemoteBackend};
use tempering_model::{save_peft, Transformer};
use tempering_train::rl::RolloutServer;
use tempering_train::TrainError;

use crate::commands::backend_flags::{open_generator, BackendFlags, Generator};
use crate::commands::common::write_final;
use crate::commands::model::DeviceArgs;

pub(crate) struct ServerPolicy {
    remote: RemoteBackend,
    /// Where the adapter versions are written: the server reads them from there, so it must see
    /// the same disk.
    dir: PathBuf,
    /// The base model as the adapters' `adapter_config.json` names it.
    base: String,
    loaded: Option<(String, PathBuf)>,
}

impl ServerPolicy {
    /// Connects to `url` with `model`'s tokenizer; adapters go under `run_dir`. LoRA only: a
    /// server reloads an adapter at run time, not full weights.
    pub(crate) fn connect(url: &str, model: &Path, run_dir: &Path, lora: bool) -> Result<Self> {
        if !lora {
            bail!(
                "--rollout-backend {url}: the server is handed each new policy as a LoRA adapter, \
                 so it needs LoRA (--lora-r N); full fine-tuning would need the server to reload \
                 whole weights"
            );
        }
        let flags = BackendFlags {
            backend: Some(url.to_string()),
            backend_concurrency: 16,
            ..BackendFlags::default()
        };
        let device = DeviceArgs {
            device: "cpu".into(),
            dtype: None,
        };
        let opened = open_generator(model, None, &device, 1, &flags)
            .with_context(|| format!("--rollout-backend {url}"))?;
        let Generator::Remote(remote) = opened.generator else {
            bail!("--rollout-backend {url}: expected a remote server");
        };
        let dir = run_dir.join("rollout-adapters");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(ServerPolicy {
            remote: *remote,
            dir,
            base: model.display().to_string(),
            loaded: None,
        })
    }

    fn sync_inner(&mut self, policy: &Transformer, step: usize) -> Result<String> {
        let name = format!("policy-step-{step}");
        let out = self.dir.join(&name);
        if out.exists() {
            // Left by an interrupted run that resumes here: written again from this policy.
            std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
        }
        write_final(&out, |tmp| Ok(save_peft(tmp, policy, &self.base)?))?;
        // A name left loaded by an interrupted run: unloading it first makes the load succeed.
        let _ = self.remote.unload_lora_adapter(&name);
        self.remote
            .load_lora_adapter(&name, &out.display().to_string())
            .with_context(|| format!("loading {} on the rollout server", out.display()))?;
        self.remote.set_model(&name);
        if let Some((old, old_dir)) = self.loaded.replace((name.clone(), out)) {
            self.remote
                .unload_lora_adapter(&old)
                .with_context(|| format!("unloading {old} from the rollout server"))?;
            std::fs::remove_dir_all(&old_dir)
                .with_context(|| format!("removing {}", old_dir.display()))?;
        }
        Ok(name)
    }
}

impl RolloutServer for ServerPolicy {
    fn sync(
        &mut self,
        policy: &Transformer,
        rollout_step: usize,
    ) -> tempering_train::Result<(&dyn Backend, String)> {
        let name = self
            .sync_inner(policy, rollout_step)
            .map_err(|e| TrainError::config("rollout_backend", format!("{e:#}")))?;
        Ok((&self.remote, name))
    }
}
