//! `temper`: the command line of Tempering. Parses arguments and hands each subcommand to the
//! library crates; holds no algorithm of its own. Each subcommand lives in `commands/` (one file, or
//! two for close pairs such as `dpo`/`kto`, `grpo`/`rloo`, `ppo`/`trpo`); `temper serve` is
//! `commands/serve.rs` with its HTTP side in `commands/serve/api.rs` (`parse`, `stream` beneath it);
//! `temper demo` is `commands/demo.rs` (its stages; `demo/` the plan and results reading) with its
//! page in `commands/demo_report.rs`; what the training commands share is in `commands/common.rs`
//! (the run lifecycle) and `commands/train_flags.rs` (the shared flags); `device.rs` turns device
//! flags into a candle device.

mod commands;
mod device;

use clap::{Parser, Subcommand};

// mimalloc, counted by the chat-template memory cap (a hostile template cannot exhaust memory).
#[global_allocator]
static GLOBAL: tempering_model::chat::RenderMemoryCap<mimalloc::MiMalloc> =
    tempering_model::chat::RenderMemoryCap(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(
    name = "temper",
    version,
    about = "Post-train language models to reason, and scale their reasoning at test time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, storage per tensor group, tokenizer and chat template.
    Inspect(commands::model::InspectArgs),
    /// Convert a GGUF file (or an HF directory) to an HF model directory.
    Convert(commands::model::ConvertArgs),
    /// Print a prompt's token ids and the top next tokens with their logits.
    Logits(commands::model::LogitsArgs),
    /// Print the token ids and pieces of a text.
    Tokenize(commands::model::TokenizeArgs),
    /// Fold a PEFT LoRA adapter into its base model and write the merged HF directory.
    Merge(commands::merge::MergeArgs),
    /// Complete a prompt, or a JSONL file of prompts, with the local generation engine or a
    /// remote OpenAI-compatible server (--backend).
    Generate(commands::generate::GenerateArgs),
    /// Built-in verifiable reasoning tasks: list, generate.
    Tasks(commands::tasks::TasksArgs),
    /// Chat with a model in the terminal (streams tokens; /reset, /system TEXT, /quit).
    Chat(commands::chat::ChatArgs),
    /// Supervised fine-tuning (full or LoRA) on JSONL/Parquet data; --resume continues a run.
    Sft(Box<commands::sft::SftArgs>),
    /// Online RL with group-normalised advantages (GRPO, Dr. GRPO, DAPO, BNPO; REINFORCE++ with
    /// --reinforce-pp); --resume continues a run.
    Grpo(Box<commands::rl::GrpoArgs>),
    /// Online RL with the leave-one-out baseline (RLOO); same flags as grpo.
    Rloo(Box<commands::rl::GrpoArgs>),
    /// The whole pipeline on the embedded default: data, SFT, PRM, GRPO with guards, test-time
    /// search, a table and an HTML report (--fast: the one-minute version).
    Demo(commands::demo::DemoArgs),
    /// Solve one problem with a test-time search strategy under a budget; prints the answer, its cost and the tree.
    Search(Box<commands::search::SearchArgs>),
    /// Serve the model over an OpenAI-compatible HTTP API, with test-time strategies by request.
    Serve(Box<commands::serve::ServeArgs>),
    /// Run a grid of test-time strategies over a dataset: table, plots and an HTML report.
    Eval(Box<commands::eval::EvalArgs>),
    /// Train a Bradley-Terry outcome reward model on preference pairs (HF sequence classifier).
    Rm(Box<commands::rm::RmArgs>),
    /// Train a process reward model on stepwise labels (HF token classifier).
    Prm(Box<commands::prm::PrmArgs>),
    /// Label the steps of a policy's solutions to a built-in task by rollouts (Math-Shepherd).
    LabelSteps(Box<commands::label_steps::LabelStepsArgs>),
    /// Score completions with a reward model or a process reward model.
    Score(commands::score::ScoreArgs),
    /// PPO with a critic (value head or --critic-model), GAE and the KL-penalised per-token reward;
    /// the shared RL flags plus the critic's and PPO's; --resume continues a run.
    Ppo(Box<commands::ppo::PpoArgs>),
    /// TRPO: natural-gradient steps within a KL trust region (--max-kl), conjugate gradient and a
    /// line search; the critic as in ppo; --resume continues a run.
    Trpo(Box<commands::ppo::TrpoArgs>),
    /// Preference optimisation on prompt/chosen/rejected pairs: DPO, IPO, hinge, robust, SimPO, ORPO.
    Dpo(Box<commands::dpo::PreferenceArgs>),
    /// KTO on unpaired prompt/completion/label data.
    Kto(Box<commands::dpo::PreferenceArgs>),
    /// The implicit rewards of a DPO run's policy on preference pairs, one JSON line per pair.
    DpoRewards(commands::dpo_rewards::DpoRewardsArgs),
}

// mimalloc's C API (linked through the `mimalloc` crate): option numbers from its mimalloc.h.
extern "C" {
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}
const MI_OPTION_ARENA_EAGER_COMMIT: std::os::raw::c_int = 4;
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// Candle allocates a fresh buffer for every op; letting mimalloc keep freed memory (no purge) and
/// commit arenas eagerly stops the kernel from zeroing new pages over and over (measured: a training
/// step's forward and backward went from about 5 s to 3.3 s). Environment variables still win.
fn tune_allocator() {
    for (var, option, value) in [
        ("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, -1),
        (
            "MIMALLOC_ARENA_EAGER_COMMIT",
            MI_OPTION_ARENA_EAGER_COMMIT,
            1,
        ),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mi_option_set only stores an integer in mimalloc's option table.
            unsafe { mi_option_set(option, value) };
        }
    }
}

/// Candle splits element-wise ops over 64k elements across a pool of its own whose threads, and the
/// caller waiting on them, spin rather than sleep. Beside rayon's pool (the matmuls) that is one
/// thread more than a 2-core machine has, and whenever the cores are shared a spinning waiter burns
/// a whole time slice: a tiny-model GRPO update took 2.5-2.9 s with the pool and 0.92-0.96 s without
/// while other builds ran; on idle cores both measured the same (update 0.78-0.82 s, SmolLM2
/// prefill 520-533 tok/s; release build, 2026-12-06). So that pool is off (one thread: the caller
/// runs the op) unless `CANDLE_NUM_THREADS` says otherwise; rayon's pool is untouched.
///
/// oneDNN's OpenMP threads read their settings when the library loads
/// (`tempering_model::ops::blas::openmp_defaults`): set here, before any thread exists, rather
/// than by the library at load time.
fn quiet_thread_pools() {
    // Called first thing in `main`, before any other thread exists.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // rayon's own default, read here without building its pool (`main_thread_in_pool` does that).
    let rayon_threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tempering_model::ops::blas::openmp_defaults(rayon_threads);
}

/// Makes the main thread one of rayon's workers (the pool keeps one thread per core, this one
/// included), so that the matrix products it starts split with a worker that is already running
/// instead of waking a sleeping one for each product and waiting on it. Decode on SmolLM2 runs about
/// 1.15x faster at batch 1 this way (what serve's model thread gets by living on a worker). Not for
/// `serve`, whose main thread blocks in the HTTP runtime and whose model thread is a worker already;
/// not with one core (a job injected from another thread while the main thread blocks could then
/// find no worker to run it); and not with `TEMPER_MAIN_IN_POOL=0`.
fn main_thread_in_pool() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || std::env::var("TEMPER_MAIN_IN_POOL").is_ok_and(|v| v == "0") {
        return;
    }
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
    {
        tracing::debug!("rayon's pool was already built: {e}");
    }
}

