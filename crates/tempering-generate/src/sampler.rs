//! Picking the next token from one row of logits: greedy, or sampling after temperature, top-k,
//! top-p and min-p, with a small seeded generator per sample. Knows nothing of tensors, models,
//! batches or stop rules: a row of `f32` logits in, a token id out.

use std::cmp::Ordering;

use crate::request::SamplingParams;

/// SplitMix64: tiny, fast, and fixed here so that seeded results do not change with a dependency's
/// version.
#[derive(Clone, Debug)]
pub struct SampleRng(u64);

impl SampleRng {
    /// The stream of sample `sample` of a request seeded with `seed`: depends on nothing else.
    pub fn for_sample(seed: u64, sample: usize) -> Self {
        let mut r = SampleRng(seed ^ 0x6A09_E667_F3BC_C909);
        let a = r.next_u64();
        let mut r = SampleRng(a ^ (sample as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The first index of the largest value (NaNs never win), as `torch.argmax` picks.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// Most likely first; equal values by smaller id, so the order is total and deterministic.
fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Puts the `k` largest entries of `c`, sorted, at its front.
fn sort_front(c: &mut [(u32, f32)], k: usize) {
    let k = k.min(c.len());
    if k == 0 {
        return;
    }
    if k < c.len() {
        c.select_nth_unstable_by(k - 1, by_value_desc);
    }
    c[..k].sort_unstable_by(by_value_desc);
}

/// The `k` largest entries of `row` with their ids, largest first.
pub fn top_n(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut c: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    sort_front(&mut c, k);
    c.truncate(k);
    c
}

/// The next token for one row of raw logits under `p`, drawing one uniform from `rng` unless
/// greedy.
pub fn sample(row: &[f32], p: &SamplingParams, rng: &mut SampleRng) -> u32 {
    if p.is_greedy() || row.len() < 2 {
        return argmax(row);
    }
    let inv_t = 1.0 / p.temperature;
    // Candidates hold (id, unnormalised probability) once the max is subtracted.
    let mut c: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .map(|(i, &v)| (i as u32, v * inv_t))
        .collect();
    if c.is_empty() {
        return argmax(row);
    }
    let mut sorted = 0; // how many of c's front entries are known sorted, largest first
    if p.top_k > 0 && p.top_k < c.len() {
        sort_front(&mut c, p.top_k);
        c.truncate(p.top_k);
        sorted = c.len();
    }
    let m = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    for x in c.iter_mut() {
        x.1 = (x.1 - m).exp();
    }
    let total: f64 = c.iter().map(|x| x.1 as f64).sum();
    if p.top_p < 1.0 {
        // Sort a growing prefix until it holds top_p of the mass: exact, without sorting the
        // whole vocabulary on every step.
        let target = p.top_p as f64 * total;
        let mut k = 64usize;
        loop {
            if sorted < k.min(c.len()) {
                sort_front(&mut c, k);
                sorted = k.min(c.len());
            }
            let mut acc = 0f64;
            let mut cut = None;
            for (i, x) in c[..sorted].iter().enumerate() {
                acc += x.1 as f64;
                if acc >= target {
                    cut = Some(i + 1);
                    break;
                }
            }
            match cut {
                Some(n) => {
                    c.truncate(n);
                    break;
                }
                None if sorted == c.len() => break,
                None => k *= 4,
            }
        }
    }
    if p.min_p > 0.0 {
        // The max is 1 after subtracting it (the top token survives every filter above).
        let thr = p.min_p;
        c.retain(|x| x.1 >= thr);
    }
    let mass: f64 = c.iter().map(|x| x.1 as f64).sum();
    let mut u = rng.uniform() * mass;
    for x in &c {
        u -= x.1 as f64;
        if u < 0.0 {
            return x.0;
        }
    }
    // Rounding left u >= 0 after the last candidate: take the last one with any mass.
    c.iter().rev().find(|x| x.1 > 0.0).map_or(c[0].0, |x| x.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    fn frequencies(row: &[f32], p: &SamplingParams, draws: usize) -> Vec<f64> {
        let mut rng = SampleRng::for_sample(7, 0);
        let mut n = vec![0usize; row.len()];
        for _ in 0..draws {
            n[sample(row, p, &mut rng) as usize] += 1;
        }
        n.into_iter().map(|c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        let mut rng = SampleRng::for_sample(0, 0);
        assert_eq!(
            sample(&[0.0, 5.0, 1.0], &SamplingParams::greedy(1), &mut rng),
            1
        );
    }

    #[test]
    fn sampling_follows_softmax_probabilities() {
        let row = [0f32, 1f32.ln(), 2f32.ln(), 3f32.ln()]; // probs 1/7, 1/7, 2/7, 3/7
        let f = frequencies(&row, &SamplingParams::default(), 70_000);
        for (got, want) in f.iter().zip([1.0, 1.0, 2.0, 3.0]) {
            assert!((got - want / 7.0).abs() < 0.01, "{f:?}");
        }
    }

    #[test]
    fn filters_remove_the_tokens_they_should() {
        let row = [0f32, 1f32.ln(), 2f32.ln(), 4f32.ln()]; // probs 1/8, 1/8, 2/8, 4/8
        let f = frequencies(&row, &params(|p| p.top_k = 2), 20_000);
        assert_eq!((f[0], f[1]), (0.0, 0.0));
        assert!((f[3] - 2.0 / 3.0).abs() < 0.02, "{f:?}");
        // top_p 0.7: 4/8 is not enough, 4/8 + 2/8 is.
        let f = frequencies(&row, &params(|p| p.top_p = 0.7), 20_000);
        assert_eq!((f[0], f[1]), (0.0, 0.0));
        // min_p 0.3: tokens under 0.3 * 4/8 go.
        let f = frequencies(&row, &params(|p| p.min_p = 0.3), 20_000);
        assert_eq!((f[0], f[1]), (0.0, 0.0));
        assert!(f[2] > 0.2);
        // Low temperature sharpens towards the top token.
        let f = frequencies(&row, &params(|p| p.temperature = 0.05), 5_000);
        assert!(f[3] > 0.999, "{f:?}");
    }

    #[test]
    fn top_p_over_a_large_vocabulary_grows_its_sorted_prefix() {
        // 1000 equal tokens: top_p 0.5 must keep exactly 500 of them.
        let row = vec![0f32; 1000];
        let f = frequencies(&row, &params(|p| p.top_p = 0.5), 50_000);
        assert_eq!(f.iter().filter(|&&x| x > 0.0).count(), 500);
        assert!(
            f[..500].iter().all(|&x| x > 0.0),
            "ties go to the smaller ids"
        );
    }

    #[test]
    fn streams_depend_on_seed_and_sample_only() {
        let a: Vec<u64> = (0..4)
            .map(|_| SampleRng::for_sample(1, 2).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            SampleRng::for_sample(1, 2).next_u64(),
            SampleRng::for_sample(1, 3).next_u64()
        );
        assert_ne!(
            SampleRng::for_sample(1, 2).next_u64(),
            SampleRng::for_sample(2, 2).next_u64()
        );
    }

    #[test]
    fn top_n_is_sorted() {
        assert_eq!(
            top_n(&[0.1, 0.5, 0.3, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.3)]
        );
    }
}
