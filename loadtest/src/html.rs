//! The HTML report: one self-contained page (no scripts, no external resources) with the
//! summary tables and inline SVG plots drawn with plotters: latency percentiles over time,
//! throughput over time, open connections over time, and server CPU and memory when sampled.
//!
//! Owns presentation only; every number comes from a finished [`Report`].

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::report::{Report, bytes, fmt_num, sm_label};
use crate::scenario::PHASES;

/// A line of a chart: label and (x, y) points.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Draws one line chart as an SVG string; an error message in place of the chart if
/// drawing fails.
fn chart(title: &str, y_desc: &str, lines: &[Line]) -> String {
    let mut svg = String::new();
    let r = draw(&mut svg, title, y_desc, lines);
    match r {
        Ok(()) => svg,
        Err(e) => format!("<p>chart {} could not be drawn: {}</p>", esc(title), esc(&e)),
    }
}

fn draw(svg: &mut String, title: &str, y_desc: &str, lines: &[Line]) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let x_max = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).fold(1.0f64, f64::max);
    let y_max = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0f64, f64::max);
    let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.1 };
    let root = SVGBackend::with_string(svg, (960, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|x| e(&x))?;
    c.configure_mesh().x_desc("seconds since start").y_desc(y_desc).draw().map_err(|x| e(&x))?;
    for (i, l) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(l.points.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(l.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    if !lines.is_empty() {
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Renders the whole page.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    let _ = write!(
        o,
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rookery-load: {}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right}}th{{background:#eee}}td:first-child,th:first-child{{text-align:left}}\
         .PASS{{color:#070;font-weight:bold}}.FAIL{{color:#b00;font-weight:bold}}svg{{display:block;margin:1em 0}}\
         </style></head><body>",
        esc(&r.scenario)
    );
    let _ = write!(o, "<h1>{} <span class='{verdict}'>{verdict}</span></h1>", esc(&r.scenario));
    if !r.description.is_empty() {
        let _ = write!(o, "<p>{}</p>", esc(&r.description));
    }
    let workers: Vec<String> = r.workers.iter().map(ToString::to_string).collect();
    let _ = write!(
        o,
        "<p>{} against <b>{}</b> (domain {}), {:.1} s, workers {}, {}</p>",
        esc(&r.tool),
        esc(&r.target),
        esc(&r.domain),
        r.duration_s,
        esc(&workers.join(" ")),
        esc(&sm_label(&r.stream_management))
    );

    if !r.verdicts.is_empty() {
        let _ = write!(
            o,
            "<h2>Pass criteria</h2><table><tr><th>scenario</th><th>criterion</th><th>actual</th><th>result</th></tr>"
        );
        for v in &r.verdicts {
            let res = if v.passed { "PASS" } else { "FAIL" };
            let actual = v.actual.map(fmt_num).unwrap_or_else(|| format!("n/a {}", v.note));
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class='{res}'>{res}</td></tr>",
                esc(&v.scenario),
                esc(&v.criterion),
                esc(&actual)
            );
        }
        o.push_str("</table>");
    }

    o.push_str("<h2>Latency (ms)</h2><table><tr><th>histogram</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    let row = |o: &mut String, name: &str, h: &crate::metrics::Hist| {
        let s = h.summary();
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            s.count,
            ms(s.p50_us),
            ms(s.p90_us),
            ms(s.p99_us),
            ms(s.p999_us),
            ms(s.max_us)
        );
    };
    for (name, s) in &r.scenarios {
        if s.status == "ok" {
            row(&mut o, &format!("{name}: {}", s.latency_name), &s.latency);
        }
    }
    for p in PHASES {
        if let Some(h) = r.connections.phases.get(p) {
            row(&mut o, &format!("connection: {p}"), h);
        }
    }
    o.push_str("</table>");

    o.push_str("<h2>Counters</h2><table><tr><th>scenario</th><th>status</th><th>counters</th></tr>");
    let conn: Vec<String> = r.connections.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let fails: Vec<String> = r.connections.failures.iter().map(|(k, v)| format!("failed at {k}={v}")).collect();
    let _ = write!(o, "<tr><td>connections</td><td></td><td>{}</td></tr>", esc(&[conn, fails].concat().join(", ")));
    for (name, s) in &r.scenarios {
        let c: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut text = c.join(", ");
        for n in &s.notes {
            let _ = write!(text, "; {n}");
        }
        let _ = write!(o, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", esc(name), esc(&s.status), esc(&text));
    }
    o.push_str("</table>");

    if let Some(s) = &r.server {
        let _ = write!(
            o,
            "<h2>Server (pid {})</h2><p>{:.2} CPU-s; RSS start {}, peak {}, final {}",
            s.pid,
            s.cpu_seconds,
            bytes(s.start_rss_bytes),
            bytes(s.peak_rss_bytes),
            bytes(s.final_rss_bytes)
        );
        if let Some(v) = s.cpu_s_per_100k_delivered {
            let _ = write!(o, "; {v:.2} CPU-s per 100k delivered messages");
        }
        if let Some(v) = s.rss_per_connection_bytes {
            let _ = write!(o, "; {} RSS per connection", bytes(v as u64));
        }
        o.push_str("</p>");
    }

    o.push_str("<h2>Over time</h2>");
    let names: Vec<&String> = r.scenarios.iter().filter(|(_, s)| s.status == "ok").map(|(n, _)| n).collect();
    let mut lat = Vec::new();
    for n in &names {
        for (q, stat) in [("p50", "p50"), ("p99", "p99")] {
            let points = r
                .timeseries
                .iter()
                .filter_map(|s| s.scenarios.get(*n).and_then(|x| x.latency.stat_ms(stat)).map(|v| (f64::from(s.t), v)))
                .collect();
            lat.push(Line { label: format!("{n} {q}"), points });
        }
    }
    o.push_str(&chart("Latency percentiles per second", "ms", &lat));
    let mut thr = Vec::new();
    for n in &names {
        let pts = |f: fn(&crate::report::ScenarioSample) -> u64| {
            r.timeseries.iter().filter_map(|s| s.scenarios.get(*n).map(|x| (f64::from(s.t), f(x) as f64))).collect()
        };
        thr.push(Line { label: format!("{n} completed/s"), points: pts(|x| x.completed) });
        thr.push(Line { label: format!("{n} offered/s"), points: pts(|x| x.offered) });
    }
    thr.push(Line {
        label: "logins/s".into(),
        points: r.timeseries.iter().map(|s| (f64::from(s.t), s.logins as f64)).collect(),
    });
    o.push_str(&chart("Throughput", "per second", &thr));
    let conns = vec![Line {
        label: "open connections".into(),
        points: r.timeseries.iter().map(|s| (f64::from(s.t), s.open_connections as f64)).collect(),
    }];
    o.push_str(&chart("Connections", "open", &conns));
    if let Some(s) = &r.server {
        let rss = vec![Line {
            label: "RSS MiB".into(),
            points: s.samples.iter().map(|x| (f64::from(x.t), x.rss_bytes as f64 / 1024.0 / 1024.0)).collect(),
        }];
        o.push_str(&chart("Server memory", "MiB", &rss));
        let cpu = vec![Line {
            label: "CPU % of one core".into(),
            points: s
                .samples
                .windows(2)
                .filter(|w| w[1].t > w[0].t)
                .map(|w| (f64::from(w[1].t), (w[1].cpu_s - w[0].cpu_s) * 100.0 / f64::from(w[1].t - w[0].t)))
                .collect(),
        }];
        o.push_str(&chart("Server CPU", "%", &cpu));
    }
    o.push_str("</body></html>\n");
    o
}
