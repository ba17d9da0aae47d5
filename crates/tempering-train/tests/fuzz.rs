//! Fuzz smoke test of the run configs (see tempering-model's `tests/fuzz_common`): a complete
//! `sft.toml`, byte-mutated, resolved as every algorithm's config and used as a run would use it
//! (the trainer's settings, the step count, LoRA, the data options, written back as TOML). Each
//! must give a config or an error, never a panic. `scripts/fuzz.sh config [SECONDS]` runs it longer.

#[path = "../../tempering-model/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use fuzz_common::{fixture, fuzz, read_fixture, write};
use tempering_train::dpo::{PreferenceConfig, PreferenceKind};
use tempering_train::{PrmConfig, RmConfig, SftConfig};

#[test]
fn config_toml() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = [read_fixture("config/sft.toml")];
    fuzz("config", &seeds, 256, |bytes| {
        let path = write(dir.path(), "sft.toml", bytes);
        if let Ok(cfg) = SftConfig::resolve(Some(&path), toml::Table::new()) {
            let tc = cfg.train_config();
            let _ = (tc.total_steps(0), tc.total_steps(1000), tc.validate());
            let _ = (cfg.lora(), cfg.data_options(), cfg.to_toml());
        }
        let _ = RmConfig::resolve(Some(&path), toml::Table::new());
        let _ = PrmConfig::resolve(Some(&path), toml::Table::new());
        for kind in [PreferenceKind::Paired, PreferenceKind::Unpaired] {
            let _ = PreferenceConfig::resolve(Some(&path), toml::Table::new(), kind);
        }
    });
}

/// Every file under `fixtures/bad/config/` is refused with an error naming it.
#[test]
fn bad_inputs_give_errors() {
    let dir = fixture("bad/config");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = e.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let msg = match SftConfig::resolve(Some(&path), toml::Table::new()) {
            Ok(_) => panic!("{name} resolved"),
            Err(e) => e.to_string(),
        };
        // The file is named whatever went wrong: syntax, an unknown key, a type, a value.
        assert!(msg.contains(&name), "{name}: {msg}");
        n += 1;
    }
    assert!(n > 0, "no bad inputs in {}", dir.display());
}
