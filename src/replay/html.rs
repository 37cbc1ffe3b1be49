//! The replay report as one self-contained HTML page (no scripts or styles fetched from
//! anywhere): the verdict table, and for each failing case its failed checks, its first
//! divergence and its per-layer error curve drawn as inline SVG. Also the curve alone as an SVG
//! document (the `.svg` files beside a JSON report). Pure rendering: no I/O.

use std::fmt::Write;

use super::report::{CaseReport, LayerPoint, Mode};

/// Escapes text for HTML and XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A name usable as a file stem or an HTML id.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::LlamaCpp => "llama.cpp",
        Mode::Worker => "worker",
        Mode::Diff => "diff",
    }
}

const W: f64 = 900.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 70.0;

/// log10 of an NMSE for plotting; exact zeros (bit-identical sites) sit on the floor.
fn level(e: f64, floor: f64) -> f64 {
    if e > 0.0 && e.is_finite() {
        e.log10().max(floor)
    } else if e.is_infinite() || e.is_nan() {
        1.0
    } else {
        floor
    }
}

/// The per-layer error curve: worst per-position NMSE (log10) per site in forward order, with
/// the bound where one applies; bit-identical sites lie on the bottom line.
pub fn curve_svg(r: &CaseReport) -> String {
    let curve: &[LayerPoint] = &r.curve;
    let floor = -16.0f64;
    let top = curve.iter().filter_map(|p| p.worst_nmse).map(|e| level(e, floor)).fold(0.0f64, f64::max).ceil();
    let n = curve.len().max(2);
    let x = |i: usize| LEFT + (W - LEFT - RIGHT) * i as f64 / (n - 1) as f64;
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (top - v) / (top - floor);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="error curve of {name}"><title>{name}: worst per-position NMSE by site</title><rect width="{W}" height="{H}" fill="white"/>"#,
        name = escape(&r.name)
    );
    let mut t = floor as i64;
    while t as f64 <= top {
        let yy = y(t as f64);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">1e{t}</text>"##,
            W - RIGHT,
            LEFT - 4.0,
            yy + 4.0
        );
        t += 4;
    }
    let every = (curve.len() / 16).max(1);
    for (i, p) in curve.iter().enumerate().filter(|(i, _)| i % every == 0 || *i + 1 == curve.len()) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" transform="rotate(45 {:.1} {:.1})">{}</text>"#,
            x(i),
            H - BOTTOM + 14.0,
            x(i),
            H - BOTTOM + 14.0,
            escape(&p.label)
        );
    }
    let pts: Vec<String> = curve.iter().enumerate().filter_map(|(i, p)| p.worst_nmse.map(|e| format!("{:.1},{:.1}", x(i), y(level(e, floor))))).collect();
    if !pts.is_empty() {
        let _ = write!(s, r##"<polyline class="nmse" fill="none" stroke="#1f5fbf" stroke-width="2" points="{}"/>"##, pts.join(" "));
    }
    let bound: Vec<String> =
        curve.iter().enumerate().filter(|(_, p)| p.bound > 0.0).map(|(i, p)| format!("{:.1},{:.1}", x(i), y(level(p.bound, floor)))).collect();
    if !bound.is_empty() {
        let _ = write!(s, r##"<polyline class="bound" fill="none" stroke="#c0392b" stroke-dasharray="4 3" points="{}"/>"##, bound.join(" "));
    }
    if let Some(d) = &r.first_divergence {
        if let Some(i) = curve.iter().position(|p| p.layer.is_some() && p.layer == d.layer) {
            let _ = write!(s, r##"<line class="first" x1="{:.1}" y1="{TOP}" x2="{:.1}" y2="{:.1}" stroke="#c0392b"/>"##, x(i), x(i), H - BOTTOM);
        }
    }
    s.push_str("</svg>");
    s
}

/// The curve as a standalone SVG document.
pub fn curve_svg_document(r: &CaseReport) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n", curve_svg(r))
}

/// The whole report page.
pub fn page(reports: &[CaseReport], seconds: f64, title: &str) -> String {
    let passed = reports.iter().filter(|r| r.passed).count();
    let failed = reports.len() - passed;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; }}
