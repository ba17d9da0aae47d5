//! The evaluation's plots. Accuracy against mean generated tokens (log axis in plain tokens), one
//! line per strategy family with 95% interval bars, as SVG ([`crate::curves::plot_svg`]) and as
//! PNG (drawn with plotters' bitmap backend, encoded by `png`; text rendered with the embedded
//! DejaVu Sans, whose licence is in `assets/`). And, per sampling family, what sampling bought:
//! sampled pass@1, the strategy's accuracy and pass@N against the number of candidates. Knows the
//! table's rows, nothing of how they were computed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::curves::{count_label, log_domain, log_ticks, plot_svg, Plot, Scale, Series, COLORS};
use crate::error::{write_atomic, EvalError, Result};
use crate::table::{Rate, StrategyRow};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn register_font() {
    REGISTER.call_once(|| {
        // The embedded file is a valid TrueType font; a failure would only lose text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn pct(r: &Rate) -> (f64, (f64, f64)) {
    (100.0 * r.value, (100.0 * r.lo, 100.0 * r.hi))
}

/// A point with its interval: (x, y, (lo, hi)).
type Pt = (f64, f64, (f64, f64));

fn by_x(name: impl Into<String>, mut v: Vec<Pt>) -> Series {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    Series::new(name, v.iter().map(|p| (p.0, p.1)).collect())
        .with_intervals(v.iter().map(|p| p.2).collect())
}

/// Accuracy (%) against mean generated tokens per problem (log axis), one line per family, each
/// point with its 95% Wilson interval.
pub fn accuracy_plot(rows: &[StrategyRow], title: &str) -> Plot {
    accuracy_plot_runs(&[("", rows)], title)
}

/// [`accuracy_plot`] of several runs on one plot (say before and after RL): one line per run and
/// family, named `{run} {family}` (the family alone where the run's name is empty).
pub fn accuracy_plot_runs(runs: &[(&str, &[StrategyRow])], title: &str) -> Plot {
    let mut fams: Vec<(String, Vec<Pt>)> = vec![];
    for (run, rows) in runs {
        for r in rows.iter() {
            let name = if run.is_empty() {
                r.family.clone()
            } else {
                format!("{run} {}", r.family)
            };
            let (y, iv) = pct(&r.accuracy_rate());
            let p = (r.mean_tokens.max(1.0), y, iv);
            match fams.iter_mut().find(|f| f.0 == name) {
                Some(f) => f.1.push(p),
                None => fams.push((name, vec![p])),
            }
        }
    }
    let mut plot = Plot::new(
        title,
        "mean generated tokens per problem (log scale)",
        "accuracy (%)",
    )
    .log_x()
    .y_range(0.0, 100.0)
    .size(900, 480);
    for (name, pts) in fams {
        plot = plot.series(by_x(name, pts));
    }
    plot
}

/// Per family of strategies that draw candidates, what sampling bought against the number of
/// candidates N (log axis): pass@N (any candidate right: a perfect selector's ceiling, dashed),
/// the strategy's own accuracy and sampled pass@1, each with its 95% interval; pass@N and pass@1
/// are nudged 6% right and left so equal values stay visible. Families in first-seen order; none
/// when no row drew candidates.
pub fn sampling_plots(rows: &[StrategyRow]) -> Vec<(String, Plot)> {
    let mut fams: Vec<String> = vec![];
    for r in rows {
        if r.sampled.is_some() && !fams.contains(&r.family) {
            fams.push(r.family.clone());
        }
    }
    fams.into_iter()
        .map(|fam| {
            let (mut ceil, mut acc, mut one) = (vec![], vec![], vec![]);
            for r in rows.iter().filter(|r| r.family == fam) {
                let Some(s) = &r.sampled else { continue };
                let x = s.mean_candidates.max(1.0);
                let (y, iv) = pct(&s.pass_n);
                ceil.push((x, y, iv));
                let (y, iv) = pct(&r.accuracy_rate());
                acc.push((x, y, iv));
                let (y, iv) = pct(&s.pass1);
                one.push((x, y, iv));
            }
            // Nudged sideways (6% on the log axis) so equal values do not hide each other.
            let nudge = |v: Vec<Pt>, f: f64| v.into_iter().map(|p| (p.0 * f, p.1, p.2)).collect();
            let c = by_x("pass@N: any candidate right", nudge(ceil, 1.06)).dashed();
            let a = by_x(format!("{fam}: the strategy's answer"), acc);
            let p = by_x("pass@1: one sampled candidate", nudge(one, 1.0 / 1.06));
            let plot = Plot::new(
                format!("What sampling bought: {fam}"),
                "candidates per problem, N (log scale)",
                "problems right (%)",
            )
            .log_x()
            .y_range(0.0, 100.0)
            .series(c)
            .series(a)
            .series(p);
            (fam, plot)
        })
        .collect()
}

/// A plotters x axis in log2 coordinates whose ticks are the given powers of two, labelled as
/// plain numbers (plotters' own log axis labels other values and its key points cannot be
/// formatted through a combinator).
struct TickAxis {
    range: (f64, f64),
    ticks: Vec<f64>,
    log: bool,
}

impl Ranged for TickAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.range.0) / (self.range.1 - self.range.0);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.0..self.range.1
    }
}

