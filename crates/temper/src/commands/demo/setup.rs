//! What the demo runs, before any stage runs: the base model it starts from, the size of every
//! stage (the plan), the `temper` command-line builder the stages run in-process, and preparing the
//! output directory. Knows no stage's order or results.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where the policy comes from.
pub(super) enum BaseModel {
    /// Trained from scratch by `temper tasks train-tiny`; full fine-tuning throughout.
    Tiny,
    /// A pretrained model: SFT and GRPO train LoRA adapters that `temper merge` folds in.
    Pretrained(PathBuf),
}

impl BaseModel {
    pub(super) fn parse(model: &str) -> Result<Self> {
        match model {
            "tiny" => Ok(BaseModel::Tiny),
            "smollm2" => tempering_model::known::smollm2_gguf()
                .map(BaseModel::Pretrained)
                .context(
                    "--model smollm2: the SmolLM2 GGUF is not here; run scripts/fetch-smollm2.sh \
                     (or set TEMPER_SMOLLM2 to the file)",
                ),
            path => {
                let p = PathBuf::from(path);
                if p.exists() {
                    Ok(BaseModel::Pretrained(p))
                } else {
                    bail!("--model {path}: expected tiny, smollm2, or an existing HF directory or GGUF file")
                }
            }
        }
    }
}

/// The LoRA flags of the pretrained-model pipeline's SFT and GRPO: rank 16 on every attention
/// projection.
pub(super) const LORA_FLAGS: [&str; 6] = [
    "--lora-r",
    "16",
    "--lora-alpha",
    "32",
    "--lora-targets",
    "q,k,v,o",
];

/// The gameable proxy of the hacking stage: 1 when the answer ends in an even digit. Half the
/// right answers earn nothing and half the wrong ones earn full marks, so a policy can raise it by
/// answering evenly rather than rightly.
pub(super) const HACKABLE_PROXY: &str = "format=Answer: [0-9]*[02468]$";

/// Sizes of each stage.
pub(super) struct Plan {
    pub(super) sft_steps: usize,
    pub(super) sft_problems: usize,
    /// The tiny model's SFT share of retain-level problems, so that forgetting can be measured.
    pub(super) sft_mix_fraction: f64,
    /// Further SFT steps that make the PRM's verifier model from the SFT model (0: the PRM starts
    /// from the SFT model itself, its own reference).
    pub(super) verifier_steps: usize,
    pub(super) verifier_lr: f64,
    /// Train-split problems whose sampled solutions, labelled by their answers, calibrate the PRM.
    pub(super) label_problems: usize,
    pub(super) label_samples: usize,
    /// Training steps of the PRM; 0: no PRM stage, and search runs without PRM-scored rows.
    pub(super) prm_steps: usize,
    /// Full fine-tuning of the PRM's model: a pretrained one wants small steps.
    pub(super) prm_lr: f64,
    /// The implicit PRM's reward scale.
    pub(super) prm_beta: f64,
    pub(super) grpo_steps: usize,
    pub(super) grpo_prompts: usize,
    pub(super) grpo_generations: usize,
    pub(super) grpo_lr: f64,
    /// Extra sampling rounds replacing groups whose rewards all tie (DAPO's dynamic sampling).
    pub(super) grpo_dynamic_rounds: usize,
    /// Rollout temperature: below 1 the groups sample near the greedy answer, so what RL fixes
    /// is what greedy decoding does.
    pub(super) grpo_temperature: f64,
    /// Train-split prompts drawn for RL (duplicates allowed when the split is smaller).
    pub(super) grpo_num_prompts: usize,
    /// Rows of one forward and backward in the RL updates (the hacking stage's too).
    pub(super) grpo_micro_batch: usize,
    /// Run GRPO a second time with replay of retain-level worked solutions.
    pub(super) replay: bool,
    pub(super) test_problems: usize,
    pub(super) retain_problems: usize,
    /// The sample budgets of self-consistency and best-of-N.
    pub(super) budgets: Vec<usize>,
    /// Whether `adaptive@N` (the largest budget) runs beside the fixed budgets.
    pub(super) adaptive: bool,
    pub(super) beams: Vec<&'static str>,
    pub(super) hacking_steps: usize,
    /// Most sequences decoded together when labelling and evaluating.
    pub(super) batch_rows: usize,
    /// Most new tokens of a completion, everywhere: the tiny model's character tokenizer writes a
    /// level-3 arithmetic solution in under 64; SmolLM2's tokenizer spends a token per digit, so a
    /// three-step base conversion takes 55 to 70 tokens and a four-step one up to about 95.
    pub(super) max_new_tokens: usize,
}

