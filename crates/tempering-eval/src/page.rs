//! A kit for a self-contained HTML page a person reads: escaping, a real `<table>` (numbers
//! right-aligned, text escaped), the evaluation table with its intervals, SVG inlining and the
//! page shell with its style. Pure strings: knows nothing of files, plotting or how rows were
//! computed.

use crate::table::{cells, StrategyRow, HEADERS};

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Whether a cell reads as a number (right-aligned): its first word, less a trailing `%`, parses
/// as one (`53.3% [45.4, 61.1] (n=150)`, `1024`, `-0.5`), or it is empty or `-` (no value).
pub fn is_numeric(cell: &str) -> bool {
    let t = cell.trim();
    if t.is_empty() || t == "-" {
        return true;
    }
    let first = t.split_whitespace().next().unwrap_or_default();
    let first = first.strip_suffix('%').unwrap_or(first);
    first.parse::<f64>().is_ok_and(|v| v.is_finite())
}

/// An HTML `<table>` with a header row; every cell is escaped; a column whose cells all read as
/// numbers (see [`is_numeric`]) is right-aligned with tabular figures, header included. Inline
/// styles, so it reads right on any page. Short rows are padded with empty cells.
pub fn html_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers
        .len()
        .max(rows.iter().map(|r| r.len()).max().unwrap_or(0));
    let numeric: Vec<bool> = (0..cols)
        .map(|c| {
            let mut any = false;
            let all = rows.iter().all(|r| {
                let cell = r.get(c).map(String::as_str).unwrap_or("");
                any |= !cell.trim().is_empty() && cell.trim() != "-";
                is_numeric(cell)
            });
            all && any
        })
        .collect();
    let align = |c: usize| {
        if numeric[c] {
            " class=\"num\" style=\"text-align:right;font-variant-numeric:tabular-nums\""
        } else {
            " style=\"text-align:left\""
        }
    };
    let mut t = String::from(
        "<div class=\"table-wrap\" style=\"overflow-x:auto\"><table class=\"results\">\n<thead><tr>",
    );
    for c in 0..cols {
        let h = headers.get(c).copied().unwrap_or("");
        t.push_str(&format!("<th{}>{}</th>", align(c), escape(h)));
    }
    t.push_str("</tr></thead>\n<tbody>\n");
    for r in rows {
        t.push_str("<tr>");
        for c in 0..cols {
            let cell = r.get(c).map(String::as_str).unwrap_or("");
            t.push_str(&format!("<td{}>{}</td>", align(c), escape(cell)));
        }
        t.push_str("</tr>\n");
    }
    t.push_str("</tbody>\n</table></div>");
    t
}

/// The evaluation table: one row per strategy, accuracy as `53.3% [45.4, 61.1] (n=150)`, sampled
/// pass@1 and pass@N for the strategies that draw candidates (`-` for the others).
pub fn eval_table(rows: &[StrategyRow]) -> String {
    let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
    html_table(&HEADERS, &body)
}

/// A sentence that says how to read [`eval_table`]'s intervals and sampling columns.
pub const EVAL_TABLE_NOTE: &str =
    "Brackets hold 95% Wilson score intervals; n is the number of problems. \
     For strategies that draw whole candidate answers (sc, wsc, bon, esc, adaptive), \
     pass@1 sampled is the mean share of candidates that are right, and pass@N the share of \
     problems where any candidate is right: what a perfect verifier could select. \
     A strategy's accuracy between the two is what its vote or scorer achieved; \
     early stopping and adaptive sampling draw fewer than N candidates (their mean is shown).";

/// An SVG document's `<svg ...>...</svg>` element, without any XML declaration before it (not
/// allowed inside HTML).
pub fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// The page's style sheet.
pub const STYLE: &str = "body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em}\
table.results{border-collapse:collapse;font-size:0.85em;margin:1em 0}\
table.results th,table.results td{border-bottom:1px solid #ddd;padding:4px 6px;white-space:nowrap;vertical-align:top}\
table.results th{border-bottom:2px solid #888;font-weight:600;white-space:normal;vertical-align:bottom;min-width:4em}\
table.results tbody tr:nth-child(even){background:#f7f7f7}\
.note{color:#555;font-size:0.9em;max-width:60em}\
figure{margin:1em 0}svg{max-width:100%;height:auto}";

/// A whole self-contained page (no scripts, no network): `<title>` and `<h1>` from `title`
/// (escaped), then `body_html` as it is.
pub fn page(title: &str, body_html: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title>\n<style>{STYLE}</style></head>\n<body><h1>{t}</h1>\n{body_html}\n</body></html>\n",
        t = escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_escaped_and_numbers_right_aligned() {
        let t = html_table(
            &["strategy", "accuracy"],
            &[
                vec!["<b>&x".into(), "53.3% [45.4, 61.1] (n=150)".into()],
                vec!["bon@4:min".into(), "-".into()],
            ],
        );
        assert!(
            t.contains("<td style=\"text-align:left\">&lt;b&gt;&amp;x</td>"),
            "{t}"
        );
        assert!(!t.contains("<b>"), "{t}");
        assert!(
            t.contains("<td class=\"num\" style=\"text-align:right;font-variant-numeric:tabular-nums\">53.3% [45.4, 61.1] (n=150)</td>"),
            "{t}"
        );
        // The numeric column's header is right-aligned too; the text column's is not.
        assert!(
            t.contains("<th class=\"num\"") && t.contains("<th style=\"text-align:left\">strategy"),
            "{t}"
        );
        assert_eq!(t.matches("<tr>").count(), 3);
    }

    #[test]
    fn a_column_of_dashes_or_words_is_text() {
        assert!(is_numeric("1024") && is_numeric("-0.5") && is_numeric("12.5%"));
        assert!(!is_numeric("sc@16") && !is_numeric("NaN%") && !is_numeric("inf"));
        let t = html_table(
            &["a", "b"],
            &[vec!["-".into()], vec!["x".into(), "y".into()]],
        );
        assert!(!t.contains("class=\"num\""), "{t}");
        // The short row is padded.
        assert_eq!(t.matches("<td").count(), 4);
    }

    #[test]
    fn inline_svg_drops_the_xml_declaration() {
        assert_eq!(inline_svg("<?xml version=\"1.0\"?>\n<svg/>"), "<svg/>");
        let p = page("a <b>", "<p>x</p>");
        assert!(p.contains("<h1>a &lt;b&gt;</h1>") && p.contains("<p>x</p>"));
    }
}