.PASS {{ color: #1e7d32; font-weight: bold; }}
.FAIL {{ color: #c0392b; font-weight: bold; }}
section.case {{ margin-top: 2em; border-top: 2px solid #c0392b; }}
code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head>
<body data-cases="{n}" data-failed="{failed}">
<h1>{t}</h1>
<p class="summary">{passed}/{n} passed, {failed} failed, in {seconds:.1} s.</p>
<table class="verdicts"><thead><tr><th>case</th><th>mode</th><th>backend</th><th>verdict</th><th>positions</th><th>secs</th><th>worst site</th><th>first divergence</th></tr></thead><tbody>
"#,
        t = escape(title),
        n = reports.len()
    );
    for r in reports {
        let v = r.verdict();
        let worst = r.worst_layer.as_ref().map(|w| format!("{} {:.1e}", w.label, w.worst_nmse.unwrap_or(f64::NAN))).unwrap_or_default();
        let name = if r.passed { escape(&r.name) } else { format!(r##"<a href="#case-{}">{}</a>"##, sanitize(&r.name), escape(&r.name)) };
        let div = if r.first_divergence.is_some() { escape(&r.divergence_line()) } else { "-".into() };
        let _ = writeln!(
            s,
            r#"<tr class="{v}"><td>{name}</td><td>{}</td><td>{}</td><td class="{v}">{v}</td><td class="num">{}</td><td class="num">{:.1}</td><td>{}</td><td>{div}</td></tr>"#,
            mode_name(r.mode),
            escape(&r.backend),
            r.tokens_replayed,
            r.seconds,
            escape(&worst)
        );
    }
    s.push_str("</tbody></table>\n");
    for r in reports.iter().filter(|r| !r.passed) {
        let _ = write!(
            s,
            r#"<section class="case failing" id="case-{}"><h2>{} <span class="FAIL">FAIL</span></h2><p>{} recording <code>{}</code>, model {}, backend {}.</p>"#,
            sanitize(&r.name),
            escape(&r.name),
            mode_name(r.mode),
            escape(&r.source),
            escape(&r.model),
            escape(&r.backend)
        );
        if let Some(d) = &r.first_divergence {
            let _ = write!(s, r#"<h3>First divergence</h3><p class="divergence">{}</p><ul>"#, escape(&r.divergence_line()));
            if let Some(p) = d.position {
                let _ = write!(s, "<li>position {p}</li>");
            }
            if let Some(l) = d.layer {
                let _ = write!(s, "<li>layer {l}</li>");
            }
            let _ = write!(s, "<li>tensor <code>{}</code></li>", escape(&d.tensor));
            if let Some(e) = d.nmse {
                let _ = write!(s, "<li>NMSE {e:.3e} (bound {:.1e})</li>", d.bound);
            }
            if let Some((t, e)) = &d.before {
                let _ = write!(s, "<li>just before: <code>{}</code> NMSE {e:.3e}</li>", escape(t));
            }
            if !d.detail.is_empty() {
                let _ = write!(s, "<li>{}</li>", escape(&d.detail));
            }
            s.push_str("</ul>");
        }
        s.push_str("<h3>Failed checks</h3><ul>");
        for c in r.checks.iter().filter(|c| !c.passed) {
            let _ = write!(s, "<li><b>{}</b>: {}</li>", escape(&c.name), escape(&c.detail));
        }
        s.push_str("</ul>");
        if !r.curve.is_empty() {
            s.push_str("<h3>Per-layer error curve</h3>");
            s.push_str(&curve_svg(r));
        }
        if !r.notes.is_empty() {
            s.push_str("<h3>Notes</h3><ul>");
            for n in &r.notes {
                let _ = write!(s, "<li>{}</li>", escape(n));
            }
            s.push_str("</ul>");
        }
        s.push_str("</section>\n");
    }
    s.push_str("</body></html>\n");
    s
}
