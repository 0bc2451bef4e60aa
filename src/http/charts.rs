//! The status page's lift section: the report's "all orders" comparison as a table, and
//! inline SVG charts (orders and AOV per week, treated against holdout; the touch funnel
//! per recipe). Pure strings from a `report::Report`: no scripts, no external files; the
//! colours come from `assets/admin/admin.css` (`.chart` classes).

use crate::report::{Report, Week};

use super::page::esc;

const W: f64 = 640.0;
const H: f64 = 170.0;
/// Room for the axis labels: left, bottom, top.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 10.0;

/// The whole section for one store.
pub fn lift_section(r: &Report) -> String {
    let mut out = format!(
        "<h3>Lift against the holdout group</h3><p class=\"touches\">Orders placed from {} to {} (UTC): {} treated, {} holdout{}. <code>upsell-appliance report --store {}</code> gives every recipe.</p>",
        &r.since[..10],
        &r.until[..10],
        r.orders.treated,
        r.orders.holdout,
        match r.orders.add_ons {
            0 => String::new(),
            1 => ", 1 add-on order counted with the order it came from".to_string(),
            n => format!(", {n} add-on orders counted with the order they came from"),
        },
        esc(&r.store)
    );
    if r.orders.treated + r.orders.holdout == 0 {
        out.push_str("<p class=\"touches\">No planned orders in this period yet: the comparison starts with the first order that comes by webhook.</p>");
        return out;
    }
    if let Some(all) = r.recipes.first() {
        let money = |m: Option<f64>| {
            m.map_or("&ndash;".to_string(), |v| {
                format!("{} {v:.2}", esc(&r.currency))
            })
        };
        let pct =
            |m: Option<f64>| m.map_or("&ndash;".to_string(), |v| format!("{:.1}%", v * 100.0));
        out.push_str("<table class=\"touches lift\"><tr><th>measure and verdict</th><th>treated</th><th>holdout</th></tr>");
        let mut row = |name: &str, t: String, h: String, verdict: &str| {
            out.push_str(&format!(
                "<tr><td>{name}<small>{}</small></td><td>{t}</td><td>{h}</td></tr>",
                esc(verdict)
            ));
        };
        row(
            "AOV",
            money(all.aov.treated.mean),
            money(all.aov.holdout.mean),
            &all.aov.verdict,
        );
        row(
            "Upsell revenue per order",
            money(all.upsell_revenue.treated.mean),
            money(all.upsell_revenue.holdout.mean),
            &all.upsell_revenue.verdict,
        );
        for rep in &all.repeat {
            row(
                &format!("Repeat within {} days", rep.days),
                pct(rep.treated.rate),
                pct(rep.holdout.rate),
                &rep.verdict,
            );
        }
        row(
            "Unsubscribed within 30 days",
            pct(all.unsubscribe.treated.rate),
            pct(all.unsubscribe.holdout.rate),
            &all.unsubscribe.verdict,
        );
        let p = &all.revenue_per_message;
        row(
            "Revenue per message",
            format!(
                "{} ({} messages)",
                money(p.attributed_per_message),
                p.messages
            ),
            "&ndash;".into(),
            &p.verdict,
        );
        out.push_str("</table>");
    }
    out.push_str("<div class=\"charts\">");
    out.push_str(&orders_chart(&r.weeks));
    out.push_str(&aov_chart(&r.weeks, &r.currency));
    out.push_str(&funnel_chart(r));
    out.push_str("</div>");
    out
}

/// A rounded-up axis maximum: 1, 2 or 5 times a power of ten.
fn nice(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

fn open(id: &str, title: &str, legend: bool) -> String {
    let mut s = format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"{id}\"><title id=\"{id}\">{}</title>",
        esc(title)
    );
    if legend {
        s.push_str(&format!(
            "<rect class=\"t\" x=\"{}\" y=\"2\" width=\"10\" height=\"10\"/><text x=\"{}\" y=\"11\">treated</text><rect class=\"h\" x=\"{}\" y=\"2\" width=\"10\" height=\"10\"/><text x=\"{}\" y=\"11\">holdout</text>",
            W - 150.0,
            W - 136.0,
            W - 75.0,
            W - 61.0
        ));
    }
    s
}

/// The y axis (0 and max) and week labels under the x axis, every few weeks.
fn axes(
    weeks: &[Week],
    max: f64,
    label: &dyn Fn(f64) -> String,
    x_of: &dyn Fn(usize) -> f64,
) -> String {
    let base = H - BOTTOM;
    let mut s = format!(
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{W}\" y2=\"{base}\"/><text class=\"y\" x=\"{}\" y=\"{}\">{}</text><text class=\"y\" x=\"{}\" y=\"{base}\">0</text>",
        LEFT - 4.0,
        TOP + 10.0,
        esc(&label(max)),
        LEFT - 4.0
    );
    let step = weeks.len().div_ceil(6).max(1);
    for (i, w) in weeks.iter().enumerate().step_by(step) {
        s.push_str(&format!(
            "<text class=\"x\" x=\"{:.1}\" y=\"{}\">{}</text>",
            x_of(i),
            H - 6.0,
            &w.start[5..]
        ));
    }
    s
}

