//! GRPO's advantages, its four loss types (with and without stored old logprobs, KL penalty and
//! clip-higher) and the KL estimators against fixtures from TRL's own GRPOTrainer
//! (`scripts/reference/grpo_fixtures.py`): the loss and its gradient with respect to every token's
//! logprob, to 1e-6.

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;
use tempering_train::rl::advantage::grpo_advantages;
use tempering_train::rl::kl::kl_value;
use tempering_train::rl::policy_loss::clipped_policy_loss;
use tempering_train::rl::{KlEstimator, LossType, PolicyLossConfig, RolloutSample, ScaleRewards};

fn fixture() -> Value {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/rl/grpo_trl.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        "{what}: {a} vs TRL {b}"
    );
}

#[test]
fn losses_and_gradients_match_trl() {
    let f = fixture();
    let logps = rows(&f["logps"]);
    let old = rows(&f["old"]);
    let refs = rows(&f["ref"]);
    let rewards: Vec<f64> = f["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let group = f["group"].as_u64().unwrap() as usize;
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    for case in cases {
        let name = format!(
            "{} {} beta {}",
            case["loss_type"], case["scale_rewards"], case["beta"]
        );
        let scale: ScaleRewards = case["scale_rewards"].as_str().unwrap().parse().unwrap();
        let adv = grpo_advantages(&rewards, group, scale);
        let want_adv: Vec<f64> = case["advantages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (a, b) in adv.iter().zip(&want_adv) {
            close(*a, *b, &format!("{name}: advantage"));
        }
        let c = PolicyLossConfig {
            loss_type: case["loss_type"]
                .as_str()
                .unwrap()
                .parse::<LossType>()
                .unwrap(),
            epsilon_low: case["epsilon_low"].as_f64().unwrap(),
            epsilon_high: case["epsilon_high"].as_f64().unwrap(),
            beta: case["beta"].as_f64().unwrap(),
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
            max_completion_length: case["max_completion_length"].as_u64().unwrap() as usize,
        };
        let use_old = case["use_old"].as_bool().unwrap();
        // Old and reference logprobs travel as f32 in a sample; the fixture's values are taken at
        // that precision on both sides of the comparison by feeding f64 logprobs.
        let samples: Vec<RolloutSample> = (0..logps.len())
            .map(|i| RolloutSample {
                ids: vec![0; 1 + logps[i].len()],
                prompt_len: 1,
                advantages: vec![adv[i] as f32; logps[i].len()],
                old_logprobs: use_old.then(|| old[i].iter().map(|&x| x as f32).collect()),
                ref_logprobs: (c.beta != 0.0).then(|| refs[i].iter().map(|&x| x as f32).collect()),
                in_loss: true,
            })
            .collect();
        let active: Vec<&RolloutSample> = samples.iter().collect();
        let flat: Vec<f64> = logps.iter().flatten().copied().collect();
        let n = flat.len();
        let lp = Var::from_tensor(&Tensor::from_vec(flat, n, &Device::Cpu).unwrap()).unwrap();
        let tokens = n as f64;
        let weight = match c.loss_type {
            LossType::Grpo | LossType::DrGrpo => logps.len() as f64,
            LossType::Dapo | LossType::Bnpo => tokens,
        };
        let entropy = Tensor::ones(n, DType::F64, &Device::Cpu).unwrap();
        let parts = clipped_policy_loss(&c, lp.as_tensor(), &entropy, &active, weight).unwrap();
        let loss = (parts.loss_sum / parts.weight).unwrap();
        let got = loss.to_scalar::<f64>().unwrap();
        // Advantages go through f32 in a sample: compare at f32 resolution of the inputs.
        let tol = |b: f64| 2e-6 * b.abs().max(1.0);
        let want = case["loss"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= tol(want),
            "{name}: loss {got} vs TRL {want}"
        );
        let g = loss.backward().unwrap();
        let grad: Vec<f64> = g.get(lp.as_tensor()).unwrap().to_vec1().unwrap();
        let want_g: Vec<f64> = rows(&case["grad"]).into_iter().flatten().collect();
        for (a, b) in grad.iter().zip(&want_g) {
            assert!((a - b).abs() <= tol(*b), "{name}: gradient {a} vs TRL {b}");
        }
        // Metrics are sums over the weight's units (bnpo's are already means).
        let div = if c.loss_type == LossType::Bnpo {
            1.0
        } else {
            weight
        };
        if c.beta != 0.0 {
            let kl = parts.metrics.iter().find(|(k, _)| k == "kl").unwrap().1 / div;
            let want_kl = case["metrics"]["kl"].as_f64().unwrap();
            // TRL's metric is a token mean; ours is the same mean.
            assert!(
                (kl - want_kl).abs() <= 2e-6,
                "{name}: kl {kl} vs TRL {want_kl}"
            );
        }
        let clip = parts
            .metrics
            .iter()
            .find(|(k, _)| k == "clip_ratio/region_mean")
            .unwrap()
            .1
            / div;
        let want_clip = case["metrics"]["clip_ratio/region_mean"].as_f64().unwrap();
        assert!(
            (clip - want_clip).abs() < 1e-6,
            "{name}: clip fraction {clip} vs TRL {want_clip}"
        );
    }
}

#[test]
fn kl_estimators_match_trl_inputs() {
    let f = fixture();
    let logps = rows(&f["logps"]);
    let refs = rows(&f["ref"]);
    for (name, est) in [
        ("k1", KlEstimator::K1),
        ("k2", KlEstimator::K2),
        ("k3", KlEstimator::K3),
    ] {
        let want = rows(&f["kl"][name]);
        for i in 0..logps.len() {
            for t in 0..logps[i].len() {
                close(kl_value(logps[i][t], refs[i][t], est), want[i][t], name);
            }
        }
    }
}