impl Plan {
    pub(super) fn new(fast: bool, pretrained: bool) -> Self {
        if pretrained {
            // A 135M-parameter model on 2 CPU cores: LoRA trains, and the full plan spends its time
            // on SFT, GRPO and a held-out measurement (greedy and voting on 400 problems of
            // countdown level 4, which holds 1,828 test problems). Measured (docs/experiments.md):
            // 400 SFT steps leave greedy at 17.5% against a pass@4 of 40.5%, room for RL; 150
            // steps left 10% against 22.5%. Its PRM stage and PRM-scored search (an implicit PRM
            // of SmolLM2 itself: labelling and training took 326 s, beam search 3.4 s a problem)
            // are left to `--fast`, a smoke run of every stage, not a measurement.
            return Plan {
                sft_steps: if fast { 10 } else { 400 },
                sft_problems: 4000,
                sft_mix_fraction: 0.0,
                verifier_steps: 0,
                verifier_lr: 0.0,
                label_problems: if fast { 4 } else { 16 },
                label_samples: 2,
                prm_steps: if fast { 2 } else { 0 },
                prm_lr: 2e-5,
                prm_beta: 0.05,
                grpo_steps: if fast { 1 } else { 60 },
                grpo_prompts: if fast { 4 } else { 8 },
                grpo_generations: if fast { 4 } else { 8 },
                grpo_lr: 1e-4,
                grpo_dynamic_rounds: if fast { 0 } else { 1 },
                grpo_temperature: if fast { 1.0 } else { 0.7 },
                grpo_num_prompts: 8000,
                // The update's logits are rows x padded length x 49,152 floats: 64 rows, one of
                // them a 112-token completion, took a GRPO run past 24 GB.
                grpo_micro_batch: 16,
                replay: false,
                test_problems: if fast { 3 } else { 400 },
                retain_problems: if fast { 3 } else { 100 },
                budgets: vec![if fast { 2 } else { 4 }],
                adaptive: fast,
                beams: vec!["beam:2x2"],
                hacking_steps: if fast { 1 } else { 8 },
                batch_rows: if fast { 32 } else { 64 },
                max_new_tokens: if fast { 80 } else { 112 },
            };
        }
        if fast {
            Plan {
                sft_steps: 150,
                sft_problems: 4000,
                sft_mix_fraction: 0.25,
                verifier_steps: 60,
                verifier_lr: 1e-3,
                label_problems: 64,
                label_samples: 2,
                prm_steps: 20,
                prm_lr: 1e-4,
                prm_beta: 0.5,
                grpo_steps: 6,
                grpo_prompts: 4,
                grpo_generations: 8,
                grpo_lr: 2e-5,
                grpo_dynamic_rounds: 1,
                grpo_temperature: 1.0,
                grpo_num_prompts: 2000,
                grpo_micro_batch: 64,
                replay: true,
                test_problems: 40,
                retain_problems: 20,
                budgets: vec![4, 8],
                adaptive: true,
                beams: vec!["beam:2x2"],
                hacking_steps: 4,
                batch_rows: 256,
                max_new_tokens: 64,
            }
        } else {
            Plan {
                sft_steps: 600,
                sft_problems: 20_000,
                sft_mix_fraction: 0.25,
                // 600 further steps took the verifier model from 45% to 80% greedy on 400
                // validation problems; as the PRM's model it lifted best-of-16 from 22% (a
                // classifier PRM on Math-Shepherd labels) to 60% (docs/experiments.md).
                verifier_steps: 600,
                verifier_lr: 1e-3,
                label_problems: 2000,
                label_samples: 4,
                prm_steps: 200,
                prm_lr: 1e-4,
                prm_beta: 0.5,
                grpo_steps: 80,
                grpo_prompts: 16,
                grpo_generations: 8,
                grpo_lr: 5e-5,
                grpo_dynamic_rounds: 2,
                grpo_temperature: 0.6,
                grpo_num_prompts: 20_000,
                grpo_micro_batch: 64,
                replay: true,
                test_problems: 400,
                retain_problems: 200,
                budgets: vec![4, 16],
                adaptive: true,
                beams: vec!["beam:2x2"],
                hacking_steps: 30,
                batch_rows: 256,
                max_new_tokens: 64,
            }
        }
    }
}

/// A `temper` command line under construction; [`Cmd::run`] runs it in this process.
pub(super) struct Cmd(Vec<String>);

impl Cmd {
    pub(super) fn new(words: &[&str]) -> Self {
        Cmd(words.iter().map(|w| w.to_string()).collect())
    }

    /// `--flag value`.
    pub(super) fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.0.push(flag.to_string());
        self.0.push(value.to_string());
        self
    }

    pub(super) fn path(self, flag: &str, value: &Path) -> Self {
        self.arg(flag, value.display())
    }

    /// Bare words (a positional argument, a switch, or several flags at once).
    pub(super) fn words<S: ToString>(mut self, words: impl IntoIterator<Item = S>) -> Self {
        self.0.extend(words.into_iter().map(|w| w.to_string()));
        self
    }

    pub(super) fn run(self) -> Result<()> {
        eprintln!("  $ temper {}", self.0.join(" "));
        let mut full = vec!["temper".to_string()];
        full.extend(self.0);
        crate::run_args(&full)
    }
}

/// A demo directory may be replaced; anything else in the way is refused.
pub(super) fn prepare_output(out: &Path) -> Result<()> {
    if out.exists() {
        let marker = out.join("demo.json");
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !empty && !marker.is_file() {
            bail!(
                "{} exists and is not an earlier demo (no demo.json): choose another --output",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("demo.json"), "{\"status\": \"running\"}\n")
        .with_context(|| format!("writing {}", out.join("demo.json").display()))
}
