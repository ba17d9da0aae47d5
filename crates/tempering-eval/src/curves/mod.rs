//! Line plots as self-contained SVG text for reports: training curves (a metric against the step,
//! optionally smoothed with the raw points faint behind) and compute curves (a rate against
//! tokens on a log axis labelled in plain numbers, with interval bars). One quantity per plot: a
//! [`Plot`] has one y axis and its label. [`line_svg`] is the older plotters-drawn chart, kept
//! for its callers; [`plot_svg`] writes the SVG itself (no fonts embedded: the reader's
//! sans-serif). Knows nothing of how the numbers were made.
//!
//! The layout and drawing live here; [`axis`] holds smoothing, ticks, domains and labels.

mod axis;

use plotters::prelude::*;

use std::fmt::Write as _;

use crate::error::{EvalError, Result};
pub use axis::{count_label, ema, linear_ticks, log_domain, log_ticks, moving_mean};
use axis::{esc, linear_label, text_width};

const SIZE: (u32, u32) = (640, 360);
pub(crate) const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// An SVG line chart of `series` (name, points (x, y) in x order).
pub fn line_svg(
    title: &str,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<String> {
    crate::plot::register_font();
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.1).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut out = String::new();
    {
        let err = |msg: String| EvalError::Plot {
            path: std::path::PathBuf::from(title),
            msg,
        };
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, (name, points)) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(out)
}

/// How the x axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scale {
    #[default]
    Linear,
    /// Base-2 logarithmic, ticks at powers of two labelled as plain numbers (16, 64, 256, 1024);
    /// points with x <= 0 are left out.
    Log,
}

/// How a noisy series is smoothed; the raw points are drawn faint behind the smoothed line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Smooth {
    /// Exponential moving average with this weight on the past (0 <= w < 1, e.g. 0.8),
    /// bias-corrected so the first values are not pulled towards zero.
    Ema(f64),
    /// Centred moving average over this many points (shrinking at the ends).
    Mean(usize),
}

/// One line of a plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// (x, y) in x order; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
    /// Per point, a vertical interval (lo, hi) drawn as a bar; empty for none, else as long as
    /// `points`.
    pub intervals: Vec<(f64, f64)>,
    pub smooth: Option<Smooth>,
    /// Dashed line (e.g. a ceiling or a reference).
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            intervals: vec![],
            smooth: None,
            dashed: false,
        }
    }

    pub fn with_intervals(mut self, intervals: Vec<(f64, f64)>) -> Self {
        self.intervals = intervals;
        self
    }

    pub fn smoothed(mut self, smooth: Smooth) -> Self {
        self.smooth = Some(smooth);
        self
    }

    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }
}

/// A line plot of one quantity: its own y axis and label.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    /// The least y range the axis shows (e.g. 0..100 for a percentage); data outside widens it.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
    /// Pixels, (width, height).
    pub size: (u32, u32),
}

impl Plot {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Plot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_range: None,
            series: vec![],
            size: (720, 380),
        }
    }

    pub fn log_x(mut self) -> Self {
        self.x_scale = Scale::Log;
        self
    }

    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }
}

/// One series after cleaning: points kept, their intervals and the smoothed line.
struct Clean<'a> {
    series: &'a Series,
    points: Vec<(f64, f64)>,
    intervals: Vec<(f64, f64)>,
    smooth: Vec<(f64, f64)>,
}

fn clean(s: &Series, scale: Scale) -> Clean<'_> {
    let mut points = vec![];
    let mut intervals = vec![];
    for (i, &(x, y)) in s.points.iter().enumerate() {
        if !x.is_finite() || !y.is_finite() || (scale == Scale::Log && x <= 0.0) {
            continue;
        }
        points.push((x, y));
        if let Some(&(lo, hi)) = s.intervals.get(i) {
            if lo.is_finite() && hi.is_finite() {
                intervals.push((lo, hi));
            } else {
                intervals.push((y, y));
            }
        }
    }
    if intervals.len() != points.len() {
        intervals.clear();
    }
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let smooth = match s.smooth {
        None => vec![],
        Some(Smooth::Ema(w)) => ema(&ys, w),
        Some(Smooth::Mean(k)) => moving_mean(&ys, k),
    };
    let smooth = points.iter().zip(smooth).map(|(p, y)| (p.0, y)).collect();
    Clean {
        series: s,
        points,
        intervals,
        smooth,
    }
}