impl ValueFormatter<f64> for TickAxis {
    fn format_ext(&self, v: &f64) -> String {
        if self.log {
            count_label(2f64.powf(*v))
        } else {
            let s = format!("{v:.3}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    }
}

/// Draws `plot` with plotters (for the PNG): a log x axis in log2 coordinates with ticks at
/// powers of two labelled as plain numbers, lines, a marker at every point and interval bars.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    plot: &Plot,
) -> Result<(), String> {
    register_font();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let log = plot.x_scale == Scale::Log;
    let fx = |x: f64| if log { x.log2() } else { x };
    let ok = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log || x > 0.0);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut ylo, mut yhi) = plot.y_range.unwrap_or((f64::INFINITY, f64::NEG_INFINITY));
    for s in &plot.series {
        for (i, p) in s.points.iter().enumerate().filter(|(_, p)| ok(p)) {
            lo = lo.min(p.0);
            hi = hi.max(p.0);
            let (a, b) = s.intervals.get(i).copied().unwrap_or((p.1, p.1));
            ylo = ylo.min(a.min(p.1));
            yhi = yhi.max(b.max(p.1));
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (1.0, 16.0);
    }
    if !ylo.is_finite() || !yhi.is_finite() {
        (ylo, yhi) = (0.0, 1.0);
    } else if yhi <= ylo {
        (ylo, yhi) = (ylo - 1.0, ylo + 1.0);
    }
    let (dom, ticks) = if log {
        let (a, b) = log_domain(lo, hi);
        let (d, t) = log_ticks(a, b, 8);
        (
            (d.0.log2(), d.1.log2()),
            t.iter().map(|t| t.log2()).collect(),
        )
    } else {
        let pad = ((hi - lo) * 0.05).max(0.5);
        let (_, t) = crate::curves::linear_ticks(lo - pad, hi + pad, 6);
        ((lo - pad, hi + pad), t)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d(
            TickAxis {
                range: dom,
                ticks,
                log,
            },
            ylo..yhi,
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(plot.x_label.as_str())
        .y_desc(plot.y_label.as_str())
        .y_label_formatter(&|v: &f64| format!("{}", (v * 1e6).round() / 1e6))
        .max_light_lines(1)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in plot.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| ok(p))
            .map(|&(x, y)| (fx(x), y))
            .collect();
        let bars: Vec<(f64, f64, f64)> = s
            .points
            .iter()
            .zip(&s.intervals)
            .filter(|(p, _)| ok(p))
            .map(|(&(x, _), &(a, b))| (fx(x), a, b))
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, a, b)| {
                PathElement::new(vec![(x, a), (x, b)], color.mix(0.5).stroke_width(2))
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

const SIZE: (u32, u32) = (900, 600);

/// The accuracy plot as an SVG document ([`accuracy_plot`] drawn by [`plot_svg`]).
pub fn svg(rows: &[StrategyRow], title: &str) -> String {
    plot_svg(&accuracy_plot(rows, title))
}

/// The accuracy plot as PNG bytes.
pub fn png(rows: &[StrategyRow], title: &str) -> Result<Vec<u8>, String> {
    png_bytes(&accuracy_plot(rows, title))
}

/// Any [`Plot`] as PNG bytes (900x600, drawn by plotters: lines, markers and interval bars; a
/// smoothed series is drawn raw).
pub fn plot_png(plot: &Plot) -> Result<Vec<u8>> {
    png_bytes(plot).map_err(|msg| EvalError::Plot {
        path: plot.title.clone().into(),
        msg,
    })
}

fn png_bytes(plot: &Plot) -> Result<Vec<u8>, String> {
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(
        BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
        plot,
    )?;
    let mut out = vec![];
    let mut enc = png::Encoder::new(&mut out, SIZE.0, SIZE.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| e.to_string())?;
    w.write_image_data(&rgb).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Writes `stem.svg` and `stem.png`; returns the SVG text (for the report).
pub fn write_plots(stem: &Path, rows: &[StrategyRow], title: &str) -> Result<String> {
    let svg_path = stem.with_extension("svg");
    let png_path = stem.with_extension("png");
    let s = svg(rows, title);
    write_atomic(&svg_path, s.as_bytes())?;
    let p = png(rows, title).map_err(|msg| EvalError::Plot {
        path: png_path.clone(),
        msg,
    })?;
    write_atomic(&png_path, &p)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{wilson, Sampled};

    fn row(
        strategy: &str,
        family: &str,
        correct: usize,
        tokens: f64,
        n: Option<f64>,
    ) -> StrategyRow {
        let (lo, hi) = wilson(correct as f64, 10);
        StrategyRow {
            strategy: strategy.into(),
            family: family.into(),
            problems: 10,
            accuracy: correct as f64 / 10.0,
            mean_tokens: tokens,
            mean_calls: 1.0,
            mean_scorer_calls: 0.0,
            wall_s_per_problem: 0.0,
            budget_cut: 0,
            correct,
            accuracy_lo: lo,
            accuracy_hi: hi,
            sampled: n.map(|n| Sampled {
                pass1: Rate::new(2.0, 10),
                pass_n: Rate::new(9.0, 10),
                mean_candidates: n,
            }),
        }
    }

    #[test]
    fn runs_and_families_make_the_lines_and_sampling_gets_its_own_plots() {
        let sft = vec![row("greedy", "greedy", 3, 40.0, None)];
        let rl = vec![
            row("sc@4", "sc", 6, 160.0, Some(4.0)),
            row("sc@1", "sc", 4, 40.0, Some(1.0)),
        ];
        let p = accuracy_plot_runs(&[("SFT", &sft), ("GRPO", &rl)], "t");
        let names: Vec<&str> = p.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["SFT greedy", "GRPO sc"]);
        // Sorted by tokens, in percent, with the Wilson interval.
        assert_eq!(p.series[1].points, vec![(40.0, 40.0), (160.0, 60.0)]);
        let (lo, hi) = wilson(6.0, 10);
        assert_eq!(p.series[1].intervals[1], (100.0 * lo, 100.0 * hi));
        assert_eq!(p.x_scale, Scale::Log);

        let s = sampling_plots(&rl);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "sc");
        let series = &s[0].1.series;
        assert_eq!(series.len(), 3);
        assert!(series[0].dashed && series[0].name.starts_with("pass@N"));
        let xs: Vec<f64> = series[0].points.iter().map(|p| p.0 / 1.06).collect();
        assert!((xs[0] - 1.0).abs() < 1e-12 && (xs[1] - 4.0).abs() < 1e-12);
        assert_eq!(series[0].points[1].1, 90.0);
        assert_eq!(series[1].points, vec![(1.0, 40.0), (4.0, 60.0)]);
        assert!(sampling_plots(&sft).is_empty());
        let png = plot_png(&s[0].1).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
