//! Ensembles: aggregates and disagreement on hand-computed member scores, for whole completions
//! and for steps.

use proptest::prelude::*;
use tempering_reward::ensemble::disagreement_metrics;
use tempering_reward::{
    Aggregate, Ensemble, EnsembleScore, ScoreInput, Scored, StepEnsemble, StepScorer, Verifier,
};

/// A scorer that returns a fixed score per completion text (its length times `scale` plus `shift`),
/// judging correctness when asked to.
struct Fake {
    scale: f64,
    shift: f64,
    judges: Option<bool>,
}

impl Verifier for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn score(&self, input: &ScoreInput<'_>) -> tempering_reward::Result<Scored> {
        Ok(Scored {
            score: self.scale * input.completion.len() as f64 + self.shift,
            correct: self.judges,
        })
    }
}

impl StepScorer for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn score_steps(&self, _prompt: &str, steps: &[&str]) -> tempering_reward::Result<Vec<f64>> {
        Ok(steps
            .iter()
            .map(|s| self.scale * s.len() as f64 + self.shift)
            .collect())
    }
}

fn fake(scale: f64, shift: f64) -> Box<Fake> {
    Box::new(Fake {
        scale,
        shift,
        judges: None,
    })
}

#[test]
fn aggregates_match_hand_computed_values() {
    // Members score 1, 2, 6: mean 3, population variance (4 + 1 + 9) / 3 = 14/3.
    let members =
        || -> Vec<Box<dyn Verifier>> { vec![fake(0.0, 1.0), fake(0.0, 2.0), fake(0.0, 6.0)] };
    let input = ScoreInput::new("q", "abc");
    let std = (14.0f64 / 3.0).sqrt();
    for (agg, want) in [
        (Aggregate::Mean, 3.0),
        (Aggregate::Min, 1.0),
        (Aggregate::MeanMinusStd { k: 1.0 }, 3.0 - std),
        (Aggregate::MeanMinusStd { k: 0.5 }, 3.0 - 0.5 * std),
    ] {
        let e = Ensemble::new(members(), agg).unwrap();
        let s = e.score(&input).unwrap();
        assert!(
            (s.score - want).abs() < 1e-12,
            "{agg}: {} vs {want}",
            s.score
        );
        assert_eq!(s.correct, None);
        let d = &e.score_detailed(&[input]).unwrap()[0];
        assert_eq!(d.members, vec![1.0, 2.0, 6.0]);
        assert!((d.std - std).abs() < 1e-12 && d.mean == 3.0 && d.min == 1.0 && d.max == 6.0);
    }
}

#[test]
fn disagreement_grows_where_members_diverge_and_is_reported_per_batch() {
    // Members agree on short completions and diverge on long ones.
    let e = Ensemble::new(
        vec![fake(1.0, 0.0), fake(-1.0, 0.0)],
        Aggregate::MeanMinusStd { k: 1.0 },
    )
    .unwrap();
    let inputs = [ScoreInput::new("q", ""), ScoreInput::new("q", "abcd")];
    let d = e.score_detailed(&inputs).unwrap();
    assert_eq!((d[0].std, d[1].std), (0.0, 4.0));
    assert_eq!(d[1].score, -4.0);
    let m = disagreement_metrics(&d);
    assert_eq!(m, vec![("ensemble/std", 2.0), ("ensemble/range", 4.0)]);
}

#[test]
fn correctness_is_reported_only_when_all_members_agree() {
    let judge = |c| {
        Box::new(Fake {
            scale: 0.0,
            shift: 0.0,
            judges: c,
        }) as Box<dyn Verifier>
    };
    let input = ScoreInput::new("q", "x");
    let verdict = |a, b| {
        Ensemble::new(vec![judge(a), judge(b)], Aggregate::Mean)
            .unwrap()
            .score(&input)
            .unwrap()
            .correct
    };
    assert_eq!(verdict(Some(true), Some(true)), Some(true));
    assert_eq!(verdict(Some(false), Some(false)), Some(false));
    assert_eq!(verdict(Some(true), Some(false)), None);
    assert_eq!(verdict(Some(true), None), None);
}

#[test]
fn step_ensembles_aggregate_each_step() {
    let e = StepEnsemble::new(vec![fake(0.1, 0.0), fake(0.1, 0.2)], Aggregate::Min).unwrap();
    let got = e.score_steps("q", &["ab", "abcd"]).unwrap();
    assert!(
        (got[0] - 0.2).abs() < 1e-12 && (got[1] - 0.4).abs() < 1e-12,
        "{got:?}"
    );
    let d = e
        .score_steps_detailed(&[("q", vec!["ab", "abcd"])])
        .unwrap();
    assert!((d[0][1].std - 0.1).abs() < 1e-12);
    // Clamped to [0, 1] as a step scorer promises.
    let wide = StepEnsemble::new(vec![fake(1.0, 0.0)], Aggregate::Mean).unwrap();
    assert_eq!(wide.score_steps("q", &["abc"]).unwrap(), vec![1.0]);
}

#[test]
fn bad_ensembles_and_aggregates_are_errors() {
    assert!(Ensemble::new(vec![], Aggregate::Mean).is_err());
    for (text, want) in [
        ("mean", Aggregate::Mean),
        ("min", Aggregate::Min),
        ("mean-std", Aggregate::MeanMinusStd { k: 1.0 }),
        ("mean-0.5std", Aggregate::MeanMinusStd { k: 0.5 }),
    ] {
        assert_eq!(Aggregate::parse(text).unwrap(), want);
        assert_eq!(Aggregate::parse(&want.to_string()).unwrap(), want);
    }
    let err = Aggregate::parse("median").unwrap_err().to_string();
    assert!(err.contains("median") && err.contains("mean-std"), "{err}");
    assert!(Aggregate::parse("mean--1std").is_err());
}

proptest! {
    /// Every aggregate lies at or below the mean, min <= mean <= max, and agreeing members have no
    /// spread.
    #[test]
    fn aggregates_are_conservative(xs in prop::collection::vec(-10.0f64..10.0, 1..6), k in 0.0f64..3.0) {
        let s = EnsembleScore::of(xs.clone(), Aggregate::MeanMinusStd { k });
        prop_assert!(s.min <= s.mean + 1e-12 && s.mean <= s.max + 1e-12);
        prop_assert!(s.score <= s.mean + 1e-12);
        prop_assert!(EnsembleScore::of(xs.clone(), Aggregate::Min).score <= s.mean + 1e-12);
        prop_assert!(s.std >= 0.0);
        if xs.iter().all(|&x| x == xs[0]) {
            prop_assert!(s.std.abs() < 1e-9);
        }
    }
}