/// The plot as an SVG document (no XML declaration, so it can be inlined in HTML as it is).
/// Every point gets a marker (a smoothed series: a faint dot per raw point), so a series of one
/// point shows; the legend sits right of the plot area, never over the data.
pub fn plot_svg(plot: &Plot) -> String {
    let (w, h) = (plot.size.0.max(200) as f64, plot.size.1.max(150) as f64);
    let lines: Vec<Clean> = plot.series.iter().map(|s| clean(s, plot.x_scale)).collect();
    let any_smooth = lines.iter().any(|l| l.series.smooth.is_some());

    // Data extent.
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for l in &lines {
        for &(x, y) in &l.points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        for &(lo, hi) in &l.intervals {
            y0 = y0.min(lo);
            y1 = y1.max(hi);
        }
    }
    let empty = !x0.is_finite();
    if empty {
        (x0, x1, y0, y1) = match plot.x_scale {
            Scale::Linear => (0.0, 1.0, 0.0, 1.0),
            Scale::Log => (1.0, 16.0, 0.0, 1.0),
        };
    }
    if let Some((lo, hi)) = plot.y_range {
        y0 = y0.min(lo);
        y1 = y1.max(hi);
    }

    // Axes: domains and ticks.
    let (x_dom, x_ticks, x_labels): ((f64, f64), Vec<f64>, Vec<String>) = match plot.x_scale {
        Scale::Log => {
            let (lo, hi) = log_domain(x0, x1);
            let (dom, ticks) = log_ticks(lo, hi, 8);
            let labels = ticks.iter().map(|&t| count_label(t)).collect();
            (dom, ticks, labels)
        }
        Scale::Linear => {
            let (a, b) = if x1 > x0 {
                (x0, x1)
            } else {
                (x0 - 1.0, x0 + 1.0)
            };
            // A margin, so markers at the ends clear the frame.
            let pad = 0.04 * (b - a);
            let (step, ticks) = linear_ticks(a - pad, b + pad, 6);
            let labels = ticks.iter().map(|&t| linear_label(t, step)).collect();
            ((a - pad, b + pad), ticks, labels)
        }
    };
    let (y_dom, y_ticks, y_labels) = {
        let (a, b) = if y1 > y0 {
            (y0, y1)
        } else {
            let pad = (y0.abs() * 0.1).max(1e-3);
            (y0 - pad, y0 + pad)
        };
        let pad = 0.04 * (b - a);
        let (step, ticks) = linear_ticks(a - pad, b + pad, 5);
        let labels: Vec<String> = ticks.iter().map(|&t| linear_label(t, step)).collect();
        ((a - pad, b + pad), ticks, labels)
    };

    // Layout.
    let font = 12.0;
    let y_label_w = y_labels
        .iter()
        .map(|l| text_width(l, font))
        .fold(0.0, f64::max);
    let left = 28.0 + y_label_w + 10.0;
    let top = if plot.title.is_empty() { 14.0 } else { 38.0 };
    let bottom = 56.0;
    let mut legend: Vec<(usize, String)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.series.name.is_empty())
        .map(|(i, l)| (i, l.series.name.clone()))
        .collect();
    if any_smooth {
        legend.push((usize::MAX, "faint: raw values".into()));
    }
    let legend_w = if legend.is_empty() {
        16.0
    } else {
        let widest = legend
            .iter()
            .map(|(_, n)| text_width(n, font))
            .fold(0.0, f64::max);
        (widest + 48.0).min(w * 0.4)
    };
    let (px0, px1, py0, py1) = (left, w - legend_w, top, h - bottom);
    let sx = |x: f64| -> f64 {
        let t = match plot.x_scale {
            Scale::Linear => (x - x_dom.0) / (x_dom.1 - x_dom.0),
            Scale::Log => (x.log2() - x_dom.0.log2()) / (x_dom.1.log2() - x_dom.0.log2()),
        };
        px0 + t * (px1 - px0)
    };
    let sy = |y: f64| -> f64 { py1 - (y - y_dom.0) / (y_dom.1 - y_dom.0) * (py1 - py0) };

    let mut o = String::new();
    let _ = write!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"{font}\" role=\"img\">\n\
         <title>{}</title>\n<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n",
        esc(&plot.title)
    );
    if !plot.title.is_empty() {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{}</text>",
            (px0 + px1) / 2.0,
            esc(&plot.title)
        );
    }
    // Grid and tick labels.
    o.push_str("<g stroke=\"#e3e3e3\" stroke-width=\"1\">\n");
    for &t in &x_ticks {
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{py0:.1}\" x2=\"{x:.1}\" y2=\"{py1:.1}\"/>",
            x = sx(t)
        );
    }
    for &t in &y_ticks {
        let _ = writeln!(
            o,
            "<line x1=\"{px0:.1}\" y1=\"{y:.1}\" x2=\"{px1:.1}\" y2=\"{y:.1}\"/>",
            y = sy(t)
        );
    }
    o.push_str("</g>\n");
    let _ = writeln!(
        o,
        "<rect x=\"{px0:.1}\" y=\"{py0:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#444\"/>",
        px1 - px0,
        py1 - py0
    );
    o.push_str("<g fill=\"#333\">\n");
    for (t, l) in x_ticks.iter().zip(&x_labels) {
        let x = sx(*t);
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{py1:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            py1 + 5.0,
            py1 + 19.0,
            esc(l)
        );
    }
    for (t, l) in y_ticks.iter().zip(&y_labels) {
        let y = sy(*t);
        let _ = writeln!(
            o,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{px0:.1}\" y2=\"{y:.1}\" stroke=\"#444\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            px0 - 5.0,
            px0 - 8.0,
            y + 4.0,
            esc(l)
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
        (px0 + px1) / 2.0,
        h - 14.0,
        esc(&plot.x_label)
    );
    let _ = writeln!(
        o,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
        (py0 + py1) / 2.0,
        esc(&plot.y_label)
    );
    o.push_str("</g>\n");
    if empty {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">no data</text>",
            (px0 + px1) / 2.0,
            (py0 + py1) / 2.0
        );
    }

    // Series.
    let poly = |pts: &[(f64, f64)]| -> String {
        pts.iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (i, l) in lines.iter().enumerate() {
        let c = color(i);
        let dash = if l.series.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "<g class=\"series\" data-name=\"{}\">",
            esc(&l.series.name)
        );
        if l.series.smooth.is_some() {
            if l.points.len() > 1 {
                let _ = writeln!(
                    o,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-opacity=\"0.25\" stroke-width=\"1\"/>",
                    poly(&l.points)
                );
            }
            for &(x, y) in &l.points {
                let _ = writeln!(
                    o,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{c}\" fill-opacity=\"0.3\"/>",
                    sx(x),
                    sy(y)
                );
            }
            if l.smooth.len() > 1 {
                let _ = writeln!(
                    o,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2.5\"{dash}/>",
                    poly(&l.smooth)
                );
            } else if let Some(&(x, y)) = l.smooth.first() {
                let _ = writeln!(
                    o,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\" stroke=\"white\"/>",
                    sx(x),
                    sy(y)
                );
            }
        } else {
            for (&(x, _), &(lo, hi)) in l.points.iter().zip(&l.intervals) {
                let (x, a, b) = (sx(x), sy(lo), sy(hi));
                let _ = writeln!(
                    o,
                    "<path d=\"M{x:.1},{a:.1}V{b:.1}M{:.1},{a:.1}h8M{:.1},{b:.1}h8\" stroke=\"{c}\" stroke-opacity=\"0.55\" stroke-width=\"1.5\" fill=\"none\"/>",
                    x - 4.0,
                    x - 4.0
                );
            }
            if l.points.len() > 1 {
                let _ = writeln!(
                    o,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{dash}/>",
                    poly(&l.points)
                );
            }
            for &(x, y) in &l.points {
                let _ = writeln!(
                    o,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\" stroke=\"white\" stroke-width=\"1\"/>",
                    sx(x),
                    sy(y)
                );
            }
        }
        o.push_str("</g>\n");
    }

    // Legend, right of the plot area.
    let lx = px1 + 14.0;
    let fits = ((legend_w - 34.0) / (font * 0.6)).max(4.0) as usize;
    for (k, (i, name)) in legend.iter().enumerate() {
        let name = &if name.chars().count() > fits {
            name.chars().take(fits - 1).collect::<String>() + "…"
        } else {
            name.clone()
        };
        let y = py0 + 8.0 + 20.0 * k as f64;
        if *i == usize::MAX {
            let _ = writeln!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"#888\" fill-opacity=\"0.5\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#666\">{}</text>",
                lx + 11.0,
                lx + 28.0,
                y + 4.0,
                esc(name)
            );
            continue;
        }
        let c = color(*i);
        let dash = if lines[*i].series.dashed {
            " stroke-dasharray=\"5 3\""
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "<line x1=\"{lx:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{c}\" stroke-width=\"2\"{dash}/>\
             <circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{c}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222\">{}</text>",
            lx + 22.0,
            lx + 11.0,
            lx + 28.0,
            y + 4.0,
            esc(name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// The `i`-th series colour as `#rrggbb` (the same palette as [`line_svg`]).
pub fn color(i: usize) -> String {
    let c = COLORS[i % COLORS.len()];
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

#[cfg(test)]
mod tests;
