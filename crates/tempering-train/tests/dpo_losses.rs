//! Every preference loss against TRL's own implementation (fixtures/dpo/losses.json, made by
//! scripts/reference/dpo_fixtures.py): loss and logged metrics to 1e-6, from the same per-token
//! log-probs. Plus the closed forms: at initialisation (reference = policy) the sigmoid loss is log 2
//! and the rewards are zero; gradients flow to the policy's log-probs.

use candle_core::{Device, Tensor, Var};
use serde_json::Value;
use tempering_train::dpo::{
    kto_loss, pair_loss, KtoParams, LossParams, PairLogps, PreferenceLoss, UnpairedLogps,
};

fn fixtures() -> Vec<Value> {
    let path = tempering_model::known::fixtures_dir().join("dpo/losses.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
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

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn sums(r: &[Vec<f64>]) -> Tensor {
    let s: Vec<f64> = r.iter().map(|x| x.iter().sum()).collect();
    Tensor::from_vec(s, r.len(), &Device::Cpu).unwrap()
}

fn close(name: &str, key: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{name}: {key} = {got}, TRL {want}"
    );
}

fn check_metrics(name: &str, expected: &Value, loss: f64, metrics: &[(String, f64)], n: f64) {
    let exp = expected.as_object().unwrap();
    close(name, "loss", loss, exp["loss"].as_f64().unwrap());
    for (k, want) in exp {
        // TRL's CPO logs an NLL of 0 when it does not add one (cpo_alpha = 0); here it is the NLL.
        if k == "loss" || (k == "nll_loss" && want.as_f64() == Some(0.0)) {
            continue;
        }
        let got = metrics
            .iter()
            .find(|(m, _)| m == k)
            .map(|(_, v)| v / n)
            .unwrap_or_else(|| panic!("{name}: metric {k} not reported"));
        close(name, k, got, want.as_f64().unwrap());
    }
}

#[test]
fn paired_losses_match_trl() {
    let mut seen = Vec::new();
    for case in fixtures().iter().filter(|c| c["loss_type"] != "kto") {
        let name = case["name"].as_str().unwrap();
        let loss: PreferenceLoss = case["loss_type"].as_str().unwrap().parse().unwrap();
        let params = LossParams {
            loss,
            beta: case["beta"].as_f64().unwrap(),
            label_smoothing: case["label_smoothing"].as_f64().unwrap_or(0.0),
            simpo_gamma: case["simpo_gamma"].as_f64().unwrap_or(0.0),
            rpo_alpha: if loss == PreferenceLoss::Orpo {
                0.0
            } else {
                case["rpo_alpha"].as_f64().unwrap()
            },
        };
        let c = rows(&case["chosen_token_logps"]);
        let r = rows(&case["rejected_token_logps"]);
        let reference = loss.needs_reference().then(|| {
            (
                floats(&case["ref_chosen_logps"]),
                floats(&case["ref_rejected_logps"]),
            )
        });
        let x = PairLogps {
            chosen: sums(&c),
            rejected: sums(&r),
            chosen_len: c.iter().map(|v| v.len()).collect(),
            rejected_len: r.iter().map(|v| v.len()).collect(),
            reference,
            chosen_sequence: (loss == PreferenceLoss::Orpo).then(|| {
                let full = rows(&case["chosen_sequence_token_logps"]);
                let n = full.iter().map(|r| r.len()).sum();
                (sums(&full), n)
            }),
        };
        let out = pair_loss(&params, &x).unwrap();
        let n = out.pairs as f64;
        let total = out.loss_sum.to_scalar::<f64>().unwrap() / n;
        check_metrics(name, &case["expected"], total, &out.metrics, n);
        seen.push(loss);
    }
    for l in PreferenceLoss::ALL {
        assert!(seen.contains(&l), "no fixture for {l}");
    }
}

#[test]
fn kto_matches_trl() {
    let cases: Vec<Value> = fixtures()
        .into_iter()
        .filter(|c| c["loss_type"] == "kto")
        .collect();
    assert!(cases.len() >= 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let params = KtoParams {
            beta: case["beta"].as_f64().unwrap(),
            desirable_weight: case["desirable_weight"].as_f64().unwrap(),
            undesirable_weight: case["undesirable_weight"].as_f64().unwrap(),
        };
        let lp = rows(&case["token_logps"]);
        let kl = rows(&case["kl_token_logps"]);
        let x = UnpairedLogps {
            logps: sums(&lp),
            desirable: case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_bool().unwrap())
                .collect(),
            reference: floats(&case["ref_logps"]),
            kl_policy: kl.iter().map(|v| v.iter().sum()).collect(),
            kl_reference: floats(&case["ref_kl_logps"]),
        };
        let out = kto_loss(&params, &x).unwrap();
        let n = out.examples as f64;
        let total = out.loss_sum.to_scalar::<f64>().unwrap() / n;
        check_metrics(name, &case["expected"], total, &out.metrics, n);
    }
}

#[test]
fn at_initialisation_the_sigmoid_loss_is_log_2_and_rewards_are_zero() {
    let policy = Var::new(&[-3.5f32, -7.25, -1.0], &Device::Cpu).unwrap();
    let rejected = Var::new(&[-2.0f32, -9.0, -4.5], &Device::Cpu).unwrap();
    let as_f64 = |t: &Var| {
        t.as_tensor()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    for loss in [
        PreferenceLoss::Sigmoid,
        PreferenceLoss::Robust,
        PreferenceLoss::Ipo,
    ] {
        let mut params = LossParams::new(loss, 0.1);
        params.label_smoothing = 0.2;
        let x = PairLogps {
            chosen: policy.as_tensor().clone(),
            rejected: rejected.as_tensor().clone(),
            chosen_len: vec![2, 3, 1],
            rejected_len: vec![1, 4, 2],
            reference: Some((as_f64(&policy), as_f64(&rejected))),
            chosen_sequence: None,
        };
        let out = pair_loss(&params, &x).unwrap();
        let mean = out.loss_sum.to_scalar::<f64>().unwrap() / 3.0;
        match loss {
            // Robust DPO at delta = 0: ((1 - e) log 2 - e log 2) / (1 - 2e) = log 2.
            PreferenceLoss::Sigmoid | PreferenceLoss::Robust => {
                assert!(
                    (mean - std::f64::consts::LN_2).abs() < 1e-12,
                    "{loss}: {mean}"
                )
            }
            // IPO at delta = 0: (1 / (2 beta))^2.
            _ => assert!((mean - 25.0).abs() < 1e-9, "{loss}: {mean}"),
        }
        assert!(out
            .chosen_rewards
            .iter()
            .chain(&out.rejected_rewards)
            .all(|&r| r == 0.0));
        // The gradient of the sigmoid loss at delta = 0 is -beta / 2 per chosen log-prob.
        if loss == PreferenceLoss::Sigmoid {
            let g = out.loss_sum.backward().unwrap();
            let gc = g.get(policy.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            let gr = g
                .get(rejected.as_tensor())
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (c, r) in gc.iter().zip(&gr) {
                assert!(
                    (c + 0.05).abs() < 1e-7 && (r - 0.05).abs() < 1e-7,
                    "{c} {r}"
                );
            }
        }
    }
}
