//! Training curves (a metric against the step, one line per series) as SVG for reports: the
//! reward, KL and retain-loss curves of a run. Knows plotters; nothing of how the numbers were made.

use plotters::prelude::*;

use crate::error::{EvalError, Result};

const SIZE: (u32, u32) = (640, 360);
const COLORS: [RGBColor; 10] = [
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_with_its_legend() {
        let s = line_svg(
            "reward",
            "step",
            &[
                ("reward".into(), vec![(1.0, 0.2), (2.0, 0.4), (3.0, 0.5)]),
                ("verifier".into(), vec![(1.0, 0.1), (2.0, 0.3)]),
            ],
        )
        .unwrap();
        assert!(s.starts_with("<svg") || s.contains("<svg"));
        assert!(s.contains("reward") && s.contains("verifier"));
        assert!(s.matches("<polyline").count() >= 2, "{s}");
    }
}
