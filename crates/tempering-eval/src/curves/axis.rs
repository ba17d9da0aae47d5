//! The numbers around a plot: smoothing of noisy curves (EMA, moving mean), axis ticks (powers of
//! two on a log axis, 1-2-2.5-5 steps on a linear one), the domain a log axis shows, and labels in
//! plain numbers; plus the SVG text helpers (escaping, a rough text width). Knows nothing of SVG
//! layout or of what is plotted.

/// The exponential moving average of `ys` with weight `w` on the past, bias-corrected.
pub fn ema(ys: &[f64], w: f64) -> Vec<f64> {
    let w = w.clamp(0.0, 0.999_999);
    let mut s = 0.0;
    let mut wt = 1.0;
    ys.iter()
        .map(|&y| {
            s = w * s + (1.0 - w) * y;
            wt *= w;
            s / (1.0 - wt)
        })
        .collect()
}

/// The centred moving average of `ys` over `window` points (shrinking at the ends).
pub fn moving_mean(ys: &[f64], window: usize) -> Vec<f64> {
    let half = window.max(1) / 2;
    (0..ys.len())
        .map(|i| {
            let a = i.saturating_sub(half);
            let b = (i + half + 1).min(ys.len());
            ys[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

/// A plain-number label for a value on a count axis: `16`, `1024`, `65536`, `1.5M`.
pub fn count_label(v: f64) -> String {
    if v.abs() >= 1e6 {
        trim_zeros(format!("{:.1}", v / 1e6)) + "M"
    } else if v.abs() >= 1.0 || v == 0.0 {
        format!("{}", v.round() as i64)
    } else {
        trim_zeros(format!("{v:.3}"))
    }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Ticks of a log axis over [lo, hi] (0 < lo < hi): the powers of two inside, every k-th one so
/// that at most `max` show. When fewer than two powers fall inside, the domain is widened out to
/// the powers of two around it. Returns (domain, ticks).
pub fn log_ticks(lo: f64, hi: f64, max: usize) -> ((f64, f64), Vec<f64>) {
    let (a, b) = (lo.log2(), hi.log2());
    let (mut first, mut last) = (a.ceil() as i32, b.floor() as i32);
    let mut domain = (lo, hi);
    if last - first < 1 {
        (first, last) = (
            a.floor() as i32,
            (b.ceil() as i32).max(a.floor() as i32 + 1),
        );
        domain = (2f64.powi(first), 2f64.powi(last));
    }
    let span = (last - first) as usize;
    let stride = span.div_ceil(max.max(2) - 1).max(1);
    let ticks = (first..=last)
        .step_by(stride)
        .map(|e| 2f64.powi(e))
        .collect();
    (domain, ticks)
}

/// The shown range of a log axis whose data spans [x0, x1]: a margin of a factor 1.4, widened to
/// the power of two just outside when that is near (within a factor 1.6), so the end points sit
/// between labelled ticks.
pub fn log_domain(x0: f64, x1: f64) -> (f64, f64) {
    let below = 2f64.powf(x0.log2().floor());
    let above = 2f64.powf(x1.log2().ceil());
    let lo = if below >= x0 / 1.6 {
        below.min(x0 / 1.4)
    } else {
        x0 / 1.4
    };
    let hi = if above <= x1 * 1.6 {
        above.max(x1 * 1.4)
    } else {
        x1 * 1.4
    };
    (lo, hi)
}

/// Ticks of a linear axis over [lo, hi]: a step of 1, 2, 2.5 or 5 times a power of ten, the one
/// whose tick count is nearest `target` + 1 (the larger step on ties). Returns (step, ticks within
/// [lo, hi]).
pub fn linear_ticks(lo: f64, hi: f64, target: usize) -> (f64, Vec<f64>) {
    let raw = (hi - lo).abs().max(1e-12) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let ticks_of = |step: f64| -> Vec<f64> {
        let first = (lo / step - 1e-9).ceil() as i64;
        let last = (hi / step + 1e-9).floor() as i64;
        (first..=last).map(|k| k as f64 * step).collect()
    };
    let want = target.max(1) as f64 + 1.0;
    let mut best: Option<(f64, Vec<f64>)> = None;
    for scale in [0.1, 1.0, 10.0] {
        for m in [1.0, 2.0, 2.5, 5.0] {
            let step = m * mag * scale;
            let t = ticks_of(step);
            let better = match &best {
                None => true,
                Some((_, b)) => (t.len() as f64 - want).abs() <= (b.len() as f64 - want).abs(),
            };
            if better {
                best = Some((step, t));
            }
        }
    }
    best.unwrap_or((mag, vec![]))
}

pub(super) fn linear_label(v: f64, step: f64) -> String {
    if v.abs() >= 1e6 && step >= 1e5 {
        return count_label(v);
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let decimals = if (step * 10f64.powi(decimals as i32)).fract().abs() > 1e-6 {
        decimals + 1
    } else {
        decimals
    };
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s.trim_start_matches(['-', '0', '.']).is_empty() {
        s[1..].to_string()
    } else {
        s
    }
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Rough width in pixels of `s` in a sans-serif font of `size` px.
pub(super) fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.6
}
