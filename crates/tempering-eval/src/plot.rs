//! Accuracy against mean generated tokens (log scale), one line per strategy family, drawn with
//! plotters as SVG (text) and PNG (pixels from plotters' bitmap backend, encoded by `png`; text
//! rendered with the embedded DejaVu Sans, whose licence is in `assets/`).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{write_atomic, EvalError, Result};
use crate::table::StrategyRow;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn register_font() {
    REGISTER.call_once(|| {
        // The embedded file is a valid TrueType font; a failure would only lose text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// The lines to draw: (family, points sorted by tokens).
fn series(rows: &[StrategyRow]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = vec![];
    for r in rows {
        let p = (r.mean_tokens.max(1.0), 100.0 * r.accuracy);
        match out.iter_mut().find(|s| s.0 == r.family) {
            Some(s) => s.1.push(p),
            None => out.push((r.family.clone(), vec![p])),
        }
    }
    for s in &mut out {
        s.1.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    rows: &[StrategyRow],
    title: &str,
) -> Result<(), String> {
    register_font();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let lines = series(rows);
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for (_, pts) in &lines {
        for &(x, _) in pts {
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    if !lo.is_finite() {
        lo = 1.0;
        hi = 10.0;
    }
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("mean generated tokens per problem (log scale)")
        .y_desc("accuracy (%)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
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

/// The plot as an SVG document.
pub fn svg(rows: &[StrategyRow], title: &str) -> Result<String, String> {
    let mut s = String::new();
    draw(
        SVGBackend::with_string(&mut s, SIZE).into_drawing_area(),
        rows,
        title,
    )?;
    Ok(s)
}

/// The plot as PNG bytes.
pub fn png(rows: &[StrategyRow], title: &str) -> Result<Vec<u8>, String> {
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(
        BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
        rows,
        title,
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
    let s = svg(rows, title).map_err(|msg| EvalError::Plot {
        path: svg_path.clone(),
        msg,
    })?;
    write_atomic(&svg_path, s.as_bytes())?;
    let p = png(rows, title).map_err(|msg| EvalError::Plot {
        path: png_path.clone(),
        msg,
    })?;
    write_atomic(&png_path, &p)?;
    Ok(s)
}
