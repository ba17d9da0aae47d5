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

/// The numbers of an attribute on every element of `tag`, e.g. the `cx` of each circle.
fn attrs(svg: &str, tag: &str, attr: &str) -> Vec<f64> {
    svg.split(&format!("<{tag} "))
        .skip(1)
        .filter_map(|e| {
            let e = format!(" {e}");
            let rest = &e[e.find(&format!(" {attr}=\""))? + attr.len() + 3..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

#[test]
fn a_log_axis_is_labelled_in_plain_tokens() {
    let ((lo, hi), ticks) = log_ticks(16.0, 1100.0, 8);
    assert_eq!((lo, hi), (16.0, 1100.0));
    assert_eq!(ticks, vec![16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]);
    // Many doublings: every other power.
    let (_, ticks) = log_ticks(10.0, 30_000.0, 8);
    assert_eq!(ticks, vec![16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0]);
    // The data's ends sit between labelled ticks, without a far-away tick (0.5 candidates).
    let (lo, hi) = log_domain(24.0, 387.0);
    assert_eq!(
        log_ticks(lo, hi, 8).1,
        vec![16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    );
    let (lo, hi) = log_domain(1.0 / 1.06, 16.0 * 1.06);
    assert_eq!(log_ticks(lo, hi, 8).1, vec![1.0, 2.0, 4.0, 8.0, 16.0]);
    // One point: widened to the powers of two around it.
    assert_eq!(
        log_ticks(30.0, 46.0, 8),
        ((16.0, 64.0), vec![16.0, 32.0, 64.0])
    );
    assert_eq!(count_label(1024.0), "1024");
    assert_eq!(count_label(1_500_000.0), "1.5M");
    let svg = plot_svg(
        &Plot::new("acc", "tokens", "accuracy (%)")
            .log_x()
            .series(Series::new(
                "sc",
                vec![(20.0, 10.0), (300.0, 40.0), (900.0, 45.0)],
            )),
    );
    for t in ["16", "64", "256", "1024"] {
        assert!(svg.contains(&format!(">{t}</text>")), "{t}: {svg}");
    }
    assert!(!svg.contains("ln(") && !svg.contains(">4.0<"), "{svg}");
    // Equal ratios are equal distances: 16 -> 64 as wide as 256 -> 1024.
    let x = |t: &str| {
        let i = svg.find(&format!(">{t}</text>")).unwrap();
        let e = &svg[svg[..i].rfind("<text x=\"").unwrap() + 9..];
        e[..e.find('"').unwrap()].parse::<f64>().unwrap()
    };
    assert!(
        ((x("64") - x("16")) - (x("1024") - x("256"))).abs() < 0.2,
        "{svg}"
    );
}

#[test]
fn every_point_has_a_marker_and_a_lone_point_shows() {
    let svg = plot_svg(
        &Plot::new("t", "x", "y")
            .series(Series::new("one", vec![(3.0, 0.5)]))
            .series(Series::new(
                "three",
                vec![(1.0, 0.1), (2.0, 0.2), (f64::NAN, 0.3), (4.0, 0.4)],
            )),
    );
    // 1 + 3 data markers (the NaN is left out) + 2 legend markers.
    assert_eq!(svg.matches("<circle").count(), 6, "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
    // Markers lie inside the plot frame, the legend right of it.
    let frame_right = attrs(&svg, "rect", "x")[1] + attrs(&svg, "rect", "width")[1];
    let cx = attrs(&svg, "circle", "cx");
    assert!(cx[..4].iter().all(|&x| x < frame_right), "{svg}");
    assert!(cx[4..].iter().all(|&x| x > frame_right), "{svg}");
}

#[test]
fn a_smoothed_series_draws_its_raw_points_faint() {
    let ys = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0];
    let pts: Vec<(f64, f64)> = ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect();
    let svg = plot_svg(
        &Plot::new("reward", "step", "reward")
            .series(Series::new("reward", pts).smoothed(Smooth::Ema(0.8))),
    );
    assert_eq!(svg.matches("fill-opacity=\"0.3\"").count(), 6, "{svg}");
    assert!(
        svg.contains("stroke-width=\"2.5\"") && svg.contains("faint: raw values"),
        "{svg}"
    );
    assert!(
        svg.contains(">reward</text>") && svg.contains("rotate(-90)"),
        "{svg}"
    );
}

#[test]
fn smoothing_by_hand() {
    // Bias-corrected EMA, w = 0.5: 2, then (0.5*1 + 0.5*4) / 0.75 = 3.333.
    let e = ema(&[2.0, 4.0], 0.5);
    assert_eq!(e[0], 2.0);
    assert!((e[1] - 2.5 / 0.75).abs() < 1e-12);
    assert_eq!(ema(&[1.0, 5.0], 0.0), vec![1.0, 5.0]);
    assert_eq!(
        moving_mean(&[0.0, 3.0, 6.0, 9.0], 3),
        vec![1.5, 3.0, 6.0, 7.5]
    );
}

#[test]
fn interval_bars_and_text_are_escaped() {
    let svg = plot_svg(
        &Plot::new("a <b>", "x & y", "acc")
            .y_range(0.0, 100.0)
            .series(
                Series::new("s<1>", vec![(1.0, 50.0), (2.0, 60.0)])
                    .with_intervals(vec![(40.0, 60.0), (50.0, 70.0)]),
            ),
    );
    assert!(svg.contains("a &lt;b&gt;") && svg.contains("x &amp; y") && svg.contains("s&lt;1&gt;"));
    assert!(!svg.contains("<b>"));
    assert_eq!(svg.matches("<path d=\"M").count(), 2, "{svg}");
    // The asked-for range is kept: ticks 0 and 100.
    assert!(
        svg.contains(">0</text>") && svg.contains(">100</text>"),
        "{svg}"
    );
    // No data: an empty frame that says so.
    assert!(plot_svg(&Plot::new("e", "x", "y")).contains("no data"));
}