fn main() {
    quiet_thread_pools();
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TEMPER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    install_signal_handlers();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        main_thread_in_pool();
    }
    if let Err(e) = dispatch(cli.command) {
        if let Some(stop) = e.downcast_ref::<commands::Interrupted>() {
            eprintln!("{stop}");
            // The shell's convention for a process stopped by a signal: 128 + its number.
            std::process::exit(128 + stop.signal);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// SIGINT (Ctrl-C) and SIGTERM: while a training loop runs, the first asks it to stop after its
/// current step with a checkpoint (see `tempering_train::interrupt`); otherwise, or on a second
/// signal, the process ends at once as it would without a handler.
fn install_signal_handlers() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        let handler = move || {
            if !tempering_train::interrupt::on_signal(signal) {
                let _ = signal_hook::low_level::emulate_default_handler(signal);
            }
        };
        // SAFETY: the handler touches only atomics (`on_signal`) and, failing that, the crate's
        // async-signal-safe default-action emulation (`_exit`); it neither allocates nor locks.
        if let Err(e) = unsafe { signal_hook::low_level::register(signal, handler) } {
            tracing::warn!("cannot handle signal {signal}: {e}");
        }
    }
}

/// Parses a full command line (program name first) and runs it: how `temper demo` composes the
/// other commands.
pub(crate) fn run_args(args: &[String]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(args).map_err(|e| anyhow::anyhow!("{e}"))?;
    dispatch(cli.command)
}

