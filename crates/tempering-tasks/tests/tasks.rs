//! Properties of the built-in task families: verifiers accept reference solutions and reject corrupted
//! ones, countdown judges by evaluation, generation is deterministic and splits never overlap.

use proptest::prelude::*;
use tempering_tasks::arithmetic::ArithmeticParams;
use tempering_tasks::base::BaseParams;
use tempering_tasks::countdown::CountdownParams;
use tempering_tasks::expr::{self, Expr, Op};
use tempering_tasks::{
    check_disjoint, check_records, generate, list_tasks, problem_from_record, records,
    task_by_name, write_jsonl, GenerateSpec, Problem, Spec, Split, SplitMix64, TaskError,
    TaskRecord, Verdict, ANSWER_MARKER, STEP_SEPARATOR,
};

/// A (task index, level, seed) triple covering every family and level.
fn any_problem() -> impl Strategy<Value = Problem> {
    (0usize..3, any::<u32>(), any::<u64>()).prop_map(|(t, l, seed)| {
        let task = &list_tasks()[t];
        let levels = task.levels();
        let level = levels.start() + l % (levels.end() - levels.start() + 1);
        task.sample(level, &mut SplitMix64::new(seed)).unwrap()
    })
}

fn countdown_problem() -> impl Strategy<Value = Problem> {
    (1u32..=3, any::<u64>()).prop_map(|(level, seed)| {
        task_by_name("countdown")
            .unwrap()
            .sample(level, &mut SplitMix64::new(seed))
            .unwrap()
    })
}

fn verify(p: &Problem, text: &str) -> Verdict {
    task_by_name(&p.task).unwrap().verify(p, text)
}

