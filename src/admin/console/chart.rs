//! A stats series as an inline SVG bar chart (human and bot clicks
//! stacked per bucket, unique visitors as a line), drawn from the numbers
//! alone: no script, no external asset, so the console's CSP holds.

use maud::{html, Markup};

use crate::stats::SeriesPoint;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 12.0;

/// A round axis maximum at or above `max` (1, 2, 5 × 10ⁿ).
fn nice_max(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= max.max(1) {
                return step.saturating_mul(m);
            }
        }
        step = step.saturating_mul(10);
    }
}

/// Up to five distinct, evenly spaced axis values from 0 to `top`.
fn ticks(top: u64) -> Vec<u64> {
    let mut t: Vec<u64> = (0..=4).map(|i| top * i / 4).collect();
    t.dedup();
    t
}

/// The chart for `series`; `hourly` picks the bucket labels.
pub fn clicks(series: &[SeriesPoint], hourly: bool) -> Markup {
    let n = series.len().max(1) as f64;
    let peak = series
        .iter()
        .map(|p| p.counts.clicks.max(p.counts.unique_visitors))
        .max()
        .unwrap_or(0);
    let top = nice_max(peak) as f64;
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / n;
    let bar = (slot * 0.7).max(1.0);
    let y = |v: u64| TOP + plot_h - (v as f64 / top) * plot_h;
    let label_every = (series.len() / 8).max(1);
    let label = |ts: &str| -> String {
        if hourly {
            ts.get(11..16).unwrap_or(ts).to_owned()
        } else {
            ts.get(5..10).unwrap_or(ts).to_owned()
        }
    };
    let visitors: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "{:.1},{:.1}",
                LEFT + slot * i as f64 + slot / 2.0,
                y(p.counts.unique_visitors)
            )
        })
        .collect();
    html! {
        svg class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
            aria-label=(format!("Clicks per {}: {} buckets, peak {}", if hourly { "hour" } else { "day" }, series.len(), peak)) {
            @for v in ticks(top as u64) {
                line class="grid" x1=(LEFT) x2=(WIDTH - 8.0) y1=(y(v)) y2=(y(v)) {}
                text class="axis" x=(LEFT - 6.0) y=(y(v) + 4.0) text-anchor="end" { (v) }
            }
            @for (i, p) in series.iter().enumerate() {
                @let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
                @let human_top = y(p.counts.human_clicks);
                @let all_top = y(p.counts.clicks);
                g class="bucket" {
                    title { (p.ts) ": " (p.counts.clicks) " clicks (" (p.counts.human_clicks) " human, " (p.counts.bot_clicks) " bot), " (p.counts.unique_visitors) " unique visitors" }
                    rect class="human" x=(format!("{x:.1}")) y=(format!("{human_top:.1}")) width=(format!("{bar:.1}")) height=(format!("{:.1}", TOP + plot_h - human_top)) {}
                    rect class="bot" x=(format!("{x:.1}")) y=(format!("{all_top:.1}")) width=(format!("{bar:.1}")) height=(format!("{:.1}", human_top - all_top)) {}
                }
                @if i % label_every == 0 {
                    text class="axis" x=(format!("{:.1}", LEFT + slot * i as f64 + slot / 2.0)) y=(HEIGHT - 8.0) text-anchor="middle" { (label(&p.ts)) }
                }
            }
            @if series.len() > 1 {
                polyline class="visitors" points=(visitors.join(" ")) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Counts;

    #[test]
    fn axis_maxima_are_round_and_never_below_the_peak() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(3), 5);
        assert_eq!(nice_max(17), 20);
        assert_eq!(nice_max(500), 500);
        assert_eq!(nice_max(501), 1000);
        assert_eq!(ticks(1), [0, 1]);
        assert_eq!(ticks(20), [0, 5, 10, 15, 20]);
    }

    #[test]
    fn the_chart_is_one_svg_with_a_bar_per_bucket_and_escaped_labels() {
        let point = |ts: &str, clicks| SeriesPoint {
            ts: ts.into(),
            counts: Counts {
                clicks,
                human_clicks: clicks,
                bot_clicks: 0,
                unique_visitors: 1,
            },
        };
        let svg = clicks(
            &[
                point("2026-12-03T00:00:00Z", 2),
                point("2026-12-04T00:00:00Z<", 5),
            ],
            false,
        )
        .into_string();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("class=\"human\"").count(), 2);
        assert!(svg.contains("&lt;") && !svg.contains("Z<"));
    }
}