/// The name of a training command (`temper NAME --resume DIR` continues it), `None` for others.
fn training_command(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Sft(_) => "sft",
        Command::Grpo(_) => "grpo",
        Command::Rloo(_) => "rloo",
        Command::Rm(_) => "rm",
        Command::Prm(_) => "prm",
        Command::Ppo(_) => "ppo",
        Command::Trpo(_) => "trpo",
        Command::Dpo(_) => "dpo",
        Command::Kto(_) => "kto",
        _ => return None,
    })
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    use tempering_train::TrainError;
    let name = training_command(&command);
    run_command(command).map_err(|e| match (name, e.downcast_ref::<TrainError>()) {
        (
            Some(command),
            Some(TrainError::Interrupted {
                step, dir, signal, ..
            }),
        ) => commands::Interrupted {
            command,
            step: *step,
            dir: dir.clone(),
            signal: *signal,
        }
        .into(),
        _ => e,
    })
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect(a) => commands::model::inspect(a),
        Command::Convert(a) => commands::model::convert(a),
        Command::Logits(a) => commands::model::logits(a),
        Command::Tokenize(a) => commands::model::tokenize(a),
        Command::Merge(a) => commands::merge::merge(a),
        Command::Generate(a) => commands::generate::generate(a),
        Command::Chat(a) => commands::chat::chat(a),
        Command::Tasks(a) => commands::tasks::run(a),
        Command::Sft(a) => commands::sft::sft(*a),
        Command::Grpo(a) => commands::rl::run(*a, false),
        Command::Rloo(a) => commands::rl::run(*a, true),
        Command::Demo(a) => commands::demo::demo(a),
        Command::Search(a) => commands::search::search(*a),
        Command::Serve(a) => commands::serve::serve(*a),
        Command::Eval(a) => commands::eval::eval(*a),
        Command::Rm(a) => commands::rm::rm(*a),
        Command::Prm(a) => commands::prm::prm(*a),
        Command::LabelSteps(a) => commands::label_steps::run(*a),
        Command::Score(a) => commands::score::run(a),
        Command::Ppo(a) => commands::ppo::ppo(*a),
        Command::Trpo(a) => commands::ppo::trpo(*a),
        Command::Dpo(a) => commands::dpo::run(*a, tempering_train::dpo::PreferenceKind::Paired),
        Command::Kto(a) => commands::dpo::run(*a, tempering_train::dpo::PreferenceKind::Unpaired),
        Command::DpoRewards(a) => commands::dpo_rewards::run(a),
    }
}