fn orders_chart(weeks: &[Week]) -> String {
    let mut s = open("orders-chart", "Orders per week, treated and holdout", true);
    if weeks.is_empty() {
        return s + "</svg><figcaption>Orders per week</figcaption></figure>";
    }
    let max = nice(
        weeks
            .iter()
            .map(|w| w.treated_orders.max(w.holdout_orders) as f64)
            .fold(0.0, f64::max),
    );
    let slot = (W - LEFT) / weeks.len() as f64;
    let bar = (slot * 0.4).min(18.0);
    let plot = H - BOTTOM - TOP;
    let x_of = |i: usize| LEFT + slot * (i as f64 + 0.5);
    s.push_str(&axes(weeks, max, &|m| format!("{m}"), &x_of));
    for (i, w) in weeks.iter().enumerate() {
        for (class, n, dx) in [("t", w.treated_orders, -bar), ("h", w.holdout_orders, 0.0)] {
            let h = plot * n as f64 / max;
            s.push_str(&format!(
                "<rect class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\"><title>week of {}: {n} {} orders</title></rect>",
                x_of(i) + dx,
                H - BOTTOM - h,
                w.start,
                if class == "t" { "treated" } else { "holdout" }
            ));
        }
    }
    s + "</svg><figcaption>Orders per week</figcaption></figure>"
}

fn aov_chart(weeks: &[Week], currency: &str) -> String {
    let mut s = open(
        "aov-chart",
        "Average order value per week, treated and holdout",
        true,
    );
    let max = nice(
        weeks
            .iter()
            .flat_map(|w| [w.treated_aov, w.holdout_aov])
            .flatten()
            .fold(0.0, f64::max),
    );
    if weeks.is_empty() {
        return s + "</svg></figure>";
    }
    let slot = (W - LEFT) / weeks.len() as f64;
    let plot = H - BOTTOM - TOP;
    let x_of = |i: usize| LEFT + slot * (i as f64 + 0.5);
    s.push_str(&axes(weeks, max, &|m| format!("{m}"), &x_of));
    for (class, pick) in [
        ("t", (|w: &Week| w.treated_aov) as fn(&Week) -> Option<f64>),
        ("h", |w: &Week| w.holdout_aov),
    ] {
        let points: Vec<(f64, f64, &str, f64)> = weeks
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                pick(w).map(|v| (x_of(i), H - BOTTOM - plot * v / max, w.start.as_str(), v))
            })
            .collect();
        if points.len() > 1 {
            let path: Vec<String> = points
                .iter()
                .map(|(x, y, ..)| format!("{x:.1},{y:.1}"))
                .collect();
            s.push_str(&format!(
                "<polyline class=\"{class}\" points=\"{}\"/>",
                path.join(" ")
            ));
        }
        for (x, y, week, v) in points {
            s.push_str(&format!(
                "<circle class=\"{class}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"><title>week of {week}: {} {v:.2}</title></circle>",
                esc(currency)
            ));
        }
    }
    s + &format!(
        "</svg><figcaption>AOV per week ({}), add-ons included</figcaption></figure>",
        esc(currency)
    )
}

/// Planned → sent → clicked → converted of the treated offers, one row per recipe.
fn funnel_chart(r: &Report) -> String {
    let rows = r.funnel.len().max(1) as f64;
    let height = 24.0 + rows * 26.0;
    let mut s = format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {W} {height}\" role=\"img\" aria-labelledby=\"funnel-chart\"><title id=\"funnel-chart\">Touch funnel per recipe: planned, sent, clicked, converted</title>"
    );
    let steps = ["planned", "sent", "clicked", "converted"];
    let col = (W - 120.0) / 4.0;
    for (j, step) in steps.iter().enumerate() {
        s.push_str(&format!(
            "<text class=\"x\" x=\"{:.1}\" y=\"14\">{step}</text>",
            120.0 + col * (j as f64 + 0.5)
        ));
    }
    if r.funnel.is_empty() {
        s.push_str("<text x=\"120\" y=\"40\">no offers in the period</text>");
    }
    for (i, f) in r.funnel.iter().enumerate() {
        let y = 24.0 + i as f64 * 26.0;
        s.push_str(&format!(
            "<text x=\"0\" y=\"{:.1}\">{}</text>",
            y + 15.0,
            esc(&f.recipe)
        ));
        let values = [f.planned, f.sent, f.clicked, f.converted];
        for (j, n) in values.iter().enumerate() {
            let share = if f.planned == 0 {
                0.0
            } else {
                *n as f64 / f.planned as f64
            };
            let w = ((col - 8.0) * share).max(1.0);
            let x = 120.0 + col * j as f64 + 4.0;
            s.push_str(&format!(
                "<rect class=\"f{j}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"20\"><title>{}: {n} {step} of {} planned</title></rect><text class=\"n\" x=\"{:.1}\" y=\"{:.1}\">{n}</text>",
                esc(&f.recipe),
                f.planned,
                x + 4.0,
                y + 15.0,
                step = steps[j]
            ));
        }
    }
    s + "</svg><figcaption>Touch funnel (treated offers)</figcaption></figure>"
}