/// Mirrors every + and * node: same value, operands in another order.
fn commute(e: &Expr) -> Expr {
    match e {
        Expr::Num(n) => Expr::Num(*n),
        Expr::Bin { op, left, right } => {
            let (l, r) = (commute(left), commute(right));
            match op {
                Op::Add | Op::Mul => Expr::bin(*op, r, l),
                _ => Expr::bin(*op, l, r),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn reference_solutions_verify(p in any_problem()) {
        prop_assert_eq!(verify(&p, &p.solution), Verdict::Correct);
        prop_assert_eq!(verify(&p, &format!("{ANSWER_MARKER}{}", p.answer)), Verdict::Correct);
        // Without the marker the last line is the answer.
        prop_assert_eq!(verify(&p, &format!("some thoughts\n{}\n", p.answer)), Verdict::Correct);
    }

    #[test]
    fn solutions_are_true_steps_then_the_answer(p in any_problem()) {
        let lines: Vec<&str> = p.solution.split(STEP_SEPARATOR).collect();
        prop_assert!(lines.len() >= 2);
        let expected_last = format!("{ANSWER_MARKER}{}", p.answer);
        prop_assert_eq!(*lines.last().unwrap(), expected_last.as_str());
        for step in &lines[..lines.len() - 1] {
            // Every step holds: `a op b=c`, or for bases `v: q*b=p v-p=r` with `r < b`.
            if let Spec::BaseConversion { base, .. } = p.spec {
                let (v, rest) = step.split_once(": ").unwrap();
                let (product, subtraction) = rest.split_once(' ').unwrap();
                let v = v.parse::<i64>().unwrap();
                let (qb, pr) = product.split_once('=').unwrap();
                let pr = pr.parse::<i64>().unwrap();
                prop_assert_eq!(expr::parse(qb).unwrap().eval().unwrap(), pr, "step {:?}", step);
                let (diff, rem) = subtraction.split_once('=').unwrap();
                prop_assert_eq!(diff.to_string(), format!("{v}-{pr}"), "step {:?}", step);
                let rem = rem.parse::<i64>().unwrap();
                prop_assert_eq!(v - pr, rem, "step {:?}", step);
                prop_assert!((0..i64::from(base)).contains(&rem), "step {:?}", step);
                continue;
            }
            let (lhs, rhs) = step.split_once('=').unwrap();
            let (l, r) = (expr::parse(lhs).unwrap().eval().unwrap(), rhs.parse::<i64>().unwrap());
            prop_assert_eq!(l, r, "step {:?}", step);
        }
        let alphabet = task_by_name(&p.task).unwrap().alphabet();
        for c in p.prompt.chars().chain(p.solution.chars()) {
            prop_assert!(alphabet.contains(&c), "{:?} not in the alphabet of {}", c, p.task);
        }
    }

    #[test]
    fn corrupted_answers_are_rejected(p in any_problem(), delta in 1i64..1000, sign in any::<bool>()) {
        let delta = if sign { delta } else { -delta };
        let wrong = match &p.spec {
            Spec::Arithmetic { expr } => (expr.eval().unwrap() + delta).to_string(),
            Spec::BaseConversion { value, base } => {
                let v = (*value as i64 + delta).max(0) as u64;
                prop_assume!(v != *value);
                to_base(v, *base)
            }
            Spec::Countdown { target, .. } => {
                // Swap one operator of the reference for another: unless that happens to reach the target
                // too, the answer is wrong (or has a non-integer step, which is wrong as well).
                let ops: Vec<usize> = p.answer.char_indices().filter(|(_, c)| "+-*/".contains(*c)).map(|(i, _)| i).collect();
                let at = ops[delta.unsigned_abs() as usize % ops.len()];
                let old = p.answer.as_bytes()[at] as char;
                let new = "+-*/".chars().filter(|&c| c != old).nth(delta.unsigned_abs() as usize % 3).unwrap();
                let mut wrong = p.answer.clone();
                wrong.replace_range(at..at + 1, &new.to_string());
                prop_assume!(expr::parse(&wrong).unwrap().eval() != Ok(*target));
                wrong
            }
            _ => unreachable!(),
        };
        prop_assert_eq!(verify(&p, &format!("work\nAnswer: {wrong}")), Verdict::Incorrect);
        prop_assert_eq!(verify(&p, "work\nAnswer: banana"), Verdict::Unparseable);
        prop_assert_eq!(verify(&p, ""), Verdict::Unparseable);
    }

    #[test]
    fn problems_round_trip_through_records(p in any_problem()) {
        let r = TaskRecord::from_problem(&p, 7, 0);
        let back = problem_from_record(&r).unwrap();
        prop_assert_eq!(back, p);
    }

    #[test]
    fn countdown_accepts_any_correct_expression(p in countdown_problem()) {
        let e = expr::parse(&p.answer).unwrap();
        let commuted = commute(&e);
        prop_assert_eq!(verify(&p, &format!("Answer: {commuted}")), Verdict::Correct);
        prop_assert_eq!(verify(&p, &format!("Answer: {commuted}={}", e.eval().unwrap())), Verdict::Correct);
        prop_assert_eq!(verify(&p, &format!("Answer: ( {} )", p.answer.replace('+', " + "))), Verdict::Correct);
    }

    #[test]
    fn countdown_judges_random_expressions_by_evaluation(p in countdown_problem(), seed in any::<u64>()) {
        let Spec::Countdown { numbers, target } = &p.spec else { unreachable!() };
        // A random expression over a random sub-multiset of the numbers: correct exactly when it evaluates
        // to the target.
        let mut rng = SplitMix64::new(seed);
        let mut pool: Vec<Expr> = numbers.iter().map(|&n| Expr::Num(n)).collect();
        rng.shuffle(&mut pool);
        let k = rng.range(1, pool.len() as u64) as usize;
        pool.truncate(k);
        while pool.len() > 1 {
            let a = pool.pop().unwrap();
            let b = pool.pop().unwrap();
            pool.push(Expr::bin(*rng.choose(&Op::ALL), a, b));
        }
        let e = pool.pop().unwrap();
        let want = if e.eval() == Ok(*target) { Verdict::Correct } else { Verdict::Incorrect };
        prop_assert_eq!(verify(&p, &format!("Answer: {e}")), want);
    }

    #[test]
    fn countdown_rejects_reused_numbers(p in countdown_problem()) {
        let Spec::Countdown { numbers, .. } = &p.spec else { unreachable!() };
        let e = expr::parse(&p.answer).unwrap();
        let x = e.leaves()[0];
        let copies = numbers.iter().filter(|&&n| n == x).count();
        // Adding and taking away x keeps the value but uses x more often than it is given.
        let padded = format!("{}{}", p.answer, format!("+{x}-{x}").repeat(copies));
        prop_assert_eq!(expr::parse(&padded).unwrap().eval().unwrap(), e.eval().unwrap());
        prop_assert_eq!(verify(&p, &format!("Answer: {padded}")), Verdict::Incorrect);
        // A number not on the list at all.
        let absent = (1..).find(|n| !numbers.contains(n)).unwrap();
        prop_assert_eq!(verify(&p, &format!("Answer: {}*{absent}/{absent}", p.answer)), Verdict::Incorrect);
    }

    #[test]
    fn printed_expressions_parse_back_to_the_same_tree(p in any_problem()) {
        if let Spec::Arithmetic { expr: e } = &p.spec {
            prop_assert_eq!(&expr::parse(&e.to_string()).unwrap(), e);
        }
        if let Spec::Countdown { .. } = &p.spec {
            let e = expr::parse(&p.answer).unwrap();
            prop_assert_eq!(e.to_string(), p.answer.clone());
        }
    }

    #[test]
    fn generation_is_deterministic_and_splits_are_disjoint(t in 0usize..3, seed in any::<u64>(), level_pick in any::<u32>()) {
        let task = &list_tasks()[t];
        let levels = task.levels();
        let level = levels.start() + level_pick % (levels.end() - levels.start() + 1);
        let spec = |split| GenerateSpec { level, n: 40, seed, split, unique: false };
        let train = generate(task.as_ref(), &spec(Split::Train)).unwrap();
        let again = generate(task.as_ref(), &spec(Split::Train)).unwrap();
        prop_assert_eq!(&train, &again);
        let test = generate(task.as_ref(), &spec(Split::Test)).unwrap();
        prop_assert!(train.iter().all(|p| p.split == Split::Train && p.level == level));
        prop_assert!(test.iter().all(|p| p.split == Split::Test));
        prop_assert!(test.iter().all(|q| train.iter().all(|p| p.prompt != q.prompt)));
        check_disjoint(&train, &test).unwrap();
        // Moving a train problem into the test set must be caught.
        let mut leaked = test.clone();
        leaked.push(train[0].clone());
        prop_assert!(check_disjoint(&train, &leaked).is_err());
    }
}

fn to_base(mut v: u64, base: u32) -> String {
    let mut d = Vec::new();
    loop {
        d.push(char::from(b'0' + (v % u64::from(base)) as u8));
        v /= u64::from(base);
        if v == 0 {
            break;
        }
    }
    d.iter().rev().collect()
}

#[test]
fn different_seeds_give_different_sets() {
    let task = task_by_name("arithmetic").unwrap();
    let spec = |seed| GenerateSpec {
        level: 3,
        n: 20,
        seed,
        split: Split::Train,
        unique: false,
    };
    let a = generate(task.as_ref(), &spec(1)).unwrap();
    let b = generate(task.as_ref(), &spec(2)).unwrap();
    assert_ne!(a, b);
}

#[test]
fn unique_sets_have_no_repeats_and_small_spaces_run_out_with_a_clear_error() {
    let task = task_by_name("arithmetic").unwrap();
    let mut spec = GenerateSpec {
        level: 2,
        n: 15,
        seed: 3,
        split: Split::Test,
        unique: true,
    };
    let set = generate(task.as_ref(), &spec).unwrap();
    let prompts: std::collections::HashSet<_> = set.iter().map(|p| &p.prompt).collect();
    assert_eq!(prompts.len(), set.len());
    // Level 1 has at most 9*9*3 problems, a tenth of them test: 1000 unique test problems cannot exist.
    spec.level = 1;
    spec.n = 1000;
    let err = generate(task.as_ref(), &spec).unwrap_err();
    assert!(
        matches!(err, TaskError::Exhausted { wanted: 1000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("unique"), "{err}");
}

#[test]
fn impossible_parameters_are_refused() {
    let arith = task_by_name("arithmetic").unwrap();
    let err = generate(
        arith.as_ref(),
        &GenerateSpec {
            level: 1,
            n: 0,
            seed: 0,
            split: Split::Train,
            unique: false,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("`n`"), "{err}");
    for t in list_tasks() {
        let top = *t.levels().end();
        for level in [0, top + 1] {
            let err = t.sample(level, &mut SplitMix64::new(0)).unwrap_err();
            assert!(
                matches!(err, TaskError::LevelOutOfRange { level: l, max, .. } if l == level && max == top),
                "{err}"
            );
        }
        assert!(t.levels().contains(&t.default_level()));
        assert!(!t.description().is_empty());
    }
    let zero_ops = ArithmeticParams {
        operations: 0,
        max_operand: 9,
        max_value: 100,
    };
    assert!(zero_ops
        .validate()
        .unwrap_err()
        .to_string()
        .contains("zero operations"));
    let zero_given = CountdownParams {
        given: 0,
        used: 0,
        max_number: 10,
        max_target: 100,
    };
    assert!(zero_given
        .validate()
        .unwrap_err()
        .to_string()
        .contains("`given`"));
    let too_many_used = CountdownParams {
        given: 3,
        used: 4,
        max_number: 10,
        max_target: 100,
    };
    assert!(too_many_used
        .validate()
        .unwrap_err()
        .to_string()
        .contains("`used`"));
    let zero_digits = BaseParams {
        min_base: 2,
        max_base: 9,
        digits: 0,
    };
    assert!(zero_digits
        .validate()
        .unwrap_err()
        .to_string()
        .contains("`digits`"));
    let base_one = BaseParams {
        min_base: 1,
        max_base: 9,
        digits: 3,
    };
    assert!(base_one.validate().is_err());
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let err = task_by_name("sudoku").err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("sudoku"));
    for t in list_tasks() {
        assert!(msg.contains(t.name()), "{msg}");
    }
}

#[test]
fn records_round_trip_through_jsonl_and_the_split_check_catches_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("countdown.jsonl");
    let task = task_by_name("countdown").unwrap();
    let mut all = Vec::new();
    for split in [Split::Train, Split::Test] {
        let spec = GenerateSpec {
            level: 3,
            n: 25,
            seed: 11,
            split,
            unique: true,
        };
        all.extend(records(&generate(task.as_ref(), &spec).unwrap(), 11));
    }
    write_jsonl(&path, &all).unwrap();
    let rows = tempering_tasks::dataset::read_jsonl(&path).unwrap();
    assert_eq!(rows.len(), 50);
    for key in [
        "prompt",
        "completion",
        "answer",
        "task",
        "level",
        "split",
        "id",
    ] {
        assert!(rows[0].contains_key(key), "missing {key}");
    }
    let back: Vec<TaskRecord> = rows
        .into_iter()
        .map(|r| serde_json::from_value(serde_json::Value::Object(r)).unwrap())
        .collect();
    assert_eq!(back, all);
    check_records(&back).unwrap();
    // The same file feeds SFT as prompt-completion rows.
    let sft = tempering_tasks::dataset::load_sft(&path).unwrap();
    assert!(matches!(
        sft[0],
        tempering_tasks::dataset::SftExample::PromptCompletion { .. }
    ));

    let mut tampered = back.clone();
    tampered[0].split = Split::Test;
    assert!(check_records(&tampered).is_err());
    let mut dup = back.clone();
    let mut copy = dup[0].clone();
    copy.split = Split::Test;
    copy.id = "copy".into();
    dup.push(copy);
    assert!(check_records(&dup).is_err());
}

#[test]
fn records_with_a_wrong_reference_answer_are_refused() {
    let p = task_by_name("base-conversion")
        .unwrap()
        .sample(3, &mut SplitMix64::new(5))
        .unwrap();
    let mut r = TaskRecord::from_problem(&p, 0, 0);
    r.answer = "9".into();
    assert!(problem_from_record(&r).is_err());
    let mut r = TaskRecord::from_problem(&p, 0, 0);
    r.prompt = "Convert lots to base 2:\n".into();
    let err = problem_from_record(&r).unwrap_err();
    assert!(err.to_string().contains("Convert lots"), "{err}");
}
